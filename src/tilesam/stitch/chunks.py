"""Chunk-wise access to zarr arrays, and the thread pool that stitching, linking and exports share."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import zarr

__all__ = ["Slices", "chunk_regions", "resolve_workers", "thread_map", "write_unit"]

Slices = tuple[slice, ...]


def resolve_workers(workers: int | None) -> int:
    """The thread count to use: as asked, or up to 4 (as many as there are cores)."""
    return max(1, workers if workers is not None else min(4, os.cpu_count() or 1))


@contextmanager
def thread_map(workers: int) -> Iterator[Callable]:
    """`map` on a thread pool (numpy and zarr release the GIL), or plain `map` for one worker."""
    if workers <= 1:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map


def chunk_regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[Slices]:
    """The index of every chunk of an array of this shape and chunking, in C order."""
    grids = np.meshgrid(*[np.arange(0, s, c) for s, c in zip(shape, chunks)], indexing="ij")
    starts = np.stack([g.ravel() for g in grids], axis=1) if grids else np.zeros((1, 0), int)
    return [tuple(slice(int(s), min(int(s) + c, n)) for s, c, n in zip(row, chunks, shape)) for row in starts]


def write_unit(arr: zarr.Array) -> tuple[int, ...]:
    """The block one write rewrites whole: the shard of a sharded array, else the chunk."""
    return tuple(getattr(arr, "shards", None) or arr.chunks)
