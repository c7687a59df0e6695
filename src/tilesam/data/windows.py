"""Tile windows of an imported image, each chunk decoded once while the windows around it are read.

An imported image is chunked to the tile grid, so a window (tile plus halo) overlaps up to nine
chunks: read one window at a time, each chunk is decoded for each of the (up to nine) windows that
touch it. A block's tiles come in row-major order, so keeping the last few rows of decoded chunks
decodes each about once.

Chunks of a plain local zarr v3 array (what `io.import_image` writes) are read and decoded here,
not through zarr's indexing: that costs about 1 ms of CPU a call on this project's machines
(its async machinery), against 0.2 ms to read and decode a 512 x 512 uint16 blosc chunk, and a
window reader calls it for every chunk of a block (`benchmarks/gpu_check.py`'s supply).
Anything else (sharding, filters, checksums, zarr v2, other stores) is read by zarr.
"""

from __future__ import annotations

import itertools
import sys
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numcodecs
import numpy as np
import zarr

__all__ = ["CACHE_BYTES", "WindowReader", "chunk_decoder"]

CACHE_BYTES = 128 * 2**20
"""Decoded chunks kept by a reader: three chunk rows of a 16384-pixel-wide uint16 image of 512-pixel chunks."""


def chunk_decoder(image: zarr.Array) -> Callable[[tuple[int, ...]], np.ndarray] | None:
    """``decode(key)``: chunk ``key`` of a plain local zarr v3 array, cut to the array's extent; None
    where zarr must read it (anything but a local store, a regular grid, native-endian bytes and at
    most one blosc or zstd compressor). A missing chunk is its fill value, as zarr reads it; a chunk
    that does not decode to its size is an error naming its file."""
    meta = image.metadata
    if meta.zarr_format != 3 or not isinstance(image.store, zarr.storage.LocalStore):
        return None
    if not isinstance(meta.chunk_grid, zarr.core.chunk_grids.RegularChunkGrid):
        return None
    bytes_codec, *compressors = meta.codecs
    endian = getattr(bytes_codec, "endian", "missing")
    if not isinstance(bytes_codec, zarr.codecs.BytesCodec) or len(compressors) > 1:
        return None
    if endian is not None and endian.value != sys.byteorder:
        return None
    if compressors and isinstance(compressors[0], zarr.codecs.BloscCodec):
        decompress = numcodecs.blosc.decompress
    elif compressors and isinstance(compressors[0], zarr.codecs.ZstdCodec):
        decompress = numcodecs.Zstd().decode
    elif compressors:
        return None
    else:
        decompress = bytes
    root, dtype, chunks = Path(image.store.root) / image.path, image.dtype, tuple(image.chunks)
    fill = np.full(chunks, meta.fill_value, dtype)
    fill.flags.writeable = False

    def decode(key: tuple[int, ...]) -> np.ndarray:
        path = root / meta.encode_chunk_key(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            block = fill
        else:
            try:
                block = np.frombuffer(decompress(data), dtype).reshape(chunks)
            except (RuntimeError, ValueError) as err:
                raise ValueError(f"{path}: a chunk of {root} that does not decode to {chunks} {dtype}: {err}") from err
        cut = tuple(slice(0, min(c, s - k * c)) for k, c, s in zip(key, chunks, image.shape))
        return block[cut]

    return decode


class WindowReader:
    """``reader(index)`` is ``io.read_window(image, index, channels)``, from decoded chunks kept in memory.

    Not thread-safe: one reader per thread. ``max_bytes`` bounds the kept chunks (least recently used
    go first); ``decoded`` counts the chunks decoded so far. An elementwise ``transform`` (such as
    `tilesam.embed.levels`) is applied to each chunk as it is decoded, so each pixel goes through
    it once, not once for every window around it, and the kept chunks are its (smaller) output.
    """

    def __init__(
        self,
        image: zarr.Array,
        channels: int,
        max_bytes: int = CACHE_BYTES,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.image, self.channels, self.max_bytes, self.transform = image, channels, max_bytes, transform
        self.decode = chunk_decoder(image)
        self.kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self.kept_bytes = 0
        self.decoded = 0

    def _chunk(self, key: tuple[int, ...]) -> np.ndarray:
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        if self.decode is not None:
            block = self.decode(key)
        else:
            index = tuple(
                slice(k * c, min((k + 1) * c, s)) for k, c, s in zip(key, self.image.chunks, self.image.shape)
            )
            block = self.image[index]
        if self.transform is not None:
            block = self.transform(block)
        self.decoded += 1
        self.kept[key] = block
        self.kept_bytes += block.nbytes
        while self.kept_bytes > self.max_bytes and len(self.kept) > 1:
            self.kept_bytes -= self.kept.popitem(last=False)[1].nbytes
        return block

    def __call__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        full = (slice(None), *index) if self.channels > 1 else tuple(index)
        if len(full) != self.image.ndim:
            raise IndexError(f"window index {index} does not fit an image of shape {self.image.shape}")
        ranges, picks = [], []
        for i, size in zip(full, self.image.shape):
            if isinstance(i, slice):
                start, stop, step = i.indices(size)
                if step != 1 or stop <= start:
                    raise IndexError(f"window index {index}: a non-empty slice with step 1 per axis")
                picks.append(slice(None))
            else:
                start = int(i) + size if int(i) < 0 else int(i)
                if not 0 <= start < size:
                    raise IndexError(f"window index {index} is outside an image of shape {self.image.shape}")
                stop = start + 1
                picks.append(0)
            ranges.append((start, stop))
        out = None
        chunks = self.image.chunks
        keys = itertools.product(*(range(a // c, (b - 1) // c + 1) for (a, b), c in zip(ranges, chunks)))
        for key in keys:
            block = self._chunk(key)
            if out is None:  # the transform's dtype
                out = np.empty([b - a for a, b in ranges], block.dtype)
            src, dst = [], []
            for (a, b), k, c in zip(ranges, key, chunks):
                lo, hi = max(a, k * c), min(b, (k + 1) * c)
                src.append(slice(lo - k * c, hi - k * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = block[tuple(src)]
        out = out[tuple(picks)]
        return np.moveaxis(out, 0, -1) if self.channels > 1 else out
