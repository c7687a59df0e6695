import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from tilesam.data import synthetic
from tilesam.data.datasets import DatasetError, images_of, stem


def _write(path, shape, dtype=np.uint8):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.zeros(shape, dtype))


def test_images_pair_with_labels_by_name(tmp_path):
    for name in ("a", "b"):
        _write(tmp_path / "raw" / f"{name}.tif", (30, 40))
        _write(tmp_path / "gt" / f"{name}.tif", (30, 40), np.uint16)
    recs = images_of("mine", {"images": "raw/*.tif", "labels": "gt/*.tif"}, base=tmp_path)
    assert [(r.name, r.shape) for r in recs] == [("a", (30, 40)), ("b", (30, 40))]
    assert recs[0].labels.endswith("gt/a.tif")


def test_glob_matching_nothing_names_the_glob(tmp_path):
    with pytest.raises(DatasetError, match=r"'mine'.*images glob 'nothing/\*\.tif' matches no file"):
        images_of("mine", {"images": "nothing/*.tif"}, base=tmp_path)


def test_unpaired_images_and_labels_are_errors(tmp_path):
    _write(tmp_path / "raw" / "a.tif", (30, 40))
    _write(tmp_path / "raw" / "b.tif", (30, 40))
    _write(tmp_path / "gt" / "a.tif", (30, 40))
    with pytest.raises(DatasetError, match=r"b\.tif has no labels"):
        images_of("d", {"images": "raw/*.tif", "labels": "gt/*.tif"}, base=tmp_path)
    _write(tmp_path / "gt" / "b.tif", (30, 40))
    _write(tmp_path / "gt" / "c.tif", (30, 40))
    with pytest.raises(DatasetError, match="labels without an image: c"):
        images_of("d", {"images": "raw/*.tif", "labels": "gt/*.tif"}, base=tmp_path)


def test_volumes_and_bad_shapes(tmp_path):
    _write(tmp_path / "v.tif", (5, 30, 40))
    assert images_of("v", {"images": "v.tif", "ndim": 3}, base=tmp_path)[0].shape == (5, 30, 40)
    with pytest.raises(DatasetError, match=r"v\.tif.*shape \(5, 30, 40\)"):
        images_of("v", {"images": "v.tif", "ndim": 2}, base=tmp_path)


def test_synthetic_dataset_plans_known_shapes():
    recs = images_of("demo", {"source": "synthetic"})
    assert {r.name: r.shape for r in recs} == {s.name: s.shape for s in synthetic.DEMO}
    assert all(r.labels for r in recs)
    assert any(r.ndim == 3 for r in recs)


def test_synthetic_train_is_more_images_of_the_kind_and_none_of_the_demos():
    recs = images_of("demo_train", {"source": "synthetic_train"})
    assert [r.name for r in recs] == [s.name for s in synthetic.TRAIN] and len(recs) == 7
    assert all(r.labels for r in recs) and {r.shape for r in recs} == {
        (192, 192),
        (256, 256),
        (320, 320),
        (6, 192, 192),
    }
    assert {s.seed for s in synthetic.TRAIN}.isdisjoint(s.seed for s in synthetic.DEMO)
    assert set(synthetic.demo_specs()) == {s.name for s in synthetic.DEMO + synthetic.TRAIN}  # one namespace


def test_synthetic_train_images_reach_the_model_at_the_scales_the_demo_windows_do():
    # SAM resizes a window's longest side to the model input; training at one scale misreads others.
    import yaml

    from tilesam.tiling import TileGrid

    seg = yaml.safe_load((Path(__file__).parents[2] / "config" / "config.yaml").read_text())["segmentation"]
    grids = [TileGrid(spec.shape, tuple(seg["tile_shape"]), tuple(seg["halo"])) for spec in synthetic.DEMO]
    windows = {max(t.window_shape) for grid in grids for t in grid.tiles()}
    sides = {max(s.shape[-2:]) for s in synthetic.TRAIN}
    assert all(min(abs(w / s - 1) for s in sides) <= 0.15 for w in windows), (windows, sides)


def test_the_training_stack_shows_the_blur_of_nuclei_that_end_in_the_next_section():
    # what 2D training images cannot teach: bright-ish pixels above a nucleus of the next section are background
    spec = synthetic.demo_specs()["train_stack"]
    labels = synthetic.make_labels(spec)
    image = synthetic.render(labels, spec.seed).astype(float)
    background = np.median(image[labels == 0])
    above = (labels[:-1] == 0) & (labels[1:] > 0)  # background here, an object one section down
    assert above.sum() > 500 and np.median(image[:-1][above]) > background + 10


def test_stem():
    assert stem("x/a.ome.tif") == "a" and stem("b.zarr/") == "b" and stem("c.TIF") == "c"


def test_synthetic_is_deterministic_with_exact_truth():
    spec = synthetic.DEMO[0]
    a, b = synthetic.make_labels(spec), synthetic.make_labels(spec)
    np.testing.assert_array_equal(a, b)
    ids = np.unique(a)
    assert ids[0] == 0 and (ids[1:] == np.arange(1, len(ids))).all()  # consecutive
    assert len(ids) - 1 > 30
    img = synthetic.render(a, spec.seed)
    # nuclei are brighter than background
    assert img[a > 0].mean() > img[a == 0].mean() + 60
    vol = synthetic.make_labels(synthetic.DEMO[2])
    spans = [len(np.unique(np.nonzero(vol == i)[0])) for i in range(1, vol.max() + 1)]
    assert max(spans) >= 3  # objects span several sections


def test_one_image_and_one_labels_file_pair_whatever_their_names(tmp_path):
    tifffile.imwrite(tmp_path / "volume.tif", np.zeros((2, 8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "labels.tif", np.zeros((2, 8, 8), np.uint16))
    (rec,) = images_of("em", {"images": "volume.tif", "labels": "labels.tif", "ndim": 3}, base=tmp_path)
    assert (rec.name, Path(rec.labels).name, rec.shape) == ("volume", "labels.tif", (2, 8, 8))


def test_one_image_and_one_labels_file_of_other_names_from_globs_do_not_pair(tmp_path):
    """Pairing is by name: globs that each match one file of another name are an error, not a silent pair."""
    _write(tmp_path / "raw" / "cells.tif", (30, 40))
    _write(tmp_path / "gt" / "nuclei.tif", (30, 40), np.uint16)
    with pytest.raises(
        DatasetError, match=r"raw/cells\.tif has no labels named 'cells'.*gt/nuclei\.tif.*without wildcards"
    ):
        images_of("d", {"images": "raw/*.tif", "labels": "gt/*.tif"}, base=tmp_path)


def test_two_labels_files_of_one_name_are_an_error_naming_both(tmp_path):
    _write(tmp_path / "raw" / "a.tif", (30, 40))
    _write(tmp_path / "gt" / "a.tif", (30, 40), np.uint16)
    _write(tmp_path / "gt" / "a.png", (30, 40), np.uint8)
    with pytest.raises(DatasetError, match=r"gt/a\.png and .*gt/a\.tif are both labels named 'a'"):
        images_of("d", {"images": "raw/*.tif", "labels": "gt/*"}, base=tmp_path)


@pytest.mark.parametrize("file_name", ["...tif", ".hidden.tif"])
def test_an_image_name_that_is_no_safe_file_name_is_an_error(tmp_path, file_name):
    """`.*.tif` matching `...tif` would name the image `..` and write its results beside its dataset's."""
    _write(tmp_path / "raw" / file_name, (30, 40))
    with pytest.raises(DatasetError, match=rf"'d': image .*raw/{re.escape(file_name)} would be named '\.\.?\w*'.*dot"):
        images_of("d", {"images": "raw/.*.tif"}, base=tmp_path)
    assert not (tmp_path / "results").exists()


def test_labels_of_another_shape_are_found_at_planning(tmp_path):
    _write(tmp_path / "raw" / "a.tif", (30, 40))
    _write(tmp_path / "gt" / "a.tif", (30, 41), np.uint16)
    with pytest.raises(DatasetError, match=r"'d': .*gt/a\.tif: labels of shape \(30, 41\) do not match.*raw/a\.tif"):
        images_of("d", {"images": "raw/*.tif", "labels": "gt/*.tif"}, base=tmp_path)


def test_a_glob_that_matches_nothing_says_where_it_looked(tmp_path):
    absolute = str(tmp_path / "missing" / "*.tif")
    with pytest.raises(
        DatasetError, match=rf"matches no file \(there is no folder {re.escape(str(tmp_path))}/missing\)"
    ):
        images_of("d", {"images": absolute}, base=".")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match=rf"matches no file \(looked in {re.escape(str(tmp_path))}/empty\)"):
        images_of("d", {"images": "empty/*.tif"}, base=tmp_path)
