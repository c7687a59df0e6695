"""Reading microscopy inputs lazily and importing them into OME-Zarr.

Every supported input (TIFF incl. multi-page/OME-TIFF, PNG/JPEG, zarr and
OME-Zarr, HDF5 with a key, a folder of 2D slices) is opened as a dask array
without reading it, then written chunk by chunk into an OME-Zarr chunked to the
tile grid. Bad input fails here with the file named: wrong dimensionality,
unsupported dtype, NaN values, labels that do not match. Planning's header checks
(a file cut short, labels that do not fit their image) are in tilesam.data.headers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr

from tilesam.data import ome

if TYPE_CHECKING:  # dask (~0.5 CPU-s of imports) only where an input is read: model jobs read stored zarr
    import dask.array as da

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
MAPPED_CHUNK_BYTES = 32 * 2**20  # dask chunks of memory-mapped inputs
IMAGE_COMPRESSORS = (zarr.codecs.BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle"),)
"""Imported images' codec: embed jobs decode every chunk (the data path that feeds the encoder), the import
writes each once, so decoding speed comes first. blosc lz4 on bit planes decodes 2-3.5x as fast as zarr's
default zstd; its files are 0-24 % larger on the shared 8-bit microscopy and 12 % smaller on a 16-bit
one (`benchmarks/image_codec.py`)."""
log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input file that tilesam cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What import made of an input: spatial shape, dtype, channels, intensity range, and its warnings
    (a constant image), which the image's labels carry on to the evaluation records and the table's notes."""

    source: str
    shape: tuple[int, ...]  # spatial: (Y, X) or (Z, Y, X)
    dtype: str
    channels: int  # 1 for grayscale, 3 for RGB
    intensity_range: tuple[float, float]
    signature: str
    warnings: tuple[str, ...] = ()

    def to_attrs(self) -> dict:
        return {"tilesam": {"image": asdict(self)}}

    @classmethod
    def from_attrs(cls, attrs: dict) -> ImageInfo:
        d = dict(attrs["tilesam"]["image"])
        d["shape"] = tuple(d["shape"])
        d["intensity_range"] = tuple(d["intensity_range"])
        d["warnings"] = tuple(d.get("warnings", ()))  # none recorded by earlier imports
        return cls(**d)


def is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


def open_lazy(path: str | Path, key: str | None = None) -> da.Array:
    """Open any supported input as a dask array without reading its pixels."""
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    try:
        if is_zarr(path):
            return da.from_zarr(zarr_array(path, key))
        if path.name.endswith(".n5") or (path / "attributes.json").exists():
            raise InputError(f"{path}: N5 is not supported by zarr>=3; convert it to zarr or TIFF first")
        if path.is_dir():
            return _open_slices(path)
        if suffix in (".tif", ".tiff"):
            import tifffile

            try:  # uncompressed and contiguous, often one strip per page: read it chunk by chunk
                mapped = _Mapped(tifffile.memmap(path, mode="r"))
                chunks = da.core.normalize_chunks("auto", mapped.shape, limit=MAPPED_CHUNK_BYTES, dtype=mapped.dtype)
                return da.from_array(mapped, chunks=chunks)
            except ValueError:  # compressed or tiled: tifffile's zarr store reads it strip by strip or tile by tile
                pass
            store = tifffile.imread(path, aszarr=True)
            node = zarr.open(store, mode="r")
            if isinstance(node, zarr.Group):  # pyramidal OME-TIFF: full resolution first
                node = node["0"]
            return da.from_zarr(node)
        if suffix in HDF5_SUFFIXES:
            return da.from_array(hdf5_dataset(path, key), chunks="auto")
        if suffix in (".png", ".jpg", ".jpeg"):
            return _open_picture(path)
    except InputError:
        raise
    except Exception as err:  # any reader failure: say which file
        raise InputError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    raise InputError(
        f"{path}: unsupported format {suffix!r} (supported: tif, png, jpg, zarr, h5 with key, slice folder)"
    )


def zarr_array(path: Path, key: str | None) -> zarr.Array:
    """The array of a zarr input: itself, `key` in a group, or an OME-Zarr group's full resolution."""
    try:
        node = zarr.open(str(path), mode="r")
    except (ValueError, KeyError, TypeError) as err:  # zarr.json / .zarray cut short or not JSON
        raise InputError(f"{path}: corrupt zarr metadata ({type(err).__name__}: {err}); copy it again") from err
    if isinstance(node, zarr.Group):
        name = key or ome.level0_path(node)
        if name is None:
            raise InputError(f"{path}: a zarr group; say which array to read with `key` (has {list(node)})")
        if name not in node:
            raise InputError(f"{path}: no array {name!r} in this zarr group (has {list(node)})")
        node = node[name]
    if not isinstance(node, zarr.Array):
        raise InputError(f"{path}: {key!r} is a zarr group, not an array; name an array with `key`")
    return node


def hdf5_dataset(path: Path, key: str | None):
    """The dataset `key` of an HDF5 file (the file stays open for dask to read it)."""
    import h5py

    if key is None:
        raise InputError(f"{path}: an HDF5 file; say which dataset to read with `key`")
    try:
        f = h5py.File(path, "r")
    except OSError as err:  # h5py says `truncated file: eof = ...` or `file signature not found`
        raise InputError(f"{path}: truncated or corrupt HDF5, or no HDF5 file ({err}); copy it again") from err
    if key not in f:
        raise InputError(f"{path}: no dataset {key!r} (has {list(f)})")
    if not isinstance(f[key], h5py.Dataset):
        raise InputError(f"{path}: {key!r} is an HDF5 group, not a dataset (has {list(f[key])})")
    return f[key]


# Pillow modes read as they are (shape after (Y, X), dtype); others (palette, CMYK...) are read to know
_PICTURE_MODES = {
    "L": ((), np.uint8),
    "LA": ((2,), np.uint8),
    "RGB": ((3,), np.uint8),
    "RGBA": ((4,), np.uint8),
    "I;16": ((), np.uint16),
    "I": ((), np.int32),
    "F": ((), np.float32),
}


def _open_picture(path: Path) -> da.Array:
    """A PNG or JPEG as a dask array: shape and dtype from its header, pixels decoded when computed."""
    import dask.array as da
    from PIL import Image

    with Image.open(path) as picture:  # reads the header only
        mode, (width, height) = picture.mode, picture.size
    if mode not in _PICTURE_MODES:
        return da.from_array(_read_picture(path, None, None))
    extra, dtype = _PICTURE_MODES[mode]
    shape = (height, width, *extra)
    import dask

    return da.from_delayed(dask.delayed(_read_picture)(path, shape, np.dtype(dtype)), shape, dtype)


def _read_picture(path: Path, shape: tuple[int, ...] | None, dtype: np.dtype | None) -> np.ndarray:
    from skimage import io as skio

    try:
        pixels = skio.imread(path)
    except Exception as err:  # cut short or corrupt data behind a good header: say which file
        raise InputError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    if shape is not None and (pixels.shape != shape or pixels.dtype != dtype):
        raise InputError(f"{path}: decoded as {pixels.shape} {pixels.dtype}, its header says {shape} {dtype}")
    return pixels


class _Mapped:
    """A memory-mapped file as dask reads it: mapped afresh for each chunk and unmapped after.

    A numpy memmap given to dask would be copied whole, and one long-lived map would keep
    every page read in this process's resident memory; this holds one chunk at a time.
    """

    def __init__(self, mapped: np.memmap):
        self.path, self.offset, self.shape, self.dtype = mapped.filename, mapped.offset, mapped.shape, mapped.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index) -> np.ndarray:
        return np.array(np.memmap(self.path, self.dtype, "r", self.offset, self.shape)[index])


def _open_slices(folder: Path) -> da.Array:
    """A folder of 2D slices, sorted by name, as one volume."""
    import dask.array as da

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: a folder without image slices ({', '.join(SLICE_SUFFIXES)})")
    first = open_lazy(files[0])
    slices = []
    for f in files:
        arr = open_lazy(f)
        if arr.shape != first.shape or arr.dtype != first.dtype:
            raise InputError(
                f"{f}: slice {arr.shape} {arr.dtype} differs from {files[0].name} {first.shape} {first.dtype}"
            )
        slices.append(arr)
    return da.stack(slices)


def to_canonical(arr: da.Array, ndim: int, path: str | Path) -> tuple[da.Array, int]:
    """Bring an array to tilesam's layout: (Y, X), (Z, Y, X), or channels first (C, ...).

    Accepts channels last (RGB/RGBA, as TIFF and PNG store them) or first;
    alpha is dropped. Returns the array and its number of channels.
    """
    import dask.array as da

    if arr.dtype.kind not in "uif":
        raise InputError(f"{path}: unsupported dtype {arr.dtype} (use uint8, uint16, other ints or float)")
    shape = arr.shape
    if arr.ndim == ndim:
        return arr, 1
    if arr.ndim == ndim + 1:
        if shape[-1] in (3, 4):
            arr = da.moveaxis(arr[..., :3], -1, 0)
            return arr, 3
        if shape[0] in (3, 4):
            _refuse_page_stack(path, shape[0])
            return arr[:3], 3
        if shape[0] == 1:
            return arr[0], 1
        if shape[-1] == 1:
            return arr[..., 0], 1
    what = "2D image (Y,X) or RGB (Y,X,3)" if ndim == 2 else "3D volume (Z,Y,X) or RGB volume (Z,Y,X,3)"
    raise InputError(f"{path}: shape {shape} is not a {what}; check the dataset's `ndim`")


def _refuse_page_stack(path: str | Path, n: int) -> None:
    """A TIFF of 3 or 4 grayscale pages read as a 2D image: RGB only where its metadata says channels.

    Without that, a short stack of sections would lose its fourth and be segmented as a colour image.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page, axes = tif.pages[0], tif.series[0].axes if tif.series else ""
        if page.samplesperpixel > 1 or str(page.photometric.name) == "RGB" or axes[:1] in ("C", "S"):
            return
    raise InputError(
        f"{path}: {n} grayscale pages, read as a 2D image (the dataset's `ndim` is 2, the default): "
        f"a volume of {n} sections or a {n}-channel image? Set `ndim: 3` for a volume; for colour, "
        "save it as an RGB TIFF (photometric rgb)"
    )


def _signature(arr: zarr.Array, n_samples: int = 8) -> str:
    """A cheap fingerprint of an array: shape, dtype and a hash of a few evenly spread chunks."""
    h = hashlib.sha256(json.dumps([list(arr.shape), str(arr.dtype), list(arr.chunks)]).encode())
    grid = [int(np.ceil(s / c)) for s, c in zip(arr.shape, arr.chunks)]
    n_chunks = int(np.prod(grid))
    for flat in np.unique(np.linspace(0, n_chunks - 1, min(n_samples, n_chunks)).astype(int)):
        idx = np.unravel_index(flat, grid)
        sl = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, arr.chunks, arr.shape))
        h.update(np.ascontiguousarray(arr[sl]).tobytes())
    return h.hexdigest()[:32]


def import_image(
    src: str | Path, dst: str | Path, *, ndim: int, tile_shape: tuple[int, int], key: str | None = None
) -> ImageInfo:
    """Write an input as OME-Zarr chunked to the tile grid, checking values on the way.

    NaN or infinite values are an error (naming the file). The intensity range
    (min, max over the whole image) is recorded so that every tile is
    normalised the same way wherever it is embedded.
    """
    import dask.array as da

    arr, channels = to_canonical(open_lazy(src, key), ndim, src)
    spatial = arr.shape[1:] if channels > 1 else arr.shape
    chunks = (1,) * (len(spatial) - 2) + tuple(min(t, s) for t, s in zip(tile_shape, spatial[-2:]))
    if channels > 1:
        chunks = (channels, *chunks)
    arr = arr.rechunk(chunks)
    lo, hi, n_bad = da.compute(arr.min(), arr.max(), (~da.isfinite(arr)).sum() if arr.dtype.kind == "f" else 0)
    if n_bad:
        raise InputError(f"{src}: {int(n_bad)} NaN or infinite values; fill or mask them before segmenting")
    warnings = ()
    if lo == hi:  # nothing to segment: every tile normalises to one grey
        warnings = (f"constant image (every pixel {lo:g}): nothing to segment in it",)
        log.warning("%s: %s", src, warnings[0])
    out = ome.create(dst, arr.shape, arr.dtype, chunks, channels=channels > 1, compressors=IMAGE_COMPRESSORS)
    da.store(arr, out, lock=False)
    info = ImageInfo(
        source=str(src),
        shape=tuple(int(s) for s in spatial),
        dtype=str(arr.dtype),
        channels=channels,
        intensity_range=(float(lo), float(hi)),
        signature=_signature(out),
        warnings=warnings,
    )
    zarr.open_group(str(dst), mode="a").attrs.update(info.to_attrs())
    ome.build_pyramid(dst, labels=False, channels=channels > 1)
    return info


def import_labels(src: str | Path, dst: str | Path, *, image: str | Path, key: str | None = None) -> None:
    """Write ground-truth labels as OME-Zarr next to their imported image.

    The labels must have the image's spatial shape and an integer dtype; a
    mismatch is an error that names both files. They are stored as uint32, or
    uint64 where an id needs it.
    """
    import dask.array as da

    info = read_info(image)
    arr = open_lazy(src, key)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{src}: labels must be integers, got {arr.dtype}")
    if tuple(arr.shape) != info.shape:
        raise InputError(
            f"{src}: labels of shape {tuple(arr.shape)} do not match image {info.source} of shape {info.shape}"
        )
    low, high = (int(v) for v in da.compute(arr.min(), arr.max())) if arr.size else (0, 0)
    if low < 0:
        raise InputError(f"{src}: labels have negative values ({low}); ids must be >= 0, with 0 the background")
    dtype = np.uint32 if high < 2**32 else np.uint64  # ids keep their values: a cast would merge objects
    chunks = zarr.open_array(str(Path(image) / "0"), mode="r").chunks
    chunks = chunks[1:] if info.channels > 1 else chunks
    attrs = {"labels_source": str(src), "notes": list(info.warnings)}
    out = ome.create(dst, arr.shape, dtype, chunks, attrs={"tilesam": attrs})
    da.store(arr.rechunk(chunks).astype(dtype), out, lock=False)
    ome.build_pyramid(dst, labels=True, image=image)


def labels_record(labels: str | Path) -> dict:
    """What an evaluation record takes from its imported ground truth: the labels file and the notes for
    the table (the image's import warnings). Labels imported before these were recorded give the file only."""
    attrs = dict(zarr.open_group(str(labels), mode="r").attrs).get("tilesam", {})
    record = {"labels_source": attrs.get("labels_source", str(labels))}
    if attrs.get("notes"):
        record["notes"] = list(attrs["notes"])
    return record


def read_info(path: str | Path) -> ImageInfo:
    """The ImageInfo that import_image stored with an imported image."""
    attrs = zarr.open_group(str(path), mode="r").attrs
    if "tilesam" not in attrs:
        raise InputError(f"{path}: not an image imported by tilesam (no tilesam metadata)")
    return ImageInfo.from_attrs(dict(attrs))


def read_window(image: zarr.Array, index: tuple[slice, ...], channels: int) -> np.ndarray:
    """Pixels of a window of an imported image as (H, W) or (H, W, C)."""
    if channels > 1:
        return np.moveaxis(image[(slice(None), *index)], 0, -1)
    return image[index]
