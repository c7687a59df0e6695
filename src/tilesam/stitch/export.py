"""Exports of a label image for tools that do not read OME-Zarr: a tiled (Big)TIFF and a per-instance table.

Both read the label array chunk by chunk, so images larger than memory export too.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr

from tilesam.data import ome
from tilesam.stitch.chunks import Slices, chunk_regions, resolve_workers, thread_map

__all__ = ["export_labels", "export_tif", "instance_table"]


def export_labels(
    labels_store: str | Path, out: str | Path, *, table: str | Path | None = None, force: bool = False
) -> Path:
    """Write the full-resolution labels of an OME-Zarr label image as a TIFF (and the instance table as CSV).

    BigTIFF is chosen by size, as `export_tif` does; the table has one row per instance (`instance_table`).
    An existing TIFF or table is an error unless `force` (one typo must not replace a raw image); both are
    checked before either is written.
    """
    existing = [str(p) for p in (out, table) if p is not None and Path(p).exists()]
    if existing and not force:
        raise FileExistsError(f"{' and '.join(existing)} already exist(s); not overwritten (use --force to replace)")
    labels = ome.open_level0(labels_store)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    path = export_tif(labels, out)
    if table is not None:
        Path(table).parent.mkdir(parents=True, exist_ok=True)
        instance_table(labels).to_csv(table, index=False)
    return path


def export_tif(
    labels: zarr.Array,
    path: str | Path,
    *,
    tile: tuple[int, int] = (256, 256),
    compression: str | None = "zlib",
    bigtiff: bool | None = None,
) -> Path:
    """Write a label image (2D) or volume (one page per section) as a tiled TIFF.

    Reads one band of about a chunk's height and the full width at a time, so
    memory stays bounded. BigTIFF is used for arrays over 2 GiB unless told.
    """
    if labels.ndim not in (2, 3):
        raise ValueError(f"export_tif writes 2D or 3D label arrays, got shape {labels.shape}")
    if len(tile) != 2 or any(t <= 0 or t % 16 for t in tile):
        raise ValueError(f"TIFF tiles must be positive multiples of 16, got {tile}")
    path = Path(path)
    bigtiff = labels.nbytes > 2**31 if bigtiff is None else bigtiff
    height, width = labels.shape[-2:]
    th, tw = tile
    band = th * -(-labels.chunks[-2] // th)  # a multiple of the tile height, at least one chunk

    def tiles() -> Iterator[np.ndarray]:
        for z in range(labels.shape[0] if labels.ndim == 3 else 1):
            for y0 in range(0, height, band):
                rows = slice(y0, min(y0 + band, height))
                block = labels[z, rows, :] if labels.ndim == 3 else labels[rows, :]
                for ty in range(0, block.shape[0], th):
                    for tx in range(0, width, tw):
                        yield block[ty : ty + th, tx : tx + tw]

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        tif.write(
            tiles(),
            shape=tuple(labels.shape),
            dtype=labels.dtype,
            tile=tuple(tile),
            compression=compression,
            photometric="minisblack",
        )
    return path


def _chunk_stats(labels: zarr.Array, axes: str, region: Slices) -> pd.DataFrame:
    """Per-id pixel count, coordinate sums, minima and maxima within one chunk."""
    block = labels[region]
    flat = block.ravel()
    where = np.flatnonzero(flat)
    columns = ["id", "n"] + [f"{s}_{ax}" for s in ("sum", "min", "max") for ax in axes]
    if where.size == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in columns})
    ids = flat[where]
    order = np.argsort(ids, kind="stable")
    ids, where = ids[order], where[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    stats = {"id": ids[starts].astype(np.int64), "n": np.diff(np.r_[starts, ids.size])}
    for ax, coord, origin in zip(axes, np.unravel_index(where, block.shape), region):
        coord = coord.astype(np.int64) + origin.start
        stats[f"sum_{ax}"] = np.add.reduceat(coord, starts)
        stats[f"min_{ax}"] = np.minimum.reduceat(coord, starts)
        stats[f"max_{ax}"] = np.maximum.reduceat(coord, starts)
    return pd.DataFrame(stats, columns=columns)


def instance_table(labels: zarr.Array, *, workers: int | None = None) -> pd.DataFrame:
    """One row per instance: id, area (2D) or volume (3D), centroid and bounding box.

    Computed chunk by chunk from per-chunk sums, minima and maxima, never from
    the whole image. Bounding boxes are half-open: bbox_y0 <= y < bbox_y1.
    """
    if labels.ndim not in (2, 3):
        raise ValueError(f"instance_table reads 2D or 3D label arrays, got shape {labels.shape}")
    axes = "zyx"[-labels.ndim :]
    with thread_map(resolve_workers(workers)) as mapper:
        parts = list(mapper(partial(_chunk_stats, labels, axes), chunk_regions(labels.shape, labels.chunks)))
    how = {"n": "sum"} | {f"{s}_{ax}": s for s in ("sum", "min", "max") for ax in axes}
    stats = pd.concat(parts, ignore_index=True).groupby("id", sort=True).agg(how)
    n = stats["n"].to_numpy(np.int64)
    columns = {"id": stats.index.to_numpy(np.int64), "area" if labels.ndim == 2 else "volume": n}
    columns |= {f"centroid_{ax}": stats[f"sum_{ax}"].to_numpy() / n for ax in axes}
    columns |= {f"bbox_{ax}0": stats[f"min_{ax}"].to_numpy(np.int64) for ax in axes}
    columns |= {f"bbox_{ax}1": stats[f"max_{ax}"].to_numpy(np.int64) + 1 for ax in axes}
    return pd.DataFrame(columns)
