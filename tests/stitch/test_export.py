"""Exports of a label image: tiled TIFF, per-instance table, and both from an OME-Zarr label image."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from scipy import ndimage

from helpers.label_images import disc_truth
from tilesam import cli
from tilesam.data import ome
from tilesam.stitch.export import export_labels, export_tif, instance_table


@pytest.mark.parametrize(
    "shape, chunks, bigtiff",
    [((150, 200), (64, 48), None), ((150, 200), (40, 200), True), ((5, 70, 90), (2, 32, 32), None)],
)
def test_export_tif_round_trips(tmp_path, shape, chunks, bigtiff):
    labels = np.random.default_rng(19).integers(0, 70000, size=shape).astype(np.uint32)
    arr = ome.create(tmp_path / "l.zarr", shape, np.uint32, chunks)
    arr[:] = labels
    path = export_tif(arr, tmp_path / "l.tif", tile=(32, 48), bigtiff=bigtiff)
    assert np.array_equal(tifffile.imread(path), labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff == bool(bigtiff)
        assert tif.pages[0].is_tiled


@pytest.mark.parametrize("shape, chunks", [((90, 110), (32, 25)), ((9, 50, 60), (4, 16, 32))])
def test_instance_table_matches_bincount(tmp_path, shape, chunks):
    rng = np.random.default_rng(20)
    planes = [disc_truth(shape[-2:], rng, [], 12, radii=(3, 15)) for _ in range(shape[0] if len(shape) == 3 else 1)]
    truth = np.stack(planes)[: shape[0]] if len(shape) == 3 else planes[0]
    ids = rng.choice(100000, size=truth.max() + 1, replace=False).astype(np.uint32) + 1
    ids[0] = 0
    labels = ids[truth]  # sparse, unordered ids
    arr = ome.create(tmp_path / "t.zarr", shape, np.uint32, chunks)
    arr[:] = labels

    table = instance_table(arr, workers=2)
    present = np.unique(labels[labels != 0])
    assert table["id"].tolist() == present.tolist()
    size = np.bincount(labels.ravel())
    assert np.array_equal(table["area" if len(shape) == 2 else "volume"], size[present])
    axes = "zyx"[-len(shape) :]
    boxes = ndimage.find_objects(labels)
    for k, (ax, coord) in enumerate(zip(axes, np.indices(shape))):
        centroid = np.bincount(labels.ravel(), weights=coord.ravel())[present] / size[present]
        assert np.allclose(table[f"centroid_{ax}"], centroid)
        assert table[f"bbox_{ax}0"].tolist() == [boxes[i - 1][k].start for i in present]
        assert table[f"bbox_{ax}1"].tolist() == [boxes[i - 1][k].stop for i in present]


def test_export_labels_writes_the_tif_and_the_table(tmp_path):
    labels = disc_truth((120, 90), np.random.default_rng(24), [], 10)
    arr = ome.create(tmp_path / "labels.ome.zarr", labels.shape, np.uint32, (32, 32))
    arr[:] = labels
    ome.build_pyramid(tmp_path / "labels.ome.zarr", labels=True)
    tif = export_labels(tmp_path / "labels.ome.zarr", tmp_path / "out" / "labels.tif", table=tmp_path / "t" / "l.csv")
    assert tif == tmp_path / "out" / "labels.tif"
    assert np.array_equal(tifffile.imread(tif), labels)
    table = pd.read_csv(tmp_path / "t" / "l.csv")
    assert table.equals(instance_table(arr))
    export_labels(tmp_path / "labels.ome.zarr", tmp_path / "only.tif")
    assert (tmp_path / "only.tif").is_file() and not (tmp_path / "only.csv").exists()


def test_export_refuses_an_existing_tif_or_table_unless_forced(tmp_path, capsys):
    """One typo must not replace a raw image: `tilesam export` onto an existing file fails and changes nothing."""
    labels = disc_truth((60, 50), np.random.default_rng(3), [], 4)
    ome.create(tmp_path / "labels.ome.zarr", labels.shape, np.uint32, (32, 32))[:] = labels
    ome.build_pyramid(tmp_path / "labels.ome.zarr", labels=True)
    raw, table = tmp_path / "raw.tif", tmp_path / "cells.csv"
    tifffile.imwrite(raw, np.full((8, 8), 7, np.uint8))
    table.write_text("mine\n")
    before = raw.read_bytes()
    store = str(tmp_path / "labels.ome.zarr")
    assert cli.main(["export", store, str(raw)]) == 1
    assert "raw.tif already exist(s); not overwritten (use --force" in capsys.readouterr().err
    assert cli.main(["export", store, str(tmp_path / "new.tif"), "--table", str(table)]) == 1
    assert "cells.csv already exist" in capsys.readouterr().err
    assert raw.read_bytes() == before and table.read_text() == "mine\n" and not (tmp_path / "new.tif").exists()
    assert cli.main(["export", store, str(raw), "--table", str(table), "--force"]) == 0
    assert np.array_equal(tifffile.imread(raw), labels) and len(pd.read_csv(table)) == labels.max()
