from pathlib import Path

from cvinterp.data.fetch import gimp_patterns_dir
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    gimp_patterns_dir(Path(snakemake.output[0]).parent, workdir=snakemake.params.workdir)
