from pathlib import Path

from cvinterp.experiments import Model, Probe, run
from cvinterp.logs import logged

config, params, inputs = snakemake.config, snakemake.params, snakemake.input
with logged(snakemake.log[0]):
    trained = dict(zip(params.training_metrics, inputs.training_metrics, strict=True))
    checkpoints = zip(params.models.items(), inputs.checkpoints, strict=True)
    models = {
        m: Model(m, checkpoint, metrics=trained.get(m), **entry)
        for (m, entry), checkpoint in checkpoints
    }
    run(
        snakemake.rule,
        config["experiments"][snakemake.rule],
        models,
        probe=Probe(
            datasets=config["datasets"],
            fashion_dir=params.fashion_dir,
            cifar_dir=params.cifar_dir,
            seed=config["seed"],
            imagenet_probe=config["datasets"]["imagenet_probe"]["n"],
            threads=snakemake.threads,
        ),
        device=config["device"],
        results=Path(snakemake.output.metrics).parents[1],
    )
