"""Workflow runs shared by the tests that read them (each Snakemake run is minutes of CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers.snakemake_cli import Background, write_config
from tilesam.data import synthetic

BASE = "lite_medsam"
FINETUNED = f"{BASE}-ft-train"

#: The scored image: 128x200 pixels in 128x128 tiles (+24 halo): 2 tiles, both in one block, so each
#: model's embed and segment jobs run 2 tiles (one job each: every job is a `tilesam` process that
#: spends seconds importing torch; blocks of one tile, and a stitch of 2 blocks, are the SLURM test's).
IMAGE = synthetic.SyntheticSpec("cells", (128, 200), 10, (9.0, 18.0), seed=12)
#: The AMG search's validation image: one tile.
VAL = synthetic.SyntheticSpec("v", (100, 120), 8, (9.0, 18.0), seed=3)
#: Two small training images for `<base>-ft-train`.
TRAIN = [synthetic.SyntheticSpec(name, (96, 96), 5, (8.0, 14.0), seed=seed) for name, seed in (("a", 5), ("b", 6))]

#: Everything the default run does (AMG with the search's thresholds, prompted evaluation,
#: tables, figures) plus a finetuned model with 0 iterations compared with its base, in one run.
RUN_CONFIG = {
    "datasets": {
        "tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"},
        "val": {"images": "data/val/*.tif", "labels": "data/val_labels/*.tif"},
        "train": {"images": "data/train/*.tif", "labels": "data/train_labels/*.tif"},
    },
    "models": [BASE, FINETUNED],
    "device": "cpu",
    "segmentation": {
        "tile_shape": [128, 128],
        "halo": [24, 24],
        "tiles_per_block": 2,
        # 36 boxes a tile (LiteMedSAM decodes each in full: the run's main cost); on these
        # images that finds as much as 8x8 boxes of two sizes (0.12 adds nothing here)
        "amg": {
            "prompt": "box",
            "box_sizes": [0.24],
            "points_per_side": 6,
            "pred_iou_thresh": 0.8,
            "stability_score_thresh": 0.9,
        },
        "amg_search": {"dataset": "val", "pred_iou_thresh": [0.6, 0.9, 0.3], "stability_score_thresh": [0.6, 0.9, 0.3]},
    },
    "evaluation": {"prompts": ["box", "iterative_box"]},
    "finetune": {"iterations": 0, "augment_variants": 1},
    "compare": [{"vanilla": BASE, "finetuned": FINETUNED}],
}


@dataclass(frozen=True)
class FinishedRun:
    workdir: Path
    n_objects: int  # ground-truth objects of the scored image
    base: str = BASE
    finetuned: str = FINETUNED  # `<base>-ft-train`, 0 iterations: the base model's weights


#: the run of RUN_CONFIG once `pytest_collection_finish` has started it
_STARTED: dict[str, Background] = {}


def pytest_collection_finish(session):
    """Starts the run of RUN_CONFIG as soon as the tests are collected, if a selected test reads it.

    It then goes on, at a lower CPU priority (nice 10), while the tests before the first reader run:
    the whole suite before tests/workflow/ and the SLURM test among them. They keep the cores they
    use and the run takes what they leave idle (single-threaded code, waits for the SLURM jobs);
    `finished_run` waits for it to end.
    """
    if session.config.option.collectonly or not any("finished_run" in item.fixturenames for item in session.items):
        return
    workdir = session.config._tmp_path_factory.mktemp("run")  # what the tmp_path_factory fixture uses
    synthetic.write_demo(IMAGE, workdir / "data/images/cells.tif", workdir / "data/labels/cells.tif")
    synthetic.write_demo(VAL, workdir / "data/val/v.tif", workdir / "data/val_labels/v.tif")
    for spec in TRAIN:
        synthetic.write_demo(
            spec, workdir / f"data/train/{spec.name}.tif", workdir / f"data/train_labels/{spec.name}.tif"
        )
    write_config(workdir, RUN_CONFIG)
    _STARTED["run"] = Background(workdir, niceness=10)


def pytest_sessionfinish(session):
    """Ends the run if it is still going (a session that stopped before its readers, e.g. with -x)."""
    if "run" in _STARTED:
        _STARTED.pop("run").stop()


@pytest.fixture(scope="session")
def _shared_run() -> Background:
    if "run" not in _STARTED:
        pytest.fail("the shared workflow run was not started at collection (pytest_collection_finish)")
    return _STARTED["run"]


@pytest.fixture(scope="session")
def finished_run(_shared_run) -> FinishedRun:
    """The finished run of RUN_CONFIG; tests read it and must not change it (copy it first)."""
    _shared_run.wait()
    return FinishedRun(_shared_run.workdir, int(synthetic.make_labels(IMAGE).max()))
