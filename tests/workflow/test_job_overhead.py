"""benchmarks/job_overhead.py runs every job kind it times, so its README figures can be remeasured."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
JOBS = ["embed", "segment-ais", "stitch", "evaluate"]


@pytest.mark.slow
def test_job_overhead_times_each_job_from_start_to_exit(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    rows = tmp_path / "rows.json"
    command = [sys.executable, str(REPO / "benchmarks" / "job_overhead.py"), "--models", "lite_medsam",
               "--jobs", *JOBS, "--work", str(tmp_path / "work"), "--json", str(rows)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    by_job = {row["job"]: row for row in json.loads(rows.read_text())}
    assert sorted(by_job) == sorted(JOBS)
    for job, row in by_job.items():
        phases = sum(row[p] for p in ("startup", "imports", "model load", "store checks", "tile work", "other", "exit"))
        assert row["tile work"] > 0 and row["imports"] > 0, job
        assert 0 < row["fixed_cpu"] < row["cpu"] and phases == pytest.approx(row["cpu"], rel=0.2), job
    assert by_job["embed"]["model load"] > 0 and by_job["stitch"]["model load"] == 0
