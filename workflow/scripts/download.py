from pathlib import Path

from cvinterp.data.fetch import download, download_override
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    download(
        snakemake.wildcards.name,
        Path(snakemake.output[0]).parent,
        **download_override(snakemake.params.source),
    )
