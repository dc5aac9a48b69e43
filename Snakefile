# cvinterp: regenerate the figures of the classic papers on interpreting vision networks.
# Default profile: `snakemake -c all`; paper scale: `snakemake -c all --configfile config/paper.yaml`.
from snakemake.utils import min_version

min_version("9.12")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/one_unit.smk"
include: "workflow/rules/all_units.smk"
include: "workflow/rules/importance.smk"
include: "workflow/rules/summary.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
