"""Planning's checks of input files from their headers and metadata, never their pixels.

A copy cut short (a full disk, an interrupted transfer) keeps a header that opens and has a shape;
only its data ends early. Each format's structure is followed to its end here, so a truncated or
corrupt file fails when the workflow is planned, naming the file, rather than in its job hours
later. `probe` and `probe_labels` are what planning calls for each image and its labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from tilesam.data.io import (
    HDF5_SUFFIXES,
    SLICE_SUFFIXES,
    InputError,
    hdf5_dataset,
    is_zarr,
    open_lazy,
    to_canonical,
    zarr_array,
)


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
    """Check ground-truth labels from their header: integer dtype, the image's spatial shape, complete file.

    Labels of a signed dtype are read in their first chunk (one, bounded), so that negative ids, which
    the import job refuses, are found before any job runs; those in later chunks still fail that job.
    """
    check_file(path, key)
    arr = open_lazy(path, key)
    if arr.dtype.kind not in "iu":
        raise InputError(f"{path}: labels must be integers, got {arr.dtype}")
    if tuple(arr.shape) != tuple(image_shape):
        raise InputError(
            f"{path}: labels of shape {tuple(arr.shape)} do not match image {image} of shape {tuple(image_shape)}"
        )
    if arr.dtype.kind == "i" and arr.size:
        low = int(arr.blocks[(0,) * arr.ndim].min().compute())
        if low < 0:
            raise InputError(f"{path}: labels have negative values ({low}); ids must be >= 0, with 0 the background")


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
    if is_zarr(path):
        check_zarr(path, key)
    elif path.is_dir():  # a folder of slices: each one, like a single file
        for file in sorted(p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES):
            check_file(file)
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
    ds = hdf5_dataset(path, key)
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
    arr = zarr_array(path, key)
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
