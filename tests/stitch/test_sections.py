"""Linking the objects of adjacent sections of a volume, alone and after tile stitching."""

from __future__ import annotations

import numpy as np
import zarr

from helpers.label_images import (
    adjusted_rand_index,
    assert_consecutive,
    assert_same_partition,
    new_out,
    paint_disc,
    tile_reader,
)
from tilesam.config import StitchParams
from tilesam.data import ome
from tilesam.data.synthetic import DEMO, make_labels
from tilesam.stitch.sections import link_sections
from tilesam.stitch.tiles import stitch
from tilesam.tiling import TileGrid


def blob_volume(rng, shape=(40, 112, 112), spacing=28, extents=(5, 30)) -> np.ndarray:
    """Blobs on a jittered lattice, spanning 5..30 sections, radius wobbling and centre drifting with z.

    A column may hold two blobs, at least three sections apart (so that they stay two objects).
    """
    truth = np.zeros(shape, np.uint32)
    label = 0
    for cy in range(spacing // 2, shape[1], spacing):
        for cx in range(spacing // 2, shape[2], spacing):
            z = int(rng.integers(0, 8))
            while z + extents[0] <= shape[0]:
                extent = int(rng.integers(extents[0], min(extents[1], shape[0] - z) + 1))
                label += 1
                radius, phase, drift = rng.uniform(5, 7), rng.uniform(0, 6), rng.uniform(-0.15, 0.15, 2)
                for k in range(extent):
                    centre = (cy + drift[0] * k, cx + drift[1] * k)
                    paint_disc(truth[z + k], centre, radius + 1.5 * np.sin(k / 3 + phase), label)
                z += extent + int(rng.integers(3, 8))
    return truth


def sectionwise_labels(truth: np.ndarray, rng) -> np.ndarray:
    """Each section relabelled on its own (ids restart per section), as a per-slice segmenter gives."""
    out = np.zeros_like(truth)
    for z, plane in enumerate(truth):
        ids = np.unique(plane)
        ids = ids[ids != 0]
        local = rng.permutation(ids.size).astype(np.uint32) + 1
        fg = plane != 0
        out[z][fg] = local[np.searchsorted(ids, plane[fg])]
    return out


def volume_zarr(tmp_path, labels: np.ndarray, chunks=(4, 40, 40)) -> zarr.Array:
    arr = ome.create(tmp_path / "volume.zarr", labels.shape, np.uint32, chunks)
    arr[:] = labels
    return arr


def test_volume_tiled_in_xy_gets_one_id_per_blob(tmp_path):
    truth = blob_volume(np.random.default_rng(13))
    grid = TileGrid(truth.shape, (48, 48), (8, 8))
    out = new_out(tmp_path, grid)
    result = stitch(grid, tile_reader(truth, grid, seed=14), out, StitchParams(workers=2))
    pred = out[:]
    assert adjusted_rand_index(truth, pred) > 0.99
    assert result.n_objects == truth.max() == result.links.n_objects
    assert_consecutive(pred, result.n_objects)
    assert_same_partition(truth, pred)


def test_caps_of_an_anisotropic_stack_link_to_their_nucleus(tmp_path):
    # The demo stack: 5 sections of 8 ellipsoids, whose caps share IoU 0.16-0.42 with the next section.
    truth = make_labels(next(s for s in DEMO if s.name == "nuclei_stack")).astype(np.uint32)
    arr = volume_zarr(tmp_path, sectionwise_labels(truth, np.random.default_rng(19)), chunks=(2, 64, 64))
    result = link_sections(arr)
    assert result.n_objects == 8
    assert_same_partition(truth, arr[:])


def test_a_fragment_inside_an_object_does_not_take_its_continuation(tmp_path):
    truth = np.zeros((3, 48, 48), np.uint32)
    for z in range(3):
        paint_disc(truth[z], (24, 24), 12, 1)
    truth[1, 14:17, 23:26] = 2  # a 3 x 3 fragment split off the object in the middle section
    arr = volume_zarr(tmp_path, sectionwise_labels(truth, np.random.default_rng(20)), chunks=(3, 48, 48))
    result = link_sections(arr, close_gaps=False)
    pred = arr[:]
    assert np.unique(pred[truth == 1]).size == 1  # the fragment wholly overlaps, but the disc overlaps better
    assert result.n_objects == 2


def test_gap_of_one_section_is_closed_only_when_asked(tmp_path):
    truth = np.zeros((20, 40, 40), np.uint32)
    for z in range(2, 16):
        paint_disc(truth[z], (12, 12), 6, 1)
        paint_disc(truth[z], (28, 28), 6, 2)
    seen = truth.copy()
    seen[8][seen[8] == 1] = 0  # blob 1 missed in one section
    seen[8:10][seen[8:10] == 2] = 0  # blob 2 missed in two: stays two objects
    labels = sectionwise_labels(seen, np.random.default_rng(15))

    closed = volume_zarr(tmp_path / "a", labels)
    result = link_sections(closed, close_gaps=True)
    pred = closed[:]
    assert np.unique(pred[seen == 1]).size == 1
    assert np.unique(pred[seen == 2]).size == 2
    assert (result.n_objects, result.n_gap_links) == (3, 1)

    open_ = volume_zarr(tmp_path / "b", labels)
    result = link_sections(open_, close_gaps=False)
    assert np.unique(open_[:][seen == 1]).size == 2
    assert (result.n_objects, result.n_gap_links) == (4, 0)


def test_min_z_extent_drops_short_objects(tmp_path):
    truth = np.zeros((12, 60, 60), np.uint32)
    for label, (extent, centre) in enumerate([(1, (12, 12)), (2, (12, 45)), (3, (45, 12)), (7, (45, 45))], 1):
        for z in range(2, 2 + extent):
            paint_disc(truth[z], centre, 8, label)
    arr = volume_zarr(tmp_path, sectionwise_labels(truth, np.random.default_rng(16)), chunks=(5, 32, 32))
    result = link_sections(arr, min_z_extent=3)
    pred = arr[:]
    assert not pred[truth <= 2].any()
    assert_same_partition(np.where(truth > 2, truth, 0), pred)
    assert_consecutive(pred, 2)
    assert (result.n_objects, result.n_dropped, result.n_section_objects) == (2, 2, 13)


def test_link_sections_writes_to_another_array(tmp_path):
    truth = blob_volume(np.random.default_rng(17), shape=(24, 56, 84))
    labels = volume_zarr(tmp_path, sectionwise_labels(truth, np.random.default_rng(18)))
    out = ome.create(tmp_path / "linked.zarr", truth.shape, np.uint32, (1, 56, 28))
    before = labels[:]
    link_sections(labels, out, workers=2)
    assert np.array_equal(labels[:], before)
    assert adjusted_rand_index(truth, out[:]) > 0.99
    assert adjusted_rand_index(truth, before) < 0.5  # unlinked sections really are different
