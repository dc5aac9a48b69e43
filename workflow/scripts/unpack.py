from cvinterp.data.fetch import safe_extract
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    safe_extract(snakemake.input[0], snakemake.params.dest)
