"""Tile windows of an imported image, each chunk decoded once while the windows around it are read.

An imported image is chunked to the tile grid, so a window (tile plus halo) overlaps up to nine
chunks: read one window at a time, each chunk is decoded for each of the (up to nine) windows that
touch it. A block's tiles come in row-major order, so keeping the last few rows of decoded chunks
decodes each about once.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict

import numpy as np
import zarr

__all__ = ["CACHE_BYTES", "WindowReader"]

CACHE_BYTES = 128 * 2**20
"""Decoded chunks kept by a reader: three chunk rows of a 16384-pixel-wide uint16 image of 512-pixel chunks."""


class WindowReader:
    """``reader(index)`` is ``io.read_window(image, index, channels)``, from decoded chunks kept in memory.

    Not thread-safe: one reader per thread. ``max_bytes`` bounds the kept chunks (least recently used
    go first); ``decoded`` counts the chunks decoded so far.
    """

    def __init__(self, image: zarr.Array, channels: int, max_bytes: int = CACHE_BYTES) -> None:
        self.image, self.channels, self.max_bytes = image, channels, max_bytes
        self.kept: OrderedDict[tuple[int, ...], np.ndarray] = OrderedDict()
        self.kept_bytes = 0
        self.decoded = 0

    def _chunk(self, key: tuple[int, ...]) -> np.ndarray:
        if key in self.kept:
            self.kept.move_to_end(key)
            return self.kept[key]
        index = tuple(slice(k * c, min((k + 1) * c, s)) for k, c, s in zip(key, self.image.chunks, self.image.shape))
        block = self.image[index]
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
        out = np.empty([b - a for a, b in ranges], self.image.dtype)
        chunks = self.image.chunks
        keys = itertools.product(*(range(a // c, (b - 1) // c + 1) for (a, b), c in zip(ranges, chunks)))
        for key in keys:
            block = self._chunk(key)
            src, dst = [], []
            for (a, b), k, c in zip(ranges, key, chunks):
                lo, hi = max(a, k * c), min(b, (k + 1) * c)
                src.append(slice(lo - k * c, hi - k * c))
                dst.append(slice(lo - a, hi - a))
            out[tuple(dst)] = block[tuple(src)]
        out = out[tuple(picks)]
        return np.moveaxis(out, 0, -1) if self.channels > 1 else out
