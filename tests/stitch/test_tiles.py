"""Stitching: per-tile local labels -> one global label image, 3D linking, exports.

Per-tile labels are made the way a segmenter would see them: a ground-truth
label image is cut into tile windows and each window is relabelled with random
local ids, so objects cut by a window border become partial objects.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage
from scipy.spatial import cKDTree

from tilesam.data import ome
from tilesam.stitch.tiles import (
    StitchParams,
    export_tif,
    instance_table,
    join_guarded,
    link_sections,
    one_to_one,
    overlap_iou,
    stitch,
    stitch_tiles,
)
from tilesam.tiling import Tile, TileGrid

# --------------------------------------------------------------------------- helpers


def paint_disc(image: np.ndarray, centre: tuple[float, float], radius: float, label: int) -> None:
    yy, xx = np.ogrid[: image.shape[0], : image.shape[1]]
    image[(yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2] = label


def disc_truth(shape, rng, fixed, n_random, radii=(3, 12)) -> np.ndarray:
    """Non-touching discs: the `fixed` (centre, radius) ones first, then random ones where they fit."""
    discs = list(fixed)
    for _ in range(40 * n_random):
        if len(discs) >= len(fixed) + n_random:
            break
        r = rng.uniform(*radii)
        c = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        if all(np.hypot(c[0] - d[0][0], c[1] - d[0][1]) > r + d[1] + 2 for d in discs):
            discs.append((c, r))
    truth = np.zeros(shape, np.uint32)
    for label, (centre, radius) in enumerate(discs, start=1):
        paint_disc(truth, centre, radius, label)
    return truth


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


def tile_reader(truth: np.ndarray, grid: TileGrid, seed: int, *, big_ids=False, perturb=None):
    """read_tile over windows of `truth`, each relabelled with random local ids (fixed per tile)."""
    rng = np.random.default_rng(seed)
    windows = {}
    for tile in grid.tiles():
        window = truth[tile.window_slices()]
        ids = np.unique(window)
        ids = ids[ids != 0]
        population = 2**31 if big_ids else 3 * ids.size + 5
        local = rng.choice(population, size=ids.size, replace=False).astype(np.uint32) + 1
        relabelled = np.zeros(window.shape, np.uint32)
        fg = window != 0
        relabelled[fg] = local[np.searchsorted(ids, window[fg])]
        windows[tile.id] = perturb(tile, relabelled) if perturb else relabelled
    return lambda tile: windows[tile.id]


def new_out(tmp_path, grid: TileGrid, chunks=None, name="labels.zarr") -> zarr.Array:
    chunks = chunks or ((1, *grid.tile_shape) if grid.is_volume else grid.tile_shape)
    return ome.create(tmp_path / name, grid.shape, np.uint32, chunks)


def pairs_of(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keys = np.unique((truth.ravel().astype(np.uint64) << np.uint64(32)) | pred.ravel().astype(np.uint64))
    return (keys >> np.uint64(32)).astype(np.int64), (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def assert_same_partition(truth: np.ndarray, pred: np.ndarray) -> None:
    """pred equals truth up to a one-to-one renaming of ids, background staying 0."""
    t, p = pairs_of(truth, pred)
    assert np.array_equal(t == 0, p == 0), "background and objects disagree"
    assert np.unique(t).size == t.size, "an object got more than one id"
    assert np.unique(p).size == p.size, "one id covers more than one object"


def assert_consecutive(pred: np.ndarray, n_objects: int) -> None:
    assert np.array_equal(np.unique(pred[pred != 0]), np.arange(1, n_objects + 1))


def adjusted_rand_index(truth: np.ndarray, pred: np.ndarray) -> float:
    """ARI over the pixels that are foreground in truth or pred, from the contingency table.

    Background-only pixels are left out: they would dominate and lift any labelling near 1.
    """
    fg = (truth != 0) | (pred != 0)
    _, ti = np.unique(truth[fg], return_inverse=True)
    _, pi = np.unique(pred[fg], return_inverse=True)
    pairs = lambda counts: float((counts.astype(np.float64) * (counts - 1) / 2).sum())  # noqa: E731
    index = pairs(np.bincount(ti * (pi.max() + 1) + pi))
    a, b, n = pairs(np.bincount(ti)), pairs(np.bincount(pi)), pairs(np.array([ti.size]))
    expected = a * b / n
    return (index - expected) / ((a + b) / 2 - expected)


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


# --------------------------------------------------------------------------- matching primitives


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


def test_one_to_one_takes_best_pairs_first_and_each_id_once():
    a = np.array([1, 1, 2, 3])
    b = np.array([5, 6, 5, 6])
    score = np.array([0.6, 0.9, 0.7, 0.2])
    kept = one_to_one(a, b, score, threshold=0.3)
    assert sorted(zip(a[kept].tolist(), b[kept].tolist())) == [(1, 6), (2, 5)]
    assert one_to_one(a, b, score, threshold=0.95).size == 0


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


# --------------------------------------------------------------------------- 3D


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


# --------------------------------------------------------------------------- exports


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
