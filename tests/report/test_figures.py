"""The qualitative figure: a panel per (model, method) result titled with both, coloured by index not id."""

from __future__ import annotations

import time

import numpy as np
from skimage.io import imread

from tilesam.data import ome
from tilesam.report import figures


def _label_image(path, labels: np.ndarray):
    ome.create(path, labels.shape, labels.dtype, (64, 64))[:] = labels
    return path


def test_every_model_and_method_has_its_own_titled_panel(tmp_path):
    """finetune_offline's `methods: [amg, auto]`: the finetuned model's AIS must not hide behind its AMG."""
    image = tmp_path / "img.ome.zarr"
    ome.create(image, (120, 100), "uint8", (64, 64))[:] = np.random.default_rng(0).integers(0, 255, (120, 100))
    gt = np.zeros((120, 100), np.uint32)
    gt[30:60, 20:50] = 1
    truth = _label_image(tmp_path / "gt.ome.zarr", gt)
    results = {
        ("lite_medsam", "amg"): _label_image(tmp_path / "a.ome.zarr", gt),
        ("lite_medsam-ft", "amg"): _label_image(tmp_path / "b.ome.zarr", gt * 2),
        ("lite_medsam-ft", "ais"): _label_image(tmp_path / "c.ome.zarr", gt * 3),
        "classical": _label_image(tmp_path / "d.ome.zarr", gt),
    }
    titles = figures.qualitative(image, truth, results, tmp_path / "q.png", in_domain={"lite_medsam-ft"})
    assert titles == [
        "image",
        "ground truth",
        "lite_medsam\namg",
        "lite_medsam-ft (in domain)\namg",
        "lite_medsam-ft (in domain)\nais",
        "classical",
    ]
    assert imread(tmp_path / "q.png").shape[1] > 5 * imread(tmp_path / "q.png").shape[0]  # six panels in a row


def test_labels_are_coloured_by_index_not_by_id():
    """A valid uint32 id near 4e9 made a colour table of 4e9 rows (90 GB); each object still gets its colour."""
    labels = np.zeros((40, 40), np.uint32)
    labels[:10], labels[20:30], labels[35:] = 4_000_000_000, 7, 4_000_000_001
    start = time.perf_counter()
    rgb = figures._colour(labels)
    assert time.perf_counter() - start < 1
    assert rgb.shape == (40, 40, 3) and (rgb[10:20] == 0).all()  # background black
    colours = {tuple(rgb[i, 0]) for i in (0, 25, 39)}
    assert len(colours) == 3 and all(min(c) >= 0.2 for c in colours)
