from pathlib import Path

from cvinterp.language_experiments import lm_context_experiment
from cvinterp.logs import logged

config = snakemake.config
with logged(snakemake.log[0]):
    names = snakemake.params.models
    models = {
        m: {
            "checkpoint": ckpt,
            "metrics": trained,
            "spec": config["language_models"][m],
            "corpus_dir": snakemake.params.corpus_dirs[m],
            "austen_dir": snakemake.params.austen_dirs[m],
        }
        for m, ckpt, trained in zip(
            names, snakemake.input.checkpoints, snakemake.input.trained, strict=True
        )
    }
    lm_context_experiment(
        models,
        **snakemake.params.settings,
        seed=config["seed"],
        device=config["device"],
        threads=snakemake.threads,
        figure_dir=str(Path(snakemake.output[names[0]]).parent),
        metrics=snakemake.output.metrics,
    )
