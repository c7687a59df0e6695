"""benchmarks/precision_check.py runs on a CPU: bfloat16 against float32 instances, per checkpoint."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_best_ious_pairs_each_reference_instance_with_its_largest_overlap(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from precision_check import best_ious

    reference = np.zeros((10, 10), int)
    reference[:4, :4], reference[6:, 6:] = 1, 2
    other = np.zeros_like(reference)
    other[:4, :2], other[:4, 2:4] = 5, 6  # instance 1 split in two halves; instance 2 missed
    assert best_ious(reference, other) == [0.5, 0.0]
    assert best_ious(reference, reference) == [1.0, 1.0]


@pytest.mark.slow
def test_precision_check_runs_on_cpu(tmp_path, lite_medsam):
    from tilesam.models.unetr import InstanceDecoder, decoder_upscale

    torch.manual_seed(1)
    checkpoint = tmp_path / "lite_with_decoder.pt"
    decoder = InstanceDecoder(upscale=decoder_upscale(lite_medsam))
    torch.save({"model_state": lite_medsam.state_dict(), "decoder_state": decoder.state_dict()}, checkpoint)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    out = tmp_path / "precision.md"
    command = [sys.executable, str(REPO / "benchmarks" / "precision_check.py"), "--checkpoints", str(checkpoint),
               "--device", "cpu", "--size", "512", "--work", str(tmp_path), "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # TinyViT: auto keeps float32
    row = next(line for line in out.read_text().splitlines() if line.startswith("| lite_with_decoder"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "float32" and cells[2] == "1"  # auto's precision for TinyViT; one 512 tile
