"""A window reader gives zarr's own windows, decoding each chunk about once in a block's order."""

import numpy as np
import pytest
import zarr

from tilesam.data import io
from tilesam.data.windows import WindowReader
from tilesam.tiling import TileGrid


def store(tmp_path, shape, chunks, dtype="uint16"):
    data = np.random.default_rng(0).integers(0, 60000, shape).astype(dtype)
    array = zarr.create_array(str(tmp_path / "image.zarr"), shape=shape, chunks=chunks, dtype=dtype)
    array[...] = data
    return array


@pytest.mark.parametrize(
    ("shape", "chunks", "channels", "spatial"),
    [
        ((300, 410), (64, 64), 1, (300, 410)),  # edge chunks cut short
        ((3, 5, 130, 150), (1, 1, 32, 32), 3, (5, 130, 150)),  # a channel axis first, a volume
        ((4, 100, 90), (1, 40, 40), 1, (4, 100, 90)),
    ],
    ids=["2d", "rgb-volume", "volume"],
)
def test_windows_equal_zarr_and_each_chunk_is_decoded_once(tmp_path, shape, chunks, channels, spatial):
    array = store(tmp_path, shape, chunks)
    tile = chunks[-2:]
    grid = TileGrid(spatial, tile, (tile[0] // 4, tile[1] // 4))
    reader = WindowReader(array, channels)
    for t in grid.block(0, grid.n_tiles):
        got, expected = reader(t.window_slices()), io.read_window(array, t.window_slices(), channels)
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
    assert reader.decoded == int(np.prod([-(-s // c) for s, c in zip(shape, chunks)]))


def test_a_small_cache_still_reads_right_and_stays_within_its_bound(tmp_path):
    array = store(tmp_path, (256, 256), (32, 32))
    reader = WindowReader(array, 1, max_bytes=3 * 32 * 32 * 2)
    rng = np.random.default_rng(1)
    for _ in range(50):
        y0, x0 = rng.integers(0, 200, 2)
        h, w = rng.integers(1, 56, 2)
        index = (slice(y0, y0 + h), slice(x0, x0 + w))
        np.testing.assert_array_equal(reader(index), array[index])
        assert reader.kept_bytes <= 3 * 32 * 32 * 2 or len(reader.kept) == 1


def test_indexes_outside_or_of_the_wrong_rank_are_refused(tmp_path):
    reader = WindowReader(store(tmp_path, (2, 40, 40), (1, 16, 16)), 1)
    with pytest.raises(IndexError, match="outside"):
        reader((2, slice(0, 4), slice(0, 4)))
    with pytest.raises(IndexError, match="does not fit"):
        reader((slice(0, 4), slice(0, 4)))
    with pytest.raises(IndexError, match="non-empty"):
        reader((0, slice(4, 4), slice(0, 4)))
