# tilesam: Segment Anything over large microscopy images and volumes, tiled,
# stitched and benchmarked. Rules are thin: each calls `tilesam <command>`.
import copy

from snakemake.utils import min_version, validate

min_version("9.0")


# config/config.yaml is the default run; a --configfile replaces it instead of extending it
# (else the demo dataset would join every benchmark config).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# the config as written (validation fills in the schema's defaults): model cards' own defaults
# apply to the keys a user did not set
USER_CONFIG = copy.deepcopy(config)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/stitch.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/finetune.smk"


rule all:
    default_target: True
    input:
        PLAN.all_outputs(),
