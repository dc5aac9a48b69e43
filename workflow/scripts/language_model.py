from cvinterp.logs import logged
from cvinterp.models.make import make_language_model

with logged(snakemake.log[0]):
    make_language_model(
        snakemake.wildcards.lm,
        snakemake.params.spec,
        corpus_dir=snakemake.params.corpus_dir,
        austen_dir=snakemake.params.austen_dir,
        seed=snakemake.config["seed"],
        device=snakemake.config["device"],
        threads=snakemake.threads,
        checkpoint=snakemake.output.checkpoint,
        metrics=snakemake.output.metrics,
        partial=snakemake.params.partial,
    )
