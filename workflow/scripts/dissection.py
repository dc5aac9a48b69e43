from pathlib import Path

from cvinterp.concept_experiments import dissection_experiment
from cvinterp.logs import logged

config = snakemake.config
with logged(snakemake.log[0]):
    settings = dict(snakemake.params.settings)
    probe_kind = settings.pop("probe")
    dissection_experiment(
        dict(zip(snakemake.params.models, map(str, snakemake.input.checkpoints), strict=True)),
        **settings,
        probe_dirs=snakemake.params.probe_dirs,
        probe_kind=probe_kind,
        released=snakemake.input.released,
        seed=config["seed"],
        device=config["device"],
        threads=snakemake.threads,
        workers=snakemake.threads,
        figure_dir=str(Path(snakemake.output.metrics).parents[1] / "figures" / "dissection"),
        tables_dir=str(Path(snakemake.output.tables[0]).parent),
        metrics=snakemake.output.metrics,
    )
