# Wiring only: the plan (tilesam.plan) decides which images, models, blocks and outputs exist
# and what each job needs; the input functions here ask it. Built when the workflow starts,
# so a bad config fails before any job.
import json
import os
import sys

from snakemake.exceptions import WorkflowError

from tilesam.config import PROMPT_MODES, SEGMENTERS
from tilesam.device import gpus_for
from tilesam.plan import CLASSICAL, Plan, PlanError

try:
    PLAN = Plan.from_config(config, user_config=USER_CONFIG)
except PlanError as err:
    raise WorkflowError(str(err))

# --sdm conda: workflow/envs/tilesam.yaml installs tilesam from ${TILESAM_SOURCE}: Snakemake copies
# env files to .snakemake/conda/ first, so only an absolute path from the environment reaches it.
os.environ.setdefault("TILESAM_SOURCE", str(workflow.basedir))

GPUS = gpus_for(
    config["device"]
)  # a model job's GPUs; cluster profiles may override the resource


wildcard_constraints:
    dataset="[^/]+",
    image="[^/]+",
    model="[^/]+",
    method="[^/]+",
    block=r"\d+",


def sections(*names):
    """Config sections as one JSON argument (`tilesam <command> --config`)."""
    return json.dumps({name: config[name] for name in names})


def model_threads():
    """Threads of a model job: half of `--cores` locally (at least 1), so that two model jobs overlap
    (each spends seconds single-threaded: start, imports, post-processing); on a cluster the
    profile's set-threads (else 4)."""
    cores = workflow.resource_settings.cores
    return 4 if cores is None or cores == sys.maxsize else max(1, cores // 2)


def record(w):
    return PLAN.record(w.dataset, w.image)


def embeddings_output(path):
    return (
        directory(path)
        if config["embeddings"]["keep_embeddings"]
        else temp(directory(path))
    )


def block_stores(w):
    return PLAN.block_stores(w.dataset, w.image, w.model, w.method)


def embedding_stores(w):
    return PLAN.embedding_stores(w.dataset, w.image, w.model)


def mem_mb_image(w, attempt):
    return PLAN.mem_mb_image(w.dataset, w.image, attempt)


def runtime_image(w, attempt):
    return PLAN.runtime_image(w.dataset, w.image, attempt)
