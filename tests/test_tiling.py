import numpy as np
import pytest

from tilesam.config import Tiling
from tilesam.tiling import TileGrid


@pytest.mark.parametrize("shape", [(100, 130), (256, 256), (3, 70, 50), (1, 1)])
@pytest.mark.parametrize("tile,halo", [((32, 32), (8, 8)), ((64, 48), (0, 5)), ((300, 300), (16, 16))])
def test_every_pixel_in_exactly_one_inner_region(shape, tile, halo):
    grid = TileGrid(shape, tile, halo)
    count = np.zeros(shape, np.int32)
    for t in grid.tiles():
        count[t.inner_slices()] += 1
        (wy0, wy1), (wx0, wx1) = t.window
        (y0, y1), (x0, x1) = t.inner
        assert wy0 == max(y0 - halo[0], 0) and wy1 == min(y1 + halo[0], shape[-2])
        assert wx0 == max(x0 - halo[1], 0) and wx1 == min(x1 + halo[1], shape[-1])
        # the inner region sits inside the window where inner_in_window says
        win = np.zeros(t.window_shape, bool)
        win[t.inner_in_window()] = True
        assert win.sum() == (y1 - y0) * (x1 - x0)
    assert (count == 1).all()


def test_ids_are_z_major_and_round_trip():
    grid = TileGrid((3, 100, 100), (40, 40), (4, 4))
    assert grid.grid_shape == (3, 3) and grid.n_tiles == 27
    for t in grid.tiles():
        assert grid.tile_id(t.z, t.row, t.col) == t.id
    assert grid.tile(9).z == 1 and grid.tile(9).row == 0
    with pytest.raises(IndexError):
        grid.tile(27)


def test_neighbours_visit_each_adjacent_pair_once():
    grid = TileGrid((90, 90), (30, 30), (5, 5))
    pairs = {(t.id, n.id) for t in grid.tiles() for n in grid.neighbours(t)}
    # 3x3 grid: 12 edge-adjacent + 8 diagonal pairs
    assert len(pairs) == 20
    assert all(a < b for a, b in pairs)


def test_blocks_partition_tiles():
    grid = TileGrid((2, 100, 100), (30, 30), (0, 0))
    ids = [t.id for b in range(grid.n_blocks(5)) for t in grid.block(b, 5)]
    assert ids == list(range(grid.n_tiles))
    assert len(grid.block(grid.n_blocks(5) - 1, 5)) == grid.n_tiles % 5 or 5


@pytest.mark.parametrize(
    "n_tiles, min_blocks, size",
    [(1, 2, 1), (4, 2, 2), (5, 2, 2), (6, 4, 1), (40, 2, 16), (64, 2, 16), (4, 1, 4), (64, 1, 16)],
)
def test_block_size_keeps_min_blocks_jobs_for_small_images(n_tiles, min_blocks, size):
    tiling = Tiling(tile_shape=(256, 256), halo=(32, 32), tiles_per_block=16, min_blocks=min_blocks)
    assert tiling.block_size(n_tiles) == size
    assert TileGrid((256, 256 * n_tiles), (256, 256), (0, 0)).n_blocks(size) >= min(min_blocks, n_tiles)


def test_save_load(tmp_path):
    grid = TileGrid((5, 64, 80), (32, 32), (8, 8))
    grid.save(tmp_path / "g.json")
    assert TileGrid.load(tmp_path / "g.json") == grid


@pytest.mark.parametrize("bad", [dict(shape=(10,)), dict(tile_shape=(0, 4)), dict(halo=(-1, 0)), dict(shape=(0, 5))])
def test_bad_grids_are_rejected(bad):
    args = dict(shape=(10, 10), tile_shape=(4, 4), halo=(1, 1)) | bad
    with pytest.raises(ValueError):
        TileGrid(**args)
