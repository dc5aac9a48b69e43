from pathlib import Path

from cvinterp.data.fetch import austen_files
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    austen_files(Path(snakemake.output[0]).parent, workdir=snakemake.params.workdir)
