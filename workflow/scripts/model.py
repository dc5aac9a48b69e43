from cvinterp.logs import logged
from cvinterp.models.make import make_model

with logged(snakemake.log[0]):
    make_model(
        snakemake.wildcards.model,
        snakemake.params.spec,
        datasets=snakemake.config["datasets"],
        fashion_dir=snakemake.params.fashion_dir,
        cifar_dir=snakemake.params.cifar_dir,
        hub_dir=snakemake.params.hub_dir,
        seed=snakemake.config["seed"],
        device=snakemake.config["device"],
        threads=snakemake.threads,
        checkpoint=snakemake.output.checkpoint,
        metrics=snakemake.output.metrics,
        partial=snakemake.params.partial,
    )
