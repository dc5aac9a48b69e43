from cvinterp.logs import logged
from cvinterp.provenance import write_provenance

with logged(snakemake.log[0]):
    write_provenance(
        snakemake.output[0],
        config=dict(snakemake.config),
        version=snakemake.params.version,
        start_file=snakemake.params.start_file,
        outputs=list(snakemake.input),
        repo=snakemake.scriptdir + "/../..",
    )
