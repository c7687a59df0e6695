# Wiring only: the plan (tilesam.plan) decides which images, models, blocks and outputs exist and
# what each job needs; the input functions here ask it. Built when the workflow starts, so a bad
# config fails before any job. Paths come from tilesam.paths, commands from tilesam.jobs.
import json
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tilesam import paths
from tilesam.config import AUTO_METHOD, PROMPT_MODES, SEGMENTERS, check_file
from tilesam.device import gpus_for
from tilesam.jobs import JOBS
from tilesam.models.spec import files_of
from tilesam.plan import CLASSICAL, Plan, PlanError
from tilesam.relay import shell as job_shell  # not `shell`: the rules use Snakemake's

# the config as written: the plan checks it against the schema and fills in its defaults
try:
    for path in workflow.configfiles:
        check_file(path)
    PLAN = Plan.from_config(config)
except (PlanError, ValueError) as err:
    raise WorkflowError(str(err))
config.update(PLAN.config)
RES = PLAN.resources
TRUST = (
    "--trust-pickle" if config["trust_pickle"] else ""
)  # the config's, never a record's

# --sdm conda: workflow/envs/tilesam.yaml installs tilesam from ${TILESAM_SOURCE}: Snakemake copies
# env files to .snakemake/conda/ first, so only an absolute path from the environment reaches it.
# Its root is two folders above this file: workflow.basedir is the *user's* folder when tilesam is a module.
os.environ.setdefault(
    "TILESAM_SOURCE",
    str(Path(workflow.current_basedir.get_path_or_uri(secret_free=True)).parents[1]),
)

GPUS = gpus_for(
    config["device"]
)  # a model job's GPUs; cluster profiles may override the resource


wildcard_constraints:
    dataset="[^/]+",
    image="[^/]+",
    model="[^/]+",
    method="[^/]+",
    block=r"\d+",


def tilesam(job):
    """The shell command of a rule that runs `tilesam <job>` (built from the job's signature)."""
    return job_shell(job, JOBS[job])


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


def image_mb(w, attempt):
    return RES.image_mb(w.dataset, w.image, attempt)


def image_minutes(w, attempt):
    return RES.image_minutes(w.dataset, w.image, attempt)


def memory_limit():
    """The most memory one job may ask for: `--resources mem_mb=`, else this machine's when jobs run here."""
    import psutil

    given = workflow.resource_settings.resources.get("mem_mb")
    given = getattr(given, "value", given)  # Snakemake 9 wraps it in a Resource
    if isinstance(given, (int, float)) and given > 0:
        return given, "--resources mem_mb"
    if workflow.local_exec:
        return psutil.virtual_memory().total / 2**20, "this machine's memory"
    return None, ""


try:
    RES.check(*memory_limit())
except ValueError as err:
    raise WorkflowError(f"config error in segmentation: {err}")
