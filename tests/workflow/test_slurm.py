"""The workflow on a real SLURM: `--profile workflow/profiles/slurm`, end to end.

A one-node cluster (tests/helpers/slurm_cluster.py: Debian's slurm-wlm and munge, installed
with apt-get when missing) runs on this machine for the module; the profile is used
as shipped -- the test cluster has the partitions `cpu` and `gpu` it names and one
GPU -- and the command line only adds what a login node would not need: `squeue` for
job status (there is no slurmdbd, so no `sacct`), quick first status checks, three
jobs at a time and one thread per model job (this machine has two cores). Needs
root; skips with the reason elsewhere (set TILESAM_REQUIRE_SLURM=1 to fail instead).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from helpers import slurm_cluster
from helpers.snakemake_cli import BIN, REPO, run_cli, write_config
from tilesam.data import synthetic

PROFILE = REPO / "workflow/profiles/slurm"

# 64x120 pixels in 64x64 tiles: 2 tiles, 2 blocks of 1 -> one grouped embed+segment job
SMALL = {
    "datasets": {"tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
    "models": ["lite_medsam"],
    "baseline": {"classical": False},  # the scheduler's part is under test, not the baseline
    "device": "cpu",
    "segmentation": {
        "tile_shape": [64, 64],
        "halo": [16, 16],
        "tiles_per_block": 1,
        "amg": {"points_per_side": 4, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.5},
    },
}
SPEC = synthetic.SyntheticSpec("cells", (64, 120), 6, (8.0, 14.0), seed=3)
# Both runs must end within this. Every SLURM job starts a snakemake and then a tilesam
# process (12 s and 9 s of start-up measured on a busy 2-core machine), and the plugin's
# status checks back off (1, 12, 33, 64 s ... after a submission: the first after
# --slurm-init-seconds-before-status-checks, then 10 s longer each time). The good run has five
# jobs in a row; with 4 tiles it took 9 minutes on that machine with a load of 7 from other
# work, with 2 tiles 4 minutes at a load of 3 and 7 minutes beside the shared workflow run
# (tests/workflow/conftest.py), which goes on meanwhile.
RUN_TIMEOUT = 900
# what a test adds to the profile (see the module docstring)
TEST_ARGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--jobs",
    "3",
    "--set-threads",
    "embed=1",
    "segment=1",
]


def _skip_or_fail(reason: str):
    if os.environ.get("TILESAM_REQUIRE_SLURM") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _has_plugin() -> bool:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not _has_plugin():
        _skip_or_fail("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    reason = slurm_cluster.unavailable_reason() or slurm_cluster.install(timeout=240)
    if reason:
        _skip_or_fail(f"no local SLURM cluster: {reason}")
    c = slurm_cluster.LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        c.start(timeout=60)
    except RuntimeError as err:  # start() has stopped whatever it started
        _skip_or_fail(f"the local SLURM daemons did not come up: {str(err)[:3000]}")
    try:
        yield c
    finally:
        c.stop()


#: seconds between the plugin's status checks at most. It waits 1, 11, 21, ... s between checks
#: (+10 s after each check that finds no job finished, back to
#: --slurm-init-seconds-before-status-checks after one that does; the 10 s step is not a setting),
#: so each job in a row was seen 20-40 s after it had ended: about 100 s of the good run's 5 minutes.
#: squeue is cheap; polling every 2 s changes when snakemake notices an ended job, nothing else.
POLL_S = 2
#: `snakemake` (the environment's, as its own entry point runs it) with the SLURM plugin's check
#: interval capped at POLL_S: what the plugin sets goes through this property of the executor.
SNAKEMAKE_POLLING_FAST = f"""
import sys
from snakemake_executor_plugin_slurm import Executor
prop = Executor.next_seconds_between_status_checks
Executor.next_seconds_between_status_checks = prop.setter(
    lambda self, value: prop.fset(self, None if value is None else min(value, {POLL_S}))
)
from snakemake.cli import main
sys.argv[0] = "snakemake"
sys.exit(main())
"""


def start_on_slurm(c: slurm_cluster.LocalSlurm, workdir: Path, *args: str) -> subprocess.Popen:
    """snakemake with the SLURM profile, in its own process group (so that a timeout can end it).

    Its output goes to WORKDIR.out (a file, not a pipe: two runs go on at once). Status checks
    at most POLL_S apart (SNAKEMAKE_POLLING_FAST); the jobs run the plugin's own command.
    """
    run_env = c.env
    run_env["PATH"] = os.pathsep.join([str(c.root / "bin"), str(BIN), run_env["PATH"]])  # sbatch exports it to the jobs
    cmd = [
        sys.executable,
        "-c",
        SNAKEMAKE_POLLING_FAST,
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--profile",
        str(PROFILE),
        *TEST_ARGS,
        *args,
    ]
    with open(f"{workdir}.out", "w") as out:
        return subprocess.Popen(
            cmd,
            cwd=workdir,
            env=run_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_run(proc: subprocess.Popen) -> None:
    """End a snakemake run that is still going: Ctrl-C (it cancels its SLURM jobs), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def finish(
    c: slurm_cluster.LocalSlurm, proc: subprocess.Popen, workdir: Path, deadline: float
) -> subprocess.CompletedProcess:
    """Wait for a run until `deadline` (time.monotonic()); past it, end it and fail."""
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        stop_run(proc)
        out = Path(f"{workdir}.out").read_text(errors="replace")
        raise AssertionError(
            f"snakemake on SLURM did not finish in time:\n{out[-4000:]}\n{c.queue()}\n{c.logs()}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, Path(f"{workdir}.out").read_text(errors="replace"))


def jobs_of_run(c: slurm_cluster.LocalSlurm, output: str) -> dict[int, dict[str, str]]:
    """SLURM job id -> squeue fields (partition, state, memory, GPUs, comment) of the jobs a run submitted."""
    ids = re.findall(r"submitted with SLURM jobid (\d+)", output)
    if not ids:
        return {}
    names = ["id", "partition", "state", "mem", "cpus", "tres_per_job", "comment"]
    fields = "JobID:20|,Partition:40|,State:20|,MinMemory:20|,NumCPUs:10|,tres-per-job:60|,Comment:300|"
    out = c.client(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-O", fields]).stdout
    jobs = {}
    for line in out.splitlines():
        row = dict(zip(names, (v.strip() for v in line.split("|"))))
        jobs[int(row.pop("id"))] = row
    return jobs


@pytest.fixture(scope="module")
def slurm_runs(cluster, tmp_path_factory):
    """Two runs at once on the cluster (the test takes as long as the longer one):

    good: a small image with ground truth, through to the benchmark table.
    broken: one image with NaN pixels, which pass the header check at planning and fail
    the import job; --retries 1 (the profile has 2) so it is submitted twice.

    They are separate runs because grouped blocks of different images end up in one
    SLURM job (group-components), which then waits for every image's import.
    """
    good, broken = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("broken")
    synthetic.write_demo(SPEC, good / "data/images/cells.tif", good / "data/labels/cells.tif")
    write_config(good, SMALL)
    bad = np.ones((64, 64), np.float32)
    bad[5, 5] = np.nan
    (broken / "data").mkdir()
    tifffile.imwrite(broken / "data/bad.tif", bad)
    write_config(broken, {**SMALL, "datasets": {"broken": {"images": "data/*.tif"}}})

    deadline = time.monotonic() + RUN_TIMEOUT
    workdirs = {"good": good, "broken": broken}
    procs = {"good": start_on_slurm(cluster, good), "broken": start_on_slurm(cluster, broken, "--retries", "1")}
    try:
        results = {name: finish(cluster, proc, workdirs[name], deadline) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            stop_run(proc)
    print(f"--- squeue\n{cluster.queue()}")
    for name, result in results.items():
        print(f"--- snakemake, {name} run (tail)\n{result.stdout[-2500:]}")
    return {name: (wd, results[name], jobs_of_run(cluster, results[name].stdout)) for name, wd in workdirs.items()}


def by_rule(jobs: dict[int, dict[str, str]], prefix: str) -> list[dict[str, str]]:
    return [jobs[i] for i in sorted(jobs) if jobs[i]["comment"].startswith(prefix)]


@pytest.mark.slow
def test_workflow_runs_on_slurm_with_the_profile(slurm_runs):
    workdir, result, jobs = slurm_runs["good"]
    assert result.returncode == 0, result.stdout[-5000:]
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert len(table) == 1, result.stdout[-5000:]
    row = table.iloc[0]
    assert (row.dataset, row.model, row.method, row.n_images) == ("tiny", "lite_medsam", "amg", 1)
    assert row.n_objects == int(synthetic.make_labels(SPEC).max())
    assert 0.0 <= row.mSA <= 1.0
    assert (workdir / "results/segmentation/tiny/cells/lite_medsam/amg/labels.ome.zarr").is_dir()
    for block in (0, 1):
        bench = pd.read_csv(workdir / f"logs/benchmarks/embed/tiny/cells/lite_medsam/block{block}.tsv", sep="\t")
        assert bench["max_rss"].iloc[0] > 0
    # every rule of `tiny` but the local fetch_model ran as a SLURM job, and completed
    assert "localrule fetch_model" in result.stdout
    for rule in ("import_image", "import_labels", "stitch", "evaluate", "benchmark_table"):
        assert [j["state"] for j in by_rule(jobs, f"rule_{rule}")] == ["COMPLETED"], (rule, jobs)
    # embed+segment of both blocks: one group job, on the GPU partition, with a GPU
    (blocks,) = by_rule(jobs, "rule_blocks")
    assert blocks["state"] == "COMPLETED" and blocks["partition"] == "gpu", blocks
    assert blocks["tres_per_job"] == "gres:gpu:1", blocks
    assert not by_rule(jobs, "rule_embed") and not by_rule(jobs, "rule_segment")
    assert all(j["partition"] == "cpu" for j in jobs.values() if j is not blocks)


@pytest.mark.slow
def test_a_failing_job_is_reported_and_retried_with_more_memory(slurm_runs):
    """A corrupt input: the job is FAILED in SLURM, snakemake says so and exits non-zero (no hang)."""
    workdir, result, jobs = slurm_runs["broken"]
    assert result.returncode != 0
    assert "Error in rule import_image" in result.stdout
    assert "NaN" in result.stdout  # the rule's own log, shown by the profile's show-failed-logs
    attempts = by_rule(jobs, "rule_import_image_wildcards_broken_bad")
    assert [j["state"] for j in attempts] == ["FAILED", "FAILED"], jobs
    first, second = (int(j["mem"].rstrip("M")) for j in attempts)
    assert second == 2 * first  # mem_mb_image(wildcards, attempt=2)
    assert not (workdir / "results/images/broken/bad.ome.zarr").exists()


def test_dry_run_with_the_slurm_profile_lists_jobs_and_resources():
    """No cluster needed: the profile plans the default config, with partitions and resources per rule."""
    if not _has_plugin():
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install -e '.[test]')")
    result = run_cli(["--profile", str(PROFILE), "-n", "--forceall"], cwd=REPO, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    assert "Group job blocks" in out
    resources = {}
    for rule, res in re.findall(r"rule (\w+):\n(?:.*\n)*?\s+resources: (.*)", out):
        resources.setdefault(rule, dict(kv.split("=", 1) for kv in res.split(", ")))
    for rule in ("embed", "segment"):
        assert resources[rule]["slurm_partition"] == "gpu" and resources[rule]["gpu"] == "1", resources[rule]
        assert int(resources[rule]["mem_mb"]) >= 4000 and int(resources[rule]["runtime"]) > 10
    for rule in ("import_image", "stitch", "evaluate"):
        assert resources[rule]["slurm_partition"] == "cpu" and "gpu" not in resources[rule], resources[rule]
        assert int(resources[rule]["mem_mb"]) >= 2000
