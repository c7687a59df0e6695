"""The table's notes: ground truth without objects is an error or, where the dataset says so, left out of the
means and named; a constant image's import warning reaches the notes through its labels and evaluation records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import tifffile

from tilesam.data import io
from tilesam.metrics import segmentation_scores
from tilesam.report import notes
from tilesam.report.tables import write_tables


def _evaluation(tmp_path, dataset: str, image: str, gt: np.ndarray, pred: np.ndarray, **extra) -> str:
    """An evaluation record as the evaluate job writes it (its scores from tilesam.metrics)."""
    record = {"dataset": dataset, "image": image, "model": "m", "method": "amg", "iteration": 0, **extra}
    record |= segmentation_scores(gt, pred).as_dict()
    path = tmp_path / f"{dataset}_{image}.json"
    path.write_text(json.dumps(record))
    return str(path)


def _nuclei() -> np.ndarray:
    gt = np.zeros((32, 32), np.uint32)
    gt[2:10, 2:10], gt[15:25, 15:25] = 1, 2
    return gt


def test_an_image_without_labelled_objects_is_an_error_naming_it(tmp_path):
    """All-background ground truth scored mSA 1.0 with nothing predicted and lifted AMG's mean from 0.0 to 0.5."""
    nothing = np.zeros((32, 32), np.uint32)
    paths = [
        _evaluation(tmp_path, "d", "cells", _nuclei(), nothing),  # AMG found nothing: 0.0
        _evaluation(tmp_path, "d", "blank", nothing, nothing, labels_source="data/labels/blank.tif"),  # 1.0
    ]
    with pytest.raises(
        notes.EmptyGroundTruthError, match=r"'d', image 'blank' \(data/labels/blank\.tif\).*empty_labels: exclude"
    ):
        write_tables(paths, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_dataset_marked_exclude_leaves_such_images_out_of_the_means_and_names_them(tmp_path):
    nothing = np.zeros((32, 32), np.uint32)
    paths = [
        _evaluation(tmp_path, "d", "cells", _nuclei(), nothing),
        _evaluation(tmp_path, "d", "blank", nothing, nothing, labels_source="data/labels/blank.tif"),
    ]
    table = write_tables(paths, tmp_path / "out", exclude_empty=["d"])
    assert table.mSA.tolist() == [0.0] and table.n_images.tolist() == [1]
    md = (tmp_path / "out/table.md").read_text()
    assert (
        "Notes:" in md and "d: image 'blank' has no labelled object in its ground truth (data/labels/blank.tif)" in md
    )
    assert len(pd.read_csv(tmp_path / "out/per_image.csv")) == 2  # the per-image scores keep every image


def test_a_table_without_notes_is_as_before(tmp_path):
    paths = [_evaluation(tmp_path, "d", "cells", _nuclei(), _nuclei())]
    write_tables(paths, tmp_path / "out")
    assert "Notes" not in (tmp_path / "out/table.md").read_text()


def test_a_constant_image_is_a_warning_in_the_table_notes(tmp_path, caplog):
    """From import to the table: import_image records it, import_labels carries it, the record and the notes show it."""
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((32, 32), np.uint8))
    tifffile.imwrite(tmp_path / "flat_gt.tif", _nuclei())
    with caplog.at_level("WARNING"):
        info = io.import_image(tmp_path / "flat.tif", tmp_path / "img.ome.zarr", ndim=2, tile_shape=(16, 16))
    assert info.warnings == ("constant image (every pixel 0): nothing to segment in it",)
    assert "flat.tif: constant image" in caplog.text
    assert io.read_info(tmp_path / "img.ome.zarr") == info
    io.import_labels(tmp_path / "flat_gt.tif", tmp_path / "gt.ome.zarr", image=tmp_path / "img.ome.zarr")
    record = io.labels_record(tmp_path / "gt.ome.zarr")  # what the evaluate job adds to its record
    assert record == {"labels_source": str(tmp_path / "flat_gt.tif"), "notes": list(info.warnings)}
    paths = [_evaluation(tmp_path, "d", "flat", _nuclei(), np.zeros((32, 32), np.uint32), **record)]
    write_tables(paths, tmp_path / "out")
    assert "- d: image 'flat': constant image (every pixel 0)" in (tmp_path / "out/table.md").read_text()
