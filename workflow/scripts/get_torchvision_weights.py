from cvinterp.logs import logged
from cvinterp.models import fetch_torchvision_weights

with logged(snakemake.log[0]):
    fetch_torchvision_weights(snakemake.params.arch, snakemake.params.hub_dir)
