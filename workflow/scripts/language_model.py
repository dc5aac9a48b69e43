from cvinterp.language_experiments import language_model
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    language_model(
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
