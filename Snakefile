# tilesam: Segment Anything over large microscopy images and volumes, tiled,
# stitched and benchmarked. Rules are thin: each calls `tilesam <command>`.
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from tilesam.schema import check_file

min_version("9.0")


# config/config.yaml is the default run; a --configfile replaces it instead of extending it
# (else the demo dataset would join every benchmark config). tilesam checks it first: Snakemake's
# loader reports a YAML tag as "not valid JSON or YAML ... tab indentation", naming no file.
if not workflow.overwrite_configfiles:
    if os.path.exists("config/config.yaml"):
        try:
            check_file("config/config.yaml")
        except ValueError as err:
            raise WorkflowError(str(err))

    configfile: "config/config.yaml"


# common.smk plans the config as written: tilesam.plan checks it against
# workflow/schemas/config.schema.yaml and fills in its defaults (a model card's own settings
# apply to the keys the config does not set).


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
