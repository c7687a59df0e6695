"""benchmarks/gpu_check.py runs on a CPU at a tiny size: the GPU day's one command is known to work."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_at_a_tiny_size(tmp_path):
    out = tmp_path / "gpu_check.md"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
               "--models", "lite_medsam", "--cores", "1", "--work", str(tmp_path / "work"), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = out.read_text()
    stages, e2e = text.split("End to end")
    row = next(line for line in stages.splitlines() if line.startswith("| lite_medsam"))
    cells = row.strip("|").split("|")
    assert len(cells) == 18 and all(float(c) > 0 for c in cells[4:17])  # every stage measured, a rate above 0
    assert int(cells[11]) == int(cells[1])  # the data path on as many tiles as the stages (no --feed-tiles)
    e2e_row = next(line for line in e2e.splitlines() if line.startswith("| lite_medsam")).strip("|").split("|")
    tiles, share = int(e2e_row[1]), float(e2e_row[6])
    assert tiles == 3 and 0 < share <= 1  # 1 image tile + 2 volume tiles; embed jobs' share of time on tiles


def test_the_gpu_days_wheels_follow_tilesams_runtime_requirements(monkeypatch):
    """gpu_wheels.py's list: tilesam's runtime closure (no test extras), less what the lent machine has."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_wheels import DEVICE, UNUSED, closure, norm

    needs = closure()
    assert {"zarr", "numcodecs", "snakemake", "segment-anything", "dask", "pooch"} <= set(needs)
    assert not {"pytest", "ruff", "torch-em"} & set(needs)  # test extras stay behind
    carried = set(needs) - {norm(n) for n in DEVICE} - set(UNUSED) - {"tilesam"}
    assert {"zarr", "numcodecs", "snakemake", "segment-anything"} <= carried
    assert not {"torch", "numpy", "scipy", "scikit-image"} & carried  # the machine's own
