"""Reading microscopy inputs lazily and importing them into OME-Zarr.

Every supported input (TIFF incl. multi-page/OME-TIFF, PNG/JPEG, zarr and
OME-Zarr, HDF5 with a key, a folder of 2D slices) is opened as a dask array
without reading it, then written chunk by chunk into an OME-Zarr chunked to the
tile grid. Bad input fails here, early, with the file named: wrong
dimensionality, unsupported dtype, NaN values, labels that do not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import zarr

from tilesam.data import ome

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf")
SLICE_SUFFIXES = (".tif", ".tiff", ".png")
MAPPED_CHUNK_BYTES = 32 * 2**20  # dask chunks of memory-mapped inputs


class InputError(ValueError):
    """An input file that tilesam cannot use; the message names the file and the problem."""


@dataclass(frozen=True)
class ImageInfo:
    """What import made of an input: spatial shape, dtype, channels, intensity range."""

    source: str
    shape: tuple[int, ...]  # spatial: (Y, X) or (Z, Y, X)
    dtype: str
    channels: int  # 1 for grayscale, 3 for RGB
    intensity_range: tuple[float, float]
    signature: str

    def to_attrs(self) -> dict:
        return {"tilesam": {"image": asdict(self)}}

    @classmethod
    def from_attrs(cls, attrs: dict) -> ImageInfo:
        d = dict(attrs["tilesam"]["image"])
        d["shape"] = tuple(d["shape"])
        d["intensity_range"] = tuple(d["intensity_range"])
        return cls(**d)


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zarray"))


def open_lazy(path: str | Path, key: str | None = None) -> da.Array:
    """Open any supported input as a dask array without reading its pixels."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    try:
        if _is_zarr(path):
            return da.from_zarr(_zarr_array(path, key))
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
            return da.from_array(_hdf5_dataset(path, key), chunks="auto")
        if suffix in (".png", ".jpg", ".jpeg"):
            return _open_picture(path)
    except InputError:
        raise
    except Exception as err:  # any reader failure: say which file
        raise InputError(f"{path}: cannot be read ({type(err).__name__}: {err})") from err
    raise InputError(
        f"{path}: unsupported format {suffix!r} (supported: tif, png, jpg, zarr, h5 with key, slice folder)"
    )


def _zarr_array(path: Path, key: str | None) -> zarr.Array:
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


def _hdf5_dataset(path: Path, key: str | None):
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
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise InputError(f"{folder}: a folder without image slices ({', '.join(SLICE_SUFFIXES)})")
    first = open_lazy(files[0])
    slices = []
    for f in files:
        check_file(f)  # a slice cut short: found from its header, like a single file
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
            return arr[:3], 3
        if shape[0] == 1:
            return arr[0], 1
        if shape[-1] == 1:
            return arr[..., 0], 1
    what = "2D image (Y,X) or RGB (Y,X,3)" if ndim == 2 else "3D volume (Z,Y,X) or RGB volume (Z,Y,X,3)"
    raise InputError(f"{path}: shape {shape} is not a {what}; check the dataset's `ndim`")


def probe(path: str | Path, ndim: int, key: str | None = None) -> tuple[int, ...]:
    """The spatial shape of an input, read from its header only (used to plan jobs).

    The file is checked to hold all its data (`check_file`: a TIFF's pages, a PNG's chunks, a zarr
    array's chunk files...), so a truncated file fails here, at planning, rather than in its import
    job hours later.
    """
    check_file(path, key)
    arr, channels = to_canonical(open_lazy(path, key), ndim, path)
    return tuple(arr.shape[1:] if channels > 1 else arr.shape)


def probe_labels(path: str | Path, image_shape: tuple[int, ...], image: str | Path, key: str | None = None) -> None:
    """Check ground-truth labels from their header: integer dtype, the image's spatial shape, complete file."""
    check_file(path, key)
    arr = open_lazy(path, key)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be integers, got {arr.dtype}")
    if tuple(arr.shape) != tuple(image_shape):
        raise InputError(
            f"{path}: labels of shape {tuple(arr.shape)} do not match image {image} of shape {tuple(image_shape)}"
        )


def check_tiff(path: str | Path) -> None:
    """For a TIFF file: every page's strips or tiles lie inside the file (header reads, no pixels).

    A copy cut short (a full disk, an interrupted transfer) keeps its header, so it opens and
    has a shape; only its pixel data ends early. Other files pass unchecked.
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff") or not path.is_file():
        return
    import tifffile

    errors = _Collect()  # tifffile logs (does not raise) a page chain that points past the end of the file
    logging.getLogger("tifffile").addHandler(errors)
    try:
        size = path.stat().st_size
        with tifffile.TiffFile(path) as tif:
            for n, page in enumerate(tif.pages):
                offsets, counts = page.dataoffsets, page.databytecounts
                end = max((o + c for o, c in zip(offsets, counts)), default=0)
                if end > size:
                    raise InputError(
                        f"{path}: truncated or corrupt TIFF: page {n}'s pixel data ends at byte {end}, "
                        f"the file has {size} bytes; copy it again"
                    )
            if errors.messages:
                raise InputError(
                    f"{path}: truncated or corrupt TIFF: {errors.messages[0]} (the file has {size} bytes, "
                    f"{len(tif.pages)} readable pages); copy it again"
                )
    except InputError:
        raise
    except Exception as err:  # not a TIFF, a broken header, unreadable: say which file
        raise InputError(f"{path}: cannot be read as TIFF ({type(err).__name__}: {err})") from err
    finally:
        logging.getLogger("tifffile").removeHandler(errors)


def check_file(path: str | Path, key: str | None = None) -> None:
    """A truncated or corrupt input found from its headers and metadata, not its pixels (planning's check).

    A copy cut short keeps a header that opens and has a shape; only its data ends early, so each
    format's structure is followed to its end: a TIFF's strips or tiles (`check_tiff`), a PNG's
    chunks to `IEND`, a JPEG's segments to its end-of-image marker, an HDF5 file's recorded end and
    its dataset's storage, a zarr array's chunk files (their sizes, and the sizes that their
    compressors' frame headers give). The error names the file and what is wrong.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if _is_zarr(path):
        check_zarr(path, key)
    elif not path.is_file():
        return
    elif suffix in (".tif", ".tiff"):
        check_tiff(path)
    elif suffix == ".png":
        check_png(path)
    elif suffix in (".jpg", ".jpeg"):
        check_jpeg(path)
    elif suffix in HDF5_SUFFIXES and key is not None:
        check_hdf5(path, key)


def _truncated(path: Path, what: str, fault: str) -> InputError:
    return InputError(
        f"{path}: truncated or corrupt {what}: {fault} (the file has {path.stat().st_size} bytes); copy it again"
    )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(path: str | Path) -> None:
    """A PNG's chunks, followed by their lengths (8 bytes read per chunk) to `IEND` inside the file."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(8) != PNG_SIGNATURE:
            raise InputError(f"{path}: not a PNG file (no PNG signature); check the file or its name")
        at, first = 8, True
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise _truncated(path, "PNG", f"it ends at byte {size} without an IEND chunk")
            length, kind = int.from_bytes(head[:4], "big"), head[4:]
            if first and kind != b"IHDR":
                raise _truncated(path, "PNG", f"its first chunk is {kind!r}, not IHDR")
            end = at + 12 + length  # length, type, data, crc
            if end > size:
                raise _truncated(path, "PNG", f"chunk {kind.decode('latin-1')!r} at byte {at} ends at byte {end}")
            if kind == b"IEND":
                return
            f.seek(end)
            at, first = end, False


def check_jpeg(path: str | Path) -> None:
    """A JPEG's header segments, followed by their lengths to the scan, and its end-of-image marker."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            raise InputError(f"{path}: not a JPEG file (no start-of-image marker); check the file or its name")
        at = 2
        while True:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0xFF:
                raise _truncated(path, "JPEG", f"no segment marker at byte {at}")
            marker, length = head[1], int.from_bytes(head[2:], "big")
            if at + 2 + length > size:
                raise _truncated(path, "JPEG", f"segment 0xFF{marker:02X} at byte {at} ends at byte {at + 2 + length}")
            if marker == 0xDA:  # start of scan: entropy-coded data follows, up to the end-of-image marker
                break
            at += 2 + length
            f.seek(at)
        scan = at + 2 + length
        tail = max(scan, size - 4096)  # the marker ends the file (some writers pad it with a few bytes)
        f.seek(tail)
        if b"\xff\xd9" not in f.read():
            raise _truncated(path, "JPEG", "it has no end-of-image marker after its image data")


def check_hdf5(path: str | Path, key: str) -> None:
    """An HDF5 file's recorded end (h5py checks it on opening) and where its dataset's data lies."""
    path = Path(path)
    ds = _hdf5_dataset(path, key)
    size = path.stat().st_size
    try:
        end = 0
        if ds.chunks is None:
            offset = ds.id.get_offset()
            if offset is not None:  # None: never written, read as fill values
                end = offset + ds.id.get_storage_size()
        elif hasattr(ds.id, "chunk_iter"):

            def visit(info) -> None:
                nonlocal end
                end = max(end, info.byte_offset + info.size)

            ds.id.chunk_iter(visit)
    finally:
        ds.file.close()
    if end > size:
        raise _truncated(path, "HDF5", f"dataset {key!r} has data up to byte {end}")


def check_zarr(path: str | Path, key: str | None = None) -> None:
    """A zarr array's chunk files, from their sizes and the headers of their compression frames.

    Checked where the format tells a chunk's size: uncompressed chunks (the chunk's bytes), blosc
    (its header's compressed size), zstd (its frame's blocks, followed to the last), gzip (its
    trailer's length), and a shard's index (its chunks inside the shard). A chunk file that is
    missing is no error: zarr reads it as fill values. Other compressors are not checked here.
    """
    path = Path(path)
    arr = _zarr_array(path, key)
    folder = path / arr.path if arr.path else path
    meta = arr.metadata
    itemsize = np.dtype(arr.dtype).itemsize
    if meta.zarr_format == 2:
        layout, compressors = ("chunk", [meta.compressor] if meta.compressor else [])
        filtered = bool(meta.filters)
        files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    else:
        codecs = list(meta.codecs)
        sharding = next((c for c in codecs if type(c).__name__ == "ShardingCodec"), None)
        layout = "shard" if sharding is not None else "chunk"
        # bytes -> bytes codecs; a transpose keeps the bytes' count
        compressors = [c for c in codecs if type(c).__name__ not in ("BytesCodec", "ShardingCodec", "TransposeCodec")]
        filtered = False
        files = [p for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"]
    nbytes = int(np.prod(arr.chunks)) * itemsize
    if layout == "shard":
        n_inner = int(np.prod([s // c for s, c in zip(arr.shards, sharding.chunk_shape)]))
        index_bytes = 16 * n_inner + (4 if any(type(c).__name__ == "Crc32cCodec" for c in sharding.index_codecs) else 0)
        at_end = str(getattr(sharding.index_location, "value", sharding.index_location)) == "end"
        for file in files:
            _check_shard(path, file, n_inner, index_bytes, at_end)
        return
    if len(compressors) > 1:
        return
    kind = type(compressors[0]).__name__.lower() if compressors else "none"
    for file in files:
        _check_chunk(path, file, kind, None if filtered else nbytes)


def _check_chunk(store: Path, file: Path, kind: str, nbytes: int | None) -> None:
    """One chunk file against what its compressor's header says (reads at most a few bytes per block)."""
    size = file.stat().st_size
    where = f"chunk {file.relative_to(store)}"
    fault = None
    with open(file, "rb") as f:
        if kind == "none":
            if nbytes is not None and size != nbytes:
                fault = f"{where} has {size} bytes, an uncompressed chunk has {nbytes}"
        elif "blosc" in kind:
            head = f.read(16)
            if len(head) < 16:
                fault = f"{where} has {size} bytes, less than a blosc header"
            elif int.from_bytes(head[12:16], "little") != size:
                fault = f"{where} has {size} bytes, its blosc header says {int.from_bytes(head[12:16], 'little')}"
        elif "zstd" in kind:
            fault = _zstd_fault(f, size)
            fault = fault and f"{where}: {fault}"
        elif "gzip" in kind and nbytes is not None:
            f.seek(max(size - 4, 0))
            length = int.from_bytes(f.read(4), "little")
            if size < 18 or length != nbytes % 2**32:
                fault = f"{where} ends in a gzip length of {length}, the chunk has {nbytes} bytes"
    if fault:
        raise InputError(f"{store}: truncated or corrupt zarr array: {fault}; copy it again")


def _zstd_fault(f, size: int) -> str | None:
    """Where a zstd frame's blocks, followed by their headers, end past the file; None when inside."""
    head = f.read(6)
    if len(head) < 5 or head[:4] != b"\x28\xb5\x2f\xfd":
        return f"no zstd frame ({size} bytes)"
    descriptor = head[4]
    fcs_flag, single, checksum, dict_flag = (
        descriptor >> 6,
        (descriptor >> 5) & 1,
        (descriptor >> 2) & 1,
        descriptor & 3,
    )
    at = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag] + ((1 if single else 0), 2, 4, 8)[fcs_flag]
    while True:
        f.seek(at)
        block = f.read(3)
        if len(block) < 3:
            return f"its zstd frame ends at byte {size} before its last block"
        header = int.from_bytes(block, "little")
        last, kind, length = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            return f"a zstd block of a reserved type at byte {at}"
        at += 3 + (1 if kind == 1 else length)
        if at > size:
            return f"a zstd block ends at byte {at}, the file has {size} bytes"
        if last:
            break
    if at + 4 * checksum > size:
        return f"its zstd checksum is missing ({size} bytes)"
    return None


def _check_shard(store: Path, file: Path, n_inner: int, index_bytes: int, at_end: bool) -> None:
    """A shard's index (its last or first bytes): every chunk it lists lies inside the shard file."""
    size = file.stat().st_size
    fault = None
    if size < index_bytes:
        fault = f"has {size} bytes, less than its index's {index_bytes}"
    else:
        with open(file, "rb") as f:
            f.seek(size - index_bytes if at_end else 0)
            index = np.frombuffer(f.read(16 * n_inner), "<u8").reshape(n_inner, 2)
        used = index[~(index == 2**64 - 1).all(axis=1)]
        ends = used[:, 0].astype(object) + used[:, 1].astype(object)
        limit = size - index_bytes if at_end else size
        if len(used) and max(ends) > limit:
            fault = f"places a chunk up to byte {max(ends)} by its index, and has {limit} bytes of chunks"
    if fault:
        raise InputError(
            f"{store}: truncated or corrupt zarr array: shard {file.relative_to(store)} {fault}; copy it again"
        )


class _Collect(logging.Handler):
    """The messages of the errors logged while it is attached."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().split("> ", 1)[-1])


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
    arr, channels = to_canonical(open_lazy(src, key), ndim, src)
    spatial = arr.shape[1:] if channels > 1 else arr.shape
    chunks = (1,) * (len(spatial) - 2) + tuple(min(t, s) for t, s in zip(tile_shape, spatial[-2:]))
    if channels > 1:
        chunks = (channels, *chunks)
    arr = arr.rechunk(chunks)
    lo, hi, n_bad = da.compute(arr.min(), arr.max(), (~da.isfinite(arr)).sum() if arr.dtype.kind == "f" else 0)
    if n_bad:
        raise InputError(f"{src}: {int(n_bad)} NaN or infinite values; fill or mask them before segmenting")
    out = ome.create(dst, arr.shape, arr.dtype, chunks, channels=channels > 1)
    da.store(arr, out, lock=False)
    info = ImageInfo(
        source=str(src),
        shape=tuple(int(s) for s in spatial),
        dtype=str(arr.dtype),
        channels=channels,
        intensity_range=(float(lo), float(hi)),
        signature=_signature(out),
    )
    zarr.open_group(str(dst), mode="a").attrs.update(info.to_attrs())
    ome.build_pyramid(dst, labels=False, channels=channels > 1)
    return info


def import_labels(src: str | Path, dst: str | Path, *, image: str | Path, key: str | None = None) -> None:
    """Write ground-truth labels as OME-Zarr next to their imported image.

    The labels must have the image's spatial shape and an integer dtype; a
    mismatch is an error that names both files.
    """
    info = read_info(image)
    arr = open_lazy(src, key)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{src}: labels must be integers, got {arr.dtype}")
    if tuple(arr.shape) != info.shape:
        raise InputError(
            f"{src}: labels of shape {tuple(arr.shape)} do not match image {info.source} of shape {info.shape}"
        )
    if arr.dtype.kind == "i" and bool(da.compute((arr < 0).any())[0]):
        raise InputError(f"{src}: labels have negative values")
    chunks = zarr.open_array(str(Path(image) / "0"), mode="r").chunks
    chunks = chunks[1:] if info.channels > 1 else chunks
    out = ome.create(dst, arr.shape, np.uint32, chunks, attrs={"tilesam": {"labels_source": str(src)}})
    da.store(arr.rechunk(chunks).astype(np.uint32), out, lock=False)
    ome.build_pyramid(dst, labels=True, image=image)


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
