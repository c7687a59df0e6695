"""Tile stitching: per-tile local labels -> one global label image (see tests/helpers/label_images.py)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from scipy.spatial import cKDTree

from helpers.label_images import (
    assert_consecutive,
    assert_same_partition,
    disc_truth,
    new_out,
    paint_disc,
    pairs_of,
    tile_reader,
)
from tilesam.stitch.tiles import join_guarded, overlap_iou, stitch_tiles
from tilesam.tiling import Tile, TileGrid


def voronoi_truth(shape, rng, n_cells) -> np.ndarray:
    """Dense touching objects: every pixel belongs to the cell of its nearest seed."""
    seeds = rng.uniform((0, 0), shape, size=(n_cells, 2))
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    _, nearest = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]))
    return (nearest + 1).reshape(shape).astype(np.uint32)


def erode(labels: np.ndarray) -> np.ndarray:
    """Shrink every object by one pixel (4-neighbourhood); window borders do not erode."""
    p = np.pad(labels, 1, mode="edge")
    centre = p[1:-1, 1:-1]
    same = (centre == p[:-2, 1:-1]) & (centre == p[2:, 1:-1]) & (centre == p[1:-1, :-2]) & (centre == p[1:-1, 2:])
    return np.where(same, labels, 0).astype(labels.dtype)


GRIDS = [
    ((32, 32), (4, 4)),
    ((40, 24), (2, 6)),
    ((64, 48), (16, 8)),
    ((16, 16), (20, 20)),  # halo wider than a tile
    ((25, 33), (1, 1)),  # tiles not dividing the image, thinnest overlap
]


def edge_cases(shape, tile_shape) -> list:
    """Discs on a four-tile corner, across tile edges, and cut by the image border and corners."""
    ty, tx = tile_shape
    h, w = shape
    return [
        ((ty, tx), 7.5),  # touches four tiles
        ((ty // 2, 2 * tx), 5),  # across a vertical tile edge
        ((2 * ty, tx // 2 + 1), 5),  # across a horizontal tile edge
        ((0, 0), 9),  # image corner
        ((h - 2, w / 2), 6),  # bottom border
        ((h / 2, w - 1), 6),  # right border
    ]


# --------------------------------------------------------------------------- matching


def test_overlap_iou_compares_restrictions_to_the_overlap():
    """An object seen whole by one tile and cut at the other's window border matches with IoU 1."""
    grid = TileGrid((40, 80), (40, 40), (0, 10))
    left, right = grid.tile(0), grid.tile(1)  # windows x 0..50 and 30..80
    truth = np.zeros(grid.shape, np.uint32)
    paint_disc(truth, (20, 36), 12, 1)  # x 24..48: whole in the left window, cut at x=30 in the right
    wa, wb = truth[left.window_slices()], truth[right.window_slices()]
    assert wb.sum() < wa.sum()  # the right tile sees a partial object
    ids_a, ids_b, iou = overlap_iou(wa[:, 30:50], wb[:, 0:20])
    assert ids_a.tolist() == [1] and ids_b.tolist() == [1]
    assert iou[0] == pytest.approx(1.0)


def test_overlap_iou_values():
    a = np.array([[1, 1, 1, 1, 0, 0]], np.uint32)
    b = np.array([[7, 7, 0, 0, 9, 9]], np.uint32)
    ids_a, ids_b, iou = overlap_iou(a, b)
    assert ids_a.tolist() == [1] and ids_b.tolist() == [7]
    assert iou.tolist() == [pytest.approx(2 / 4)]


def test_join_guarded_refuses_chains_through_one_tile():
    """Nodes 0..4 in tiles 0,1,2,0,1: the chain 0-1-2 must not swallow node 3, another object of tile 0."""
    group = np.array([0, 1, 2, 0, 1])
    a = np.array([0, 1, 2, 3])
    b = np.array([1, 2, 3, 4])
    score = np.array([0.9, 0.8, 0.7, 0.6])
    component, merges, rejected = join_guarded(5, a, b, score, group)
    assert component[0] == component[1] == component[2]
    assert component[3] == component[4] != component[0]
    assert (merges, rejected) == (3, 1)


# --------------------------------------------------------------------------- 2D stitching


@pytest.mark.parametrize("tile_shape, halo", GRIDS)
def test_discs_across_tiles_get_one_id_each(tmp_path, tile_shape, halo):
    shape = (150, 170)
    rng = np.random.default_rng(hash((tile_shape, halo)) % 2**32)
    truth = disc_truth(shape, rng, edge_cases(shape, tile_shape), n_random=40)
    grid = TileGrid(shape, tile_shape, halo)
    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=1, big_ids=halo[0] % 2 == 0), out, workers=2)
    pred = out[:]
    assert_same_partition(truth, pred)
    assert_consecutive(pred, result.n_objects)
    assert result.n_objects == truth.max()
    assert result.n_tiles == grid.n_tiles and result.n_rejected == 0
    for y, x in [(tile_shape[0], tile_shape[1]), (0, 0), (shape[0] - 1, shape[1] // 2)]:
        assert pred[y, x] != 0  # four-tile disc and border discs are kept


def test_bar_spanning_many_tiles_is_one_object(tmp_path):
    truth = np.zeros((64, 200), np.uint32)
    truth[20:26, 5:195] = 1  # crosses eight tile edges
    truth[40:50, 30:60] = 2
    grid = TileGrid(truth.shape, (24, 24), (3, 3))
    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=2), out)
    assert_same_partition(truth, out[:])
    assert result.n_objects == 2 and result.n_merges >= 8


@pytest.mark.parametrize("threshold, n_objects", [(0.5, 2), (0.3, 1)])
def test_iou_threshold_decides_a_match(tmp_path, threshold, n_objects):
    """The right tile sees the object shifted 10 rows down: IoU over the overlap is 1/3."""
    truth = np.zeros((48, 80), np.uint32)
    truth[10:30, 30:50] = 1
    grid = TileGrid(truth.shape, (48, 40), (0, 8))

    def shift(tile: Tile, labels: np.ndarray) -> np.ndarray:
        return np.roll(labels, 10, axis=0) if tile.col == 1 else labels

    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=21, perturb=shift), out, iou_threshold=threshold)
    assert result.n_objects == n_objects
    assert result.n_matches == 2 - n_objects


@pytest.mark.parametrize("tile_shape, halo", GRIDS[:3])
def test_dense_touching_objects_are_not_merged(tmp_path, tile_shape, halo):
    truth = voronoi_truth((130, 150), np.random.default_rng(3), n_cells=160)
    grid = TileGrid(truth.shape, tile_shape, halo)
    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=4), out, iou_threshold=0.3)
    assert_same_partition(truth, out[:])
    assert result.n_objects == 160


def test_imperfect_masks_still_match(tmp_path):
    """Every other tile (checkerboard) shrinks its masks by a pixel: objects must still get one id."""
    shape = (160, 180)
    tile_shape, halo = (40, 48), (10, 10)
    truth = disc_truth(shape, np.random.default_rng(5), edge_cases(shape, tile_shape), 35, radii=(6, 14))
    grid = TileGrid(shape, tile_shape, halo)
    perturb = lambda tile, labels: erode(labels) if (tile.row + tile.col) % 2 == 0 else labels  # noqa: E731
    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=6, perturb=perturb), out)
    pred = out[:]
    t, p = pairs_of(truth, pred)
    objects = (t != 0) & (p != 0)
    assert np.unique(t[objects]).size == truth.max(), "an object lost all its pixels"
    assert np.unique(t[objects]).size == objects.sum(), "an object got more than one id"
    assert np.unique(p[objects]).size == objects.sum(), "one id covers two objects"
    assert not np.any((t == 0) & (p != 0)), "eroded masks only lose pixels"
    assert_consecutive(pred, result.n_objects)
    assert result.n_objects == truth.max()


def test_imperfect_dense_objects_are_not_merged(tmp_path):
    truth = voronoi_truth((120, 140), np.random.default_rng(7), n_cells=120)
    grid = TileGrid(truth.shape, (32, 32), (6, 6))
    perturb = lambda tile, labels: erode(labels) if tile.col % 2 else labels  # noqa: E731
    out = new_out(tmp_path, grid)
    stitch_tiles(grid, tile_reader(truth, grid, seed=8, perturb=perturb), out, iou_threshold=0.2)
    t, p = pairs_of(truth, out[:])
    assert np.unique(p[p != 0]).size == np.count_nonzero(p), "an id spans two touching objects"


@pytest.mark.parametrize("fill", [True, False])
def test_object_missed_by_a_neighbour_is_not_cut_at_its_border(tmp_path, fill):
    """Tile 0 finds a disc reaching 6 px into tile 1, tile 1 misses it (background there)."""
    truth = disc_truth((48, 96), np.random.default_rng(11), [((24, 44), 10)], n_random=0)
    grid = TileGrid(truth.shape, (48, 48), (16, 16))

    def miss(tile: Tile, labels: np.ndarray) -> np.ndarray:
        return np.zeros_like(labels) if tile.id == 1 else labels

    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=12, perturb=miss), out, fill_background=fill)
    assert result.n_objects == 1
    pred = out[:]
    if fill:
        assert_same_partition(truth, pred)
    else:  # cut straight at tile 1's inner border
        assert np.array_equal(pred[:, 48:], np.zeros((48, 48), np.uint32))
        assert np.count_nonzero(pred) < np.count_nonzero(truth)


def test_objects_seen_only_in_a_halo_get_no_id(tmp_path):
    truth = disc_truth((96, 96), np.random.default_rng(9), [((20, 20), 6)], n_random=0)
    grid = TileGrid(truth.shape, (48, 48), (8, 8))

    def ghost(tile: Tile, labels: np.ndarray) -> np.ndarray:
        if tile.id == 0:  # a spurious object in tile 0's halo, where its neighbour sees background
            labels = labels.copy()
            labels[5:9, 50:54] = labels.max() + 1
        return labels

    out = new_out(tmp_path, grid)
    result = stitch_tiles(grid, tile_reader(truth, grid, seed=10, perturb=ghost), out)
    assert result.n_objects == 1
    assert_same_partition(truth, out[:])


@pytest.mark.parametrize("chunks", [(48, 40), (24, 20), (30, 30)])
def test_output_chunking_and_threads_do_not_change_the_result(tmp_path, chunks):
    truth = disc_truth((130, 150), np.random.default_rng(11), [], n_random=30)
    grid = TileGrid(truth.shape, (48, 40), (6, 6))
    read = tile_reader(truth, grid, seed=12)
    serial = new_out(tmp_path, grid, name="serial.zarr")
    threaded = new_out(tmp_path, grid, chunks=chunks, name="threaded.zarr")
    stitch_tiles(grid, read, serial, workers=1)
    stitch_tiles(grid, read, threaded, workers=3)
    assert np.array_equal(serial[:], threaded[:])
    assert_same_partition(truth, threaded[:])


@pytest.mark.parametrize("shards", [(48, 40), (96, 80)])
def test_sharded_output(tmp_path, shards):
    """Shards are the unit a write rewrites: tiles sharing one must not be written concurrently."""
    truth = disc_truth((130, 150), np.random.default_rng(22), [], n_random=30)
    grid = TileGrid(truth.shape, (48, 40), (6, 6))
    out = zarr.create_array(
        store=str(tmp_path / "sharded.zarr"),
        shape=truth.shape,
        chunks=(24, 20),
        shards=shards,
        dtype=np.uint32,
    )
    stitch_tiles(grid, tile_reader(truth, grid, seed=23), out, workers=3)
    assert_same_partition(truth, out[:])


def test_read_tile_of_the_wrong_shape_is_refused(tmp_path):
    grid = TileGrid((64, 64), (32, 32), (4, 4))
    with pytest.raises(ValueError, match="window shape"):
        stitch_tiles(grid, lambda tile: np.zeros((32, 32), np.uint32), new_out(tmp_path, grid))
