from pathlib import Path

from cvinterp.data.fetch import fashion_mnist_files
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    fashion_mnist_files(
        Path(snakemake.output[0]).parent,
        workdir=snakemake.params.workdir,
        source_dir=snakemake.params.source_dir,
        allow_download=snakemake.params.allow_download,
        content_sha256=snakemake.params.content_sha256,
        downloads=snakemake.params.downloads,
    )
