"""Planning's header checks for every input format: a file cut short
or corrupt fails `probe` naming the file and the fault, from headers and metadata only (no pixels)."""

from __future__ import annotations

from pathlib import Path

import h5py
import imageio.v3 as iio
import numcodecs
import numpy as np
import pytest
import tifffile
import zarr
import zarr.codecs
from skimage import io as skio

from tilesam.data import headers, io

PIXELS = (np.random.default_rng(0).random((200, 300)) * 255).astype(np.uint8)


def _zarr(zarr_format: int, **options):
    def write(path: Path) -> Path:
        zarr.create_array(
            str(path), shape=PIXELS.shape, chunks=(64, 64), dtype="u1", zarr_format=zarr_format, **options
        )[:] = PIXELS
        return path

    return write


def _h5(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f["raw"] = PIXELS
    return path


def _picture(path: Path) -> Path:
    iio.imwrite(path, PIXELS)
    return path


# name -> (file name, writer, key, the format's word in the message)
FORMATS = {
    "png": ("a.png", _picture, None, "PNG"),
    "jpeg": ("a.jpg", _picture, None, "JPEG"),
    "hdf5": ("a.h5", _h5, "raw", "HDF5"),
    "zarr v3 (zstd)": ("a.zarr", _zarr(3), None, "zarr array"),
    "zarr v3 uncompressed": ("a.zarr", _zarr(3, compressors=None), None, "zarr array"),
    "zarr v3 blosc": ("a.zarr", _zarr(3, compressors=zarr.codecs.BloscCodec()), None, "zarr array"),
    "zarr v3 gzip": ("a.zarr", _zarr(3, compressors=zarr.codecs.GzipCodec()), None, "zarr array"),
    "zarr v3 sharded": ("a.zarr", _zarr(3, shards=(128, 128)), None, "zarr array"),
    "zarr v2 (zstd)": ("a.zarr", _zarr(2), None, "zarr array"),
    "zarr v2 blosc": ("a.zarr", _zarr(2, compressors=numcodecs.Blosc()), None, "zarr array"),
}


def _cut(path: Path, fraction: float = 0.6) -> Path:
    """Cut a file short; in a zarr array, its last data file (a chunk or a shard)."""
    if path.is_dir():
        path = max(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "zarr.json")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _refuse_pixel_reads(patch: pytest.MonkeyPatch) -> None:
    """The picture decoder, zarr's and h5py's reads fail if used: what follows reads headers only."""

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were read")

    patch.setattr(skio, "imread", refuse)
    patch.setattr(zarr.Array, "__getitem__", refuse)
    patch.setattr(h5py.Dataset, "__getitem__", refuse)


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_good_file_passes_and_a_cut_one_fails_naming_it_from_its_headers(fmt, tmp_path):
    name, write, key, word = FORMATS[fmt]
    path = write(tmp_path / name)
    if word != "JPEG":  # lossy
        np.testing.assert_array_equal(np.asarray(io.open_lazy(path, key)), PIXELS)
    with pytest.MonkeyPatch.context() as patch:
        _refuse_pixel_reads(patch)
        assert headers.probe(path, 2, key) == PIXELS.shape
        _cut(path)
        with pytest.raises(io.InputError, match=f"{name}: truncated or corrupt {word}"):
            headers.probe(path, 2, key)


@pytest.mark.parametrize(
    ("name", "key", "message"),
    [
        ("a.png", None, "a.png: not a PNG file"),
        ("a.jpg", None, "a.jpg: not a JPEG file"),
        ("a.h5", "raw", "a.h5: truncated or corrupt HDF5, or no HDF5 file"),
    ],
)
def test_a_file_of_another_kind_is_an_error_naming_it(tmp_path, name, key, message):
    (tmp_path / name).write_bytes(bytes(range(256)) * 4)
    with pytest.raises(io.InputError, match=message):
        headers.probe(tmp_path / name, 2, key)


def test_corrupt_zarr_metadata_is_an_error_naming_the_store(tmp_path):
    path = _zarr(3)(tmp_path / "a.zarr")
    (path / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(io.InputError, match=r"a\.zarr: corrupt zarr metadata"):
        headers.probe(path, 2)


def test_a_cut_chunk_of_an_ome_zarr_image_is_named(tmp_path):
    group = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    group.create_array("0", shape=PIXELS.shape, chunks=(64, 64), dtype="u1")[:] = PIXELS
    assert headers.probe(tmp_path / "img.ome.zarr", 2) == PIXELS.shape
    chunk = _cut(tmp_path / "img.ome.zarr/0")
    with pytest.raises(io.InputError, match=rf"img\.ome\.zarr: truncated .*chunk 0/c/{chunk.parent.name}/{chunk.name}"):
        headers.probe(tmp_path / "img.ome.zarr", 2)


def test_pictures_are_read_lazily_with_the_pixels_and_layout_of_a_full_read(tmp_path):
    for name, pixels in [
        ("gray.png", PIXELS),
        ("rgb.png", np.stack([PIXELS] * 3, -1)),
        ("rgba.png", np.stack([PIXELS] * 4, -1)),
        ("deep.png", PIXELS.astype(np.uint16) * 200),
        ("rgb.jpg", np.stack([PIXELS] * 3, -1)),
    ]:
        iio.imwrite(tmp_path / name, pixels)
        lazy, full = io.open_lazy(tmp_path / name), skio.imread(tmp_path / name)
        assert (lazy.shape, lazy.dtype) == (full.shape, full.dtype), name
        np.testing.assert_array_equal(np.asarray(lazy), full, err_msg=name)


def test_a_cut_png_slice_of_a_folder_volume_is_named(tmp_path):
    (tmp_path / "vol").mkdir()
    for z in range(3):
        iio.imwrite(tmp_path / "vol" / f"z{z}.png", PIXELS)
    _cut(tmp_path / "vol/z1.png")
    with pytest.raises(io.InputError, match=r"vol/z1\.png: truncated or corrupt PNG"):
        headers.probe(tmp_path / "vol", 3)


def _noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 200, size=shape).astype(np.uint8)


@pytest.mark.parametrize("layout", [{}, {"compression": "zlib", "tile": (32, 32)}])
def test_a_truncated_tiff_is_found_from_its_header_naming_the_file(tmp_path, layout, monkeypatch):
    tifffile.imwrite(tmp_path / "whole.tif", _noise((3, 120, 100)), photometric="minisblack", **layout)
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    assert headers.probe(tmp_path / "whole.tif", 3) == (3, 120, 100)
    monkeypatch.setattr(io, "_Mapped", None)  # no pixel reads: a header check
    monkeypatch.setattr(tifffile.TiffPage, "asarray", None)
    with pytest.raises(io.InputError, match=r"cut\.tif: truncated or corrupt TIFF: .*(page|offset)"):
        headers.probe(tmp_path / "cut.tif", 3)


def test_a_file_that_is_no_tiff_is_an_error_naming_it(tmp_path):
    (tmp_path / "noise.tif").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(io.InputError, match=r"noise\.tif: cannot be read as TIFF.*not a TIFF"):
        headers.probe(tmp_path / "noise.tif", 2)


def test_labels_are_checked_from_their_header(tmp_path):
    tifffile.imwrite(tmp_path / "img.tif", _noise((50, 60)))
    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((50, 61), np.uint16))
    with pytest.raises(io.InputError, match=r"wide\.tif.*\(50, 61\).*img\.tif.*\(50, 60\)"):
        headers.probe_labels(tmp_path / "wide.tif", (50, 60), tmp_path / "img.tif")
    tifffile.imwrite(tmp_path / "float.tif", np.zeros((50, 60), np.float32))
    with pytest.raises(io.InputError, match=r"float\.tif.*integers"):
        headers.probe_labels(tmp_path / "float.tif", (50, 60), tmp_path / "img.tif")
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((50, 60), np.uint16))
    headers.probe_labels(tmp_path / "ok.tif", (50, 60), tmp_path / "img.tif")


def test_a_truncated_slice_of_a_folder_volume_is_named(tmp_path):
    (tmp_path / "vol").mkdir()
    for z in range(3):
        tifffile.imwrite(tmp_path / "vol" / f"z{z}.tif", _noise((40, 50), seed=z))
    data = (tmp_path / "vol/z1.tif").read_bytes()
    (tmp_path / "vol/z1.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(io.InputError, match=r"vol/z1\.tif: truncated or corrupt TIFF"):
        headers.probe(tmp_path / "vol", 3)


@pytest.mark.parametrize("name", ["neg.tif", "neg.zarr"])
def test_negative_labels_are_found_from_the_first_chunk_at_planning(tmp_path, name):
    """import_labels refuses negative ids; planning finds them first, so no embed or segment job runs in vain."""
    labels = np.zeros((50, 60), np.int16)
    labels[3:9, 4:10] = -1
    if name.endswith(".zarr"):
        zarr.create_array(str(tmp_path / name), shape=labels.shape, chunks=(16, 16), dtype="i2")[:] = labels
    else:
        tifffile.imwrite(tmp_path / name, labels)
    with pytest.raises(io.InputError, match=rf"{name}: labels have negative values \(-1\)"):
        headers.probe_labels(tmp_path / name, (50, 60), tmp_path / "img.tif")
    tifffile.imwrite(tmp_path / "ok.tif", np.abs(labels))  # signed, but no negative id
    headers.probe_labels(tmp_path / "ok.tif", (50, 60), tmp_path / "img.tif")
