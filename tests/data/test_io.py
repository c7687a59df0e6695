import h5py
import numpy as np
import pytest
import tifffile
import zarr
from skimage import io as skio

from tilesam.data import headers, io, ome


def _img(shape, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 200, size=shape).astype(dtype)


@pytest.mark.parametrize(
    "shape,ndim,channels",
    [((70, 90), 2, 1), ((70, 90, 3), 2, 3), ((70, 90, 4), 2, 3), ((3, 70, 90), 2, 3), ((4, 70, 90), 3, 1)],
)
def test_import_tif_layouts(tmp_path, shape, ndim, channels):
    arr = _img(shape)
    tifffile.imwrite(tmp_path / "a.tif", arr, photometric="rgb" if channels == 3 else "minisblack")
    info = io.import_image(tmp_path / "a.tif", tmp_path / "a.ome.zarr", ndim=ndim, tile_shape=(32, 32))
    assert info.channels == channels
    stored = ome.open_level0(tmp_path / "a.ome.zarr")
    expected = arr
    if channels == 3 and shape[-1] in (3, 4):
        expected = np.moveaxis(arr[..., :3], -1, 0)
    np.testing.assert_array_equal(stored[...], expected)
    assert stored.chunks[-2:] == (32, 32)
    assert info.intensity_range == (float(arr.min()), float(arr.max()))
    assert io.read_info(tmp_path / "a.ome.zarr") == info


def test_all_formats_give_the_same_pixels(tmp_path):
    vol = _img((3, 40, 50), np.uint16)
    tifffile.imwrite(tmp_path / "v.tif", vol, photometric="minisblack")  # multi-page
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["raw"] = vol
    zarr.save_array(str(tmp_path / "v.zarr"), vol)
    (tmp_path / "slices").mkdir()
    for i, s in enumerate(vol):
        tifffile.imwrite(tmp_path / "slices" / f"{i:03d}.tif", s)
    for src, key in [("v.tif", None), ("v.h5", "raw"), ("v.zarr", None), ("slices", None)]:
        arr = io.open_lazy(tmp_path / src, key)
        np.testing.assert_array_equal(np.asarray(arr), vol, err_msg=src)
    skio.imsave(tmp_path / "p.png", vol[0].astype(np.uint8), check_contrast=False)
    assert headers.probe(tmp_path / "p.png", 2) == (40, 50)


@pytest.mark.parametrize("shape,ndim", [((300, 200), 2), ((4, 90, 80), 3), ((90, 80, 3), 2)])
def test_uncompressed_tif_is_read_chunk_by_chunk(tmp_path, monkeypatch, shape, ndim):
    """tifffile writes uncompressed images as one strip per page: import must not read a page whole."""
    arr = _img(shape, np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", arr, photometric="rgb" if shape[-1] == 3 else "minisblack")
    limit = arr.nbytes // 8
    monkeypatch.setattr(io, "MAPPED_CHUNK_BYTES", limit)
    reads = []
    read = io._Mapped.__getitem__
    monkeypatch.setattr(io._Mapped, "__getitem__", lambda self, index: reads.append(read(self, index)) or reads[-1])
    np.testing.assert_array_equal(io.open_lazy(tmp_path / "plain.tif").compute(), arr)
    info = io.import_image(tmp_path / "plain.tif", tmp_path / "a.ome.zarr", ndim=ndim, tile_shape=(32, 32))
    stored = ome.open_level0(tmp_path / "a.ome.zarr")[...]
    np.testing.assert_array_equal(stored, np.moveaxis(arr, -1, 0) if info.channels == 3 else arr)
    assert len(reads) > 8 and max(r.nbytes for r in reads) <= limit


def test_nan_is_an_error_naming_the_file(tmp_path):
    arr = np.ones((40, 40), np.float32)
    arr[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "bad.tif", arr)
    with pytest.raises(io.InputError, match=r"bad\.tif.*NaN"):
        io.import_image(tmp_path / "bad.tif", tmp_path / "o.ome.zarr", ndim=2, tile_shape=(16, 16))


@pytest.mark.parametrize("shape,ndim", [((5, 6, 7, 8), 2), ((40, 40), 3), ((40, 40, 7), 2)])
def test_wrong_shape_is_an_error(tmp_path, shape, ndim):
    tifffile.imwrite(tmp_path / "x.tif", np.zeros(shape, np.uint8))
    with pytest.raises(io.InputError, match=r"x\.tif.*shape"):
        headers.probe(tmp_path / "x.tif", ndim)


def test_unsupported_dtype_and_missing_file(tmp_path):
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(io.InputError, match=r"c\.tif.*dtype"):
        headers.probe(tmp_path / "c.tif", 2)
    with pytest.raises(io.InputError, match="no such file"):
        io.open_lazy(tmp_path / "nope.tif")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(io.InputError, match="unsupported format"):
        io.open_lazy(tmp_path / "t.txt")


def test_labels_must_match_their_image(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", _img((50, 60)))
    io.import_image(tmp_path / "img.tif", tmp_path / "img.ome.zarr", ndim=2, tile_shape=(32, 32))
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((50, 61), np.uint16))
    with pytest.raises(io.InputError, match=r"bad\.tif.*\(50, 61\).*img\.tif.*\(50, 60\)"):
        io.import_labels(tmp_path / "bad.tif", tmp_path / "l.ome.zarr", image=tmp_path / "img.ome.zarr")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((50, 60), np.float32))
    with pytest.raises(io.InputError, match="integers"):
        io.import_labels(tmp_path / "float.tif", tmp_path / "l.ome.zarr", image=tmp_path / "img.ome.zarr")
    good = np.arange(50 * 60, dtype=np.uint16).reshape(50, 60) % 7
    tifffile.imwrite(tmp_path / "good.tif", good)
    io.import_labels(tmp_path / "good.tif", tmp_path / "l.ome.zarr", image=tmp_path / "img.ome.zarr")
    np.testing.assert_array_equal(ome.open_level0(tmp_path / "l.ome.zarr")[...], good)


def test_pyramid_and_ngff_metadata(tmp_path):
    arr = _img((600, 520))
    tifffile.imwrite(tmp_path / "a.tif", arr)
    io.import_image(tmp_path / "a.tif", tmp_path / "a.ome.zarr", ndim=2, tile_shape=(128, 128))
    attrs = zarr.open_group(str(tmp_path / "a.ome.zarr")).attrs["ome"]
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    level1 = zarr.open_array(str(tmp_path / "a.ome.zarr" / "1"))[...]
    np.testing.assert_allclose(level1, arr.reshape(300, 2, 260, 2).mean(axis=(1, 3)).astype(np.uint8), atol=1)
    for level in ("0", "1"):  # the image codec (fast to decode) on every level
        (codec,) = zarr.open_array(str(tmp_path / "a.ome.zarr" / level)).compressors
        (expected,) = io.IMAGE_COMPRESSORS
        assert (codec.cname, codec.clevel, codec.shuffle) == (expected.cname, expected.clevel, expected.shuffle)


@pytest.mark.parametrize("pages", [3, 4])
def test_a_short_stack_read_as_2d_is_ambiguous_unless_its_metadata_says_rgb(tmp_path, pages):
    """3 or 4 grayscale pages with `ndim: 2` were read as RGB (a fourth section dropped): now an error."""
    stack = _img((pages, 40, 50))
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    with pytest.raises(io.InputError, match=rf"stack\.tif: {pages} grayscale pages.*Set `ndim: 3`"):
        headers.probe(tmp_path / "stack.tif", 2)
    with pytest.raises(io.InputError, match="ndim: 3"):
        io.import_image(tmp_path / "stack.tif", tmp_path / "s.ome.zarr", ndim=2, tile_shape=(32, 32))
    assert headers.probe(tmp_path / "stack.tif", 3) == (pages, 40, 50)
    tifffile.imwrite(tmp_path / "planar.tif", stack[:3], photometric="rgb", planarconfig="separate")
    assert headers.probe(tmp_path / "planar.tif", 2) == (40, 50)  # RGB by its metadata
    zarr.save_array(str(tmp_path / "c.zarr"), stack[:3])  # no pages: channels first, as before
    assert headers.probe(tmp_path / "c.zarr", 2) == (40, 50)


def test_label_ids_above_uint32_keep_their_values(tmp_path):
    """Ids past 2**32 - 1 were cast to uint32 at import: 1, 2**32 + 1 and 2**33 + 1 merged into one object."""
    tifffile.imwrite(tmp_path / "img.tif", _img((30, 40)))
    io.import_image(tmp_path / "img.tif", tmp_path / "img.ome.zarr", ndim=2, tile_shape=(16, 16))
    labels = np.zeros((30, 40), np.uint64)
    labels[2:8, 2:8], labels[12:18, 12:18], labels[22:28, 30:36] = 1, 2**32 + 1, 2**63 + 1
    tifffile.imwrite(tmp_path / "big.tif", labels)
    io.import_labels(tmp_path / "big.tif", tmp_path / "big.ome.zarr", image=tmp_path / "img.ome.zarr")
    stored = ome.open_level0(tmp_path / "big.ome.zarr")
    assert stored.dtype == np.uint64
    np.testing.assert_array_equal(stored[...], labels)
    small = (labels > 0).astype(np.int64) * 7
    tifffile.imwrite(tmp_path / "small.tif", small)
    io.import_labels(tmp_path / "small.tif", tmp_path / "small.ome.zarr", image=tmp_path / "img.ome.zarr")
    assert ome.open_level0(tmp_path / "small.ome.zarr").dtype == np.uint32  # the default where ids fit
