"""benchmarks/vs_microsam.py's tiled APG side by side: the settings each tool gets, and the agreement it reports."""

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import vs_microsam  # noqa: E402

from tilesam import schema  # noqa: E402


def _args(**overrides) -> argparse.Namespace:
    values = {
        "tile": [1024, 1024], "halo": [64, 64], "tiles_per_block": 16, "points_per_side": 4, "points_per_batch": 64,
        "pred_iou_thresh": 0.88, "stability_score_thresh": 0.95, "box_nms_thresh": 0.7, "batch_size": None,
        "ais_params": "{}", "apg_params": "{}", "microsam_venv": vs_microsam.DEFAULT_VENV,
    }  # fmt: skip
    return argparse.Namespace(**{**values, **overrides})


@pytest.mark.parametrize("method", ["amg", "ais", "apg"])
def test_the_config_written_for_tilesam_passes_the_schema(method):
    config = vs_microsam.tilesam_config(_args(), "m", Path("/tmp/m.pt"), method)
    filled = schema.complete(config)
    assert filled["segmentation"]["methods"] == [method]
    if method == "apg":  # the side by side's settings, not the schema's defaults
        assert filled["segmentation"]["apg"]["center_distance_threshold"] == 0.65
        assert filled["segmentation"]["apg"]["refine_with_box_prompts"] is False


def test_both_tools_get_the_same_apg_settings_under_their_own_names():
    args = _args(apg_params='{"nms_threshold": 0.5, "prompts_per_batch": 8}')
    ours, theirs = vs_microsam.tiled_apg_params(args), vs_microsam.microsam_apg(args)
    assert ours["nms_threshold"] == theirs["nms_threshold"] == 0.5
    assert theirs["batch_size"] == ours["prompts_per_batch"] == 8 and "prompts_per_batch" not in theirs
    assert {k: v for k, v in ours.items() if k != "prompts_per_batch"} == {
        k: v for k, v in theirs.items() if k != "batch_size"
    }


def test_microsam_tiled_apg_takes_every_setting_the_script_passes():
    python = vs_microsam.DEFAULT_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no micro-sam venv at {vs_microsam.DEFAULT_VENV} (benchmarks/setup_microsam.sh)")
    code = (
        "import inspect; from micro_sam.instance_segmentation import TiledAutomaticPromptGenerator as T; "
        "print(' '.join(inspect.signature(T.generate).parameters))"
    )
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env={"QT_QPA_PLATFORM": "offscreen"}
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(vs_microsam.microsam_apg(_args())) <= set(done.stdout.split())


def test_a_driver_past_its_time_is_stopped_and_reported_with_its_last_progress(tmp_path):
    log = tmp_path / "driver.log"
    with log.open("w") as handle:
        driver = subprocess.Popen(
            [sys.executable, "-c", "import time; print('tile 3/16', flush=True); time.sleep(60)"],
            stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
        with pytest.raises(subprocess.TimeoutExpired):
            driver.wait(timeout=2)
        text = vs_microsam.stopped(driver, 2.0, log)
    assert driver.returncode is not None
    assert text.startswith("stopped unfinished after 2 s (its stage's peak ") and "'tile 3/16'" in text


def test_agreement_scores_each_side_against_the_other_and_says_where_they_differ():
    theirs = np.zeros((64, 64), np.uint32)
    theirs[2:10, 2:10], theirs[20:30, 28:36], theirs[40:50, 40:50] = 1, 2, 3
    ours = theirs.copy()
    ours[ours == 2] = 0  # one object, across the tile border at x = 32, missing on our side
    ours[55:60, 5:10] = 9  # one object only we have, 5 px from the border at y = 64
    text = vs_microsam.agreement(
        vs_microsam.Result("tilesam", n_instances=3, labels=ours),
        vs_microsam.Result("micro-sam", n_instances=3, labels=theirs),
        with_iou=True,
        tile=(32, 32),
    )
    assert text.startswith("3 / 3 (mSA 0.500 against micro-sam's, 0.500 against tilesam's")
    assert "micro-sam's objects: 1 of 3 below IoU 0.9, all within 0 px of a tile border" in text
    assert "tilesam's: 1 of 3 below IoU 0.9, all within 4 px of a tile border" in text
