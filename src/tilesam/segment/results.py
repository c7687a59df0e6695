"""What a block store of per-tile labels holds, read without torch or SAM.

The stitch and evaluate jobs only read block stores; keeping these readers out of
`tilesam.segment.blocks` (which imports torch and segment_anything) saves each such job the
seconds those imports cost (measured on a loaded 2-core machine, `tilesam stitch` of a one-tile
image: 20 s and 888 MB with them, 6 s and 156 MB without).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from tilesam.data import stores
from tilesam.tiling import Tile, TileGrid

#: what a tile's row of an APG block store's `stage_seconds` holds
APG_STAGES = ("maps", "prompts_masks", "nms")


def params_column(segmentation: dict) -> dict:
    """What the table's `params` column shows for a block store's segmentation record (with `auto`: which
    method it chose and the validation mSA of each, first)."""
    chosen = {"auto": segmentation["auto"]} if "auto" in segmentation else {}
    if segmentation.get("method") in ("ais", "apg"):
        return {**chosen, **segmentation["params"], "decoder": (segmentation.get("decoder") or {}).get("sha256")}
    extra = {k: segmentation[k] for k in ("prompt", "box_sizes") if k in segmentation}  # AMG's prompt grid
    return {**segmentation["params"], **extra}


def costs(block_stores: list[str | Path]) -> dict:
    """Cost columns of one image from the seconds its blocks' stores record for every tile.

    Per-tile seconds are kept across an interrupted job, so a resumed run reports what an
    uninterrupted one does. Tiles without a record (stores written before tiles were timed)
    count at the mean of the timed ones; `timed_tiles` says how many were timed. APG stores also
    give the mean seconds a tile of each stage (`<stage>_s_per_tile`: maps, prompts_masks, nms).
    """
    encoder, segment, stats, stages = [], [], [], []
    for path in block_stores:
        root = zarr.open_group(str(path), mode="r")
        s = dict(root.attrs["stats"])
        stats.append(s)
        seconds = stores.tile_seconds(root)
        if seconds is None:  # a store from before per-tile seconds: its last job's total over its tiles
            seconds = [s["segment_seconds"] / max(s["computed"], 1)] * s["computed"]
            seconds += [np.nan] * (s["tiles"] - s["computed"])
        segment.extend(seconds)
        if "stage_seconds" in root:
            stages.append(root["stage_seconds"][:])
        tile_enc = s.get("encoder_tile_seconds") or [(s.get("encoder_seconds") or np.nan) / s["tiles"]] * s["tiles"]
        encoder.extend(np.nan if x is None else x for x in tile_enc)
    encoder, segment = np.asarray(encoder, float), np.asarray(segment, float)
    per_stage = {}
    if stages:
        table = np.concatenate(stages)
        per_stage = {f"{name}_s_per_tile": _mean(table[:, k]) for k, name in enumerate(APG_STAGES)}
    return {
        "encoder_s_per_tile": _mean(encoder),
        "segment_s_per_image": _mean(segment) * len(segment),
        "peak_mem_mb": max(s["peak_mem_mb"] for s in stats),
        "device": stats[0]["device"],
        "n_tiles": len(segment),
        "timed_tiles": int((np.isfinite(encoder) & np.isfinite(segment)).sum()),
        **per_stage,
    }


def _mean(x: np.ndarray) -> float:
    """Mean of the known (finite) values; NaN when none is known."""
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def tile_reader(block_stores: list[str | Path], grid: TileGrid, tiles_per_block: int):
    """A function tile -> window labels, reading from the block stores of one image."""
    roots = [None] * len(block_stores)

    def read(tile: Tile) -> np.ndarray:
        b, i = divmod(tile.id, tiles_per_block)
        if roots[b] is None:
            roots[b] = zarr.open_group(str(block_stores[b]), mode="r")
        return roots[b][f"t{i}"][...]

    return read
