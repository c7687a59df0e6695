"""AIS post-processing: maps from known labels give those labels back; micro-sam's steps, one by one."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.ais_maps import maps_from_labels
from helpers.label_images import disc_truth, paint_disc
from tilesam.config import AisParams, replace
from tilesam.segment.ais import ais_labels, check_maps, size_filter, smooth


def _best_iou(truth: np.ndarray, pred: np.ndarray) -> list[float]:
    """For each true object, the IoU of the predicted instance overlapping it most."""
    out = []
    for t in np.unique(truth[truth > 0]):
        obj = truth == t
        ids, counts = np.unique(pred[obj], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if not ids.size:
            out.append(0.0)
            continue
        p = pred == ids[np.argmax(counts)]
        out.append((obj & p).sum() / (obj | p).sum())
    return out


def test_maps_of_separate_and_touching_objects_give_the_objects_back():
    truth = disc_truth((160, 200), np.random.default_rng(3), [], 12, radii=(6, 14))
    n_separate = truth.max()
    paint_disc(truth, (130, 40), 12, n_separate + 1)  # two discs that touch along a line
    paint_disc(truth, (130, 62), 12, n_separate + 2)
    labels = ais_labels(maps_from_labels(truth))
    assert labels.dtype == np.uint32 and labels.shape == truth.shape
    assert labels.max() == truth.max() == len(np.unique(labels)) - 1
    assert min(_best_iou(truth, labels)) > 0.85
    # the touching pair is two instances, not one
    assert labels[130, 40] != labels[130, 62] and labels[130, 40] and labels[130, 62]


def test_min_size_drops_small_objects_and_renumbers():
    truth = np.zeros((120, 120), np.uint32)
    paint_disc(truth, (30, 30), 4, 1)  # ~49 pixels
    paint_disc(truth, (80, 80), 15, 2)  # ~700 pixels
    paint_disc(truth, (30, 90), 9, 3)  # ~250 pixels
    maps = maps_from_labels(truth)
    assert ais_labels(maps).max() == 3
    labels = ais_labels(maps, replace(AisParams(), min_size=100))
    assert labels.max() == 2 and set(np.unique(labels)) == {0, 1, 2}
    assert labels[30, 30] == 0 and labels[80, 80] and labels[30, 90]
    assert ais_labels(maps, replace(AisParams(), min_size=10_000)).max() == 0


def test_empty_foreground_gives_no_objects():
    maps = np.ones((3, 64, 80), np.float32)
    maps[0] = 0.1
    assert not ais_labels(maps).any()


def test_foreground_without_seeds_gives_no_objects():
    maps = np.ones((3, 64, 80), np.float32)  # foreground everywhere, distances high everywhere
    assert not ais_labels(maps).any()


def test_thresholds_decide_the_seeds():
    """Strict thresholds leave small objects without seeds; loose ones merge nothing when objects are apart."""
    truth = disc_truth((128, 128), np.random.default_rng(5), [], 6, radii=(8, 12))
    maps = maps_from_labels(truth)
    strict = replace(AisParams(), center_distance_threshold=0.0, boundary_distance_threshold=0.0)
    assert ais_labels(maps, strict).max() == 0
    loose = replace(AisParams(), center_distance_threshold=0.9, boundary_distance_threshold=0.9)
    assert ais_labels(maps, loose).max() == truth.max()


def test_size_filter_keeps_order_and_dtype():
    labels = np.array([[1, 1, 0, 2], [3, 3, 3, 0]], np.uint32)
    out = size_filter(labels, 2)
    assert out.dtype == np.uint32 and out.tolist() == [[1, 1, 0, 0], [2, 2, 2, 0]]
    assert size_filter(labels, 0) is labels


@pytest.mark.parametrize(
    "maps, fault",
    [
        (np.zeros((2, 8, 8), np.float32), "shape"),
        (np.zeros((3, 8), np.float32), "shape"),
        (np.zeros((3, 8, 8), np.uint8), "floating point"),
        (np.full((3, 8, 8), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_maps_are_an_error_naming_the_source(maps, fault):
    with pytest.raises(ValueError, match=fault) as err:
        check_maps(maps, "block3.zarr tile 2")
    assert "block3.zarr tile 2" in str(err.value)


def test_smoothing_is_micro_sams_filter():
    """bioimage-cpp's vigra-style Gaussian (what micro-sam smooths with), where it is installed."""
    bic = pytest.importorskip("bioimage_cpp")
    image = np.random.default_rng(0).random((37, 52)).astype(np.float32)
    for sigma in (1.0, 1.2, 1.4, 1.6, 1.8, 2.0):
        np.testing.assert_allclose(smooth(image, sigma), bic.filters.gaussian_smoothing(image, sigma), atol=1e-5)
    assert smooth(image, 0) is image


def test_same_instances_as_torch_em_post_processing():
    """micro-sam's own post-processing (torch-em's watershed on bioimage-cpp), where it is installed."""
    segmentation = pytest.importorskip("torch_em.util.segmentation")
    bic = pytest.importorskip("bioimage_cpp")
    rng = np.random.default_rng(1)
    truth = disc_truth((150, 170), rng, [], 14, radii=(5, 13))
    paint_disc(truth, (20, 20), 10, truth.max() + 1)
    paint_disc(truth, (20, 38), 10, truth.max() + 1)
    maps = np.clip(maps_from_labels(truth) + rng.normal(0, 0.08, (3, *truth.shape)), 0, 1).astype(np.float32)
    for params in (AisParams(), AisParams(0.4, 0.5, 0.5, 1.0, 2.0, 30), AisParams(0.3, 0.4, 0.5, 1.0, 1.2, 0)):
        theirs = segmentation.watershed_from_center_and_boundary_distances(
            maps[1],
            maps[2],
            bic.filters.gaussian_smoothing(maps[0], params.foreground_smoothing),
            center_distance_threshold=params.center_distance_threshold,
            boundary_distance_threshold=params.boundary_distance_threshold,
            foreground_threshold=params.foreground_threshold,
            distance_smoothing=params.distance_smoothing,
            min_size=params.min_size,
        )
        ours = ais_labels(maps, params)
        assert ours.max() == theirs.max() > 10
        # ids follow the seeds' order in both; only ties of the flooding may differ
        assert (ours == theirs).mean() > 0.995
