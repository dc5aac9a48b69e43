from pathlib import Path

from cvinterp import all_unit_experiments, importance_experiments, unit_experiments
from cvinterp.logs import logged

config = snakemake.config
with logged(snakemake.log[0]):
    step = f"{snakemake.rule}_experiment"
    modules = (unit_experiments, all_unit_experiments, importance_experiments)
    run = next(getattr(mod, step) for mod in modules if hasattr(mod, step))
    models = {
        m: {"checkpoint": ckpt, "spec": config["models"][m]}
        for m, ckpt in zip(snakemake.params.models, snakemake.input.checkpoints, strict=True)
    }
    probe = unit_experiments.Probe(
        datasets=config["datasets"],
        fashion_dir=snakemake.params.fashion_dir,
        cifar_dir=snakemake.params.cifar_dir,
        seed=config["seed"],
        imagenet_probe=config["datasets"]["imagenet_probe"]["n"],
        workers=snakemake.threads,
    )
    run(
        models,
        **snakemake.params.settings,
        probe=probe,
        device=config["device"],
        threads=snakemake.threads,
        figure_dir=str(Path(snakemake.output.metrics).parents[1] / "figures" / snakemake.rule),
        metrics=snakemake.output.metrics,
    )
