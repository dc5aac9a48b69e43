from pathlib import Path

from cvinterp.logs import logged
from cvinterp.pipeline import filters_experiment

with logged(snakemake.log[0]):
    filters_experiment(
        dict(zip(snakemake.params.models, snakemake.input.checkpoints, strict=True)),
        colour_model=snakemake.params.colour_model,
        figure_dir=Path(snakemake.output.selectivity).parent,
        metrics=snakemake.output.metrics,
        seed=snakemake.config["seed"],
    )
