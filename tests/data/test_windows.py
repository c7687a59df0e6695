"""A window reader gives zarr's own windows, decoding each chunk about once in a block's order."""

import itertools

import numpy as np
import pytest
import zarr

from tilesam.data import io
from tilesam.data.windows import WindowReader, chunk_decoder
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


def test_a_transform_runs_once_per_chunk_and_gives_the_transformed_window(tmp_path):
    array = store(tmp_path, (3, 130, 150), (3, 32, 32))  # channels first, as an imported RGB image
    calls = []

    def halve(block):
        calls.append(block.shape)
        return (block // 257).astype(np.uint8)

    reader = WindowReader(array, 3, transform=halve)
    grid = TileGrid((130, 150), (32, 32), (8, 8))
    for t in grid.block(0, grid.n_tiles):
        got = reader(t.window_slices())
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, (io.read_window(array, t.window_slices(), 3) // 257).astype(np.uint8))
    assert len(calls) == reader.decoded == 5 * 5


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
@pytest.mark.parametrize(
    "compressors",
    [None, zarr.codecs.ZstdCodec(), zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle")],
    ids=["raw", "zstd", "blosc"],
)
def test_chunks_decoded_directly_equal_zarrs_and_missing_ones_are_the_fill_value(tmp_path, dtype, compressors):
    data = np.random.default_rng(2).integers(0, 250, (70, 90)).astype(dtype)
    array = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(32, 32), dtype=dtype,
                              compressors=compressors, fill_value=7)  # fmt: skip
    array[:64, :] = data[:64]  # the last chunk row is never written: zarr reads it as the fill value
    decode = chunk_decoder(array)
    assert decode is not None
    for key in itertools.product(range(3), range(3)):
        index = tuple(slice(k * 32, min((k + 1) * 32, s)) for k, s in zip(key, data.shape))
        np.testing.assert_array_equal(decode(key), array[index])
    assert (decode((2, 1)) == 7).all() and decode((2, 2)).shape == (6, 26)


def test_arrays_zarr_must_read_have_no_direct_decoder_and_read_the_same(tmp_path):
    data = np.random.default_rng(3).integers(0, 60000, (100, 90)).astype("uint16")
    sharded = zarr.create_array(str(tmp_path / "s.zarr"), shape=data.shape, chunks=(16, 16), shards=(32, 32), dtype="uint16")  # fmt: skip
    v2 = zarr.create_array(str(tmp_path / "v2.zarr"), shape=data.shape, chunks=(32, 32), dtype="uint16", zarr_format=2)
    memory = zarr.create_array(zarr.storage.MemoryStore(), shape=data.shape, chunks=(32, 32), dtype="uint16")
    big = zarr.create_array(str(tmp_path / "big.zarr"), shape=data.shape, chunks=(32, 32), dtype="uint16",
                            serializer=zarr.codecs.BytesCodec(endian="big"))  # fmt: skip
    checksummed = zarr.create_array(str(tmp_path / "crc.zarr"), shape=data.shape, chunks=(32, 32), dtype="uint16",
                                    compressors=(zarr.codecs.ZstdCodec(), zarr.codecs.Crc32cCodec()))  # fmt: skip
    for array in (sharded, v2, memory, big, checksummed):
        array[...] = data
        assert chunk_decoder(array) is None
        reader = WindowReader(array, 1)
        np.testing.assert_array_equal(reader((slice(5, 77), slice(20, 90))), data[5:77, 20:90])


def test_a_chunk_that_does_not_decode_is_an_error_naming_its_file(tmp_path):
    array = store(tmp_path, (64, 64), (32, 32))
    (tmp_path / "image.zarr" / "c" / "1" / "0").write_bytes(b"not a zstd frame")
    reader = WindowReader(array, 1)
    reader((slice(0, 32), slice(0, 64)))  # the intact chunks read
    with pytest.raises(ValueError, match=r"image\.zarr/c/1/0"):
        reader((slice(30, 40), slice(0, 10)))
