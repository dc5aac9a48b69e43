from pathlib import Path

from cvinterp.data.concepts import build_concept_probe
from cvinterp.logs import logged

with logged(snakemake.log[0]):
    build_concept_probe(
        Path(snakemake.output[0]).parent,
        images=snakemake.params.images,
        size=snakemake.params.size,
        seed=snakemake.params.seed,
        patterns_dir=Path(snakemake.input.tiles).parent,
        fashion_dir=Path(snakemake.input.fashion[0]).parent,
    )
