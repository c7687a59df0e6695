"""Synthetic label images for stitching tests, and checks of a stitched result against the truth.

Per-tile labels are made the way a segmenter would see them: a ground-truth
label image is cut into tile windows and each window is relabelled with random
local ids, so objects cut by a window border become partial objects.
"""

from __future__ import annotations

import numpy as np
import zarr

from tilesam.data import ome
from tilesam.tiling import TileGrid


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
