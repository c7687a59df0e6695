"""Automatic segmentation of the tiles of one block, from their stored embeddings.

Each tile's window (tile + halo) is segmented on its own; the per-tile label
images are what `tilesam.stitch.tiles` joins into one image. The encoder is never
run again here: the embeddings come from the block's embedding store.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import AmgParams
from tilesam.data import stores
from tilesam.embed import peak_mem_mb, read_embedding
from tilesam.segment.amg import generate_masks
from tilesam.segment.labels import masks_to_labels
from tilesam.tiling import Tile, TileGrid

METHODS = ("amg",)


@torch.no_grad()
def segment_block(
    model: Sam,
    embeddings: str | Path,
    embedding_provenance: dict,
    grid: TileGrid,
    out: str | Path,
    *,
    method: str = "amg",
    params: AmgParams | None = None,
) -> dict:
    """Segment every tile of a block into `<out>` (arrays `t<i>`: window-sized uint32 labels).

    `params.prompt: box` prompts a grid of boxes instead of points (`tilesam.segment.box_amg`),
    for models trained on box prompts only, such as LiteMedSAM.
    """
    if method not in METHODS:
        raise ValueError(f"unknown segmentation method {method!r}; known: {', '.join(METHODS)}")
    params = params or AmgParams()
    src = stores.open_done(embeddings, "embeddings", embedding_provenance)
    tiles = grid.block(embedding_provenance["block"], embedding_provenance["tiles_per_block"])
    provenance = {**embedding_provenance, "method": method, **_params_record(params)}
    root = stores.open_partial(out, "segmentation", provenance, len(tiles))
    done = root["done"][:]
    for i, tile in enumerate(tqdm(tiles, desc=f"{method} block {provenance['block']}")):
        if done[i]:
            continue
        t0 = time.perf_counter()
        embedding = read_embedding(src, i).to(model.device)
        labels = masks_to_labels(
            generate_masks(model, embedding, tile.window_shape, params),
            tile.window_shape,
            with_background=params.with_background,
        )
        root["seconds"][i] = time.perf_counter() - t0
        root.create_array(f"t{i}", data=labels.astype(np.uint32), chunks=labels.shape, overwrite=True)
        root["done"][i] = True
    embed_stats = dict(src.attrs.get("stats", {}))
    encoder = stores.tile_seconds(src)  # the embedding store may be temporary: its tiles' seconds are kept here
    stats = {
        "tiles": len(tiles),
        "computed": int((~done).sum()),
        "segment_seconds": float(np.nansum(stores.tile_seconds(root))),
        "encoder_seconds": embed_stats.get("encoder_seconds"),
        "encoder_tile_seconds": None if encoder is None else [None if np.isnan(x) else float(x) for x in encoder],
        "device": str(model.device),
        "peak_mem_mb": max(peak_mem_mb(), embed_stats.get("peak_mem_mb", 0.0)),
    }
    root.attrs["stats"] = stats
    stores.finish(out)
    return stats


def _params_record(params: AmgParams) -> dict:
    """The store's record of `params`, as it has always been written (tables and resume checks read it).

    `params` holds the thresholds and grid, `prompt` and `box_sizes` (None for points) sit beside it.
    """
    record = asdict(params)
    prompt, box_sizes = record.pop("prompt"), record.pop("box_sizes")
    return {"params": record, "prompt": prompt, "box_sizes": list(box_sizes) if prompt == "box" else None}


def costs(block_stores: list[str | Path]) -> dict:
    """Cost columns of one image from the seconds its blocks' stores record for every tile.

    Per-tile seconds are kept across an interrupted job, so a resumed run reports what an
    uninterrupted one does. Tiles without a record (stores written before tiles were timed)
    count at the mean of the timed ones; `timed_tiles` says how many were timed.
    """
    import zarr

    encoder, segment, stats = [], [], []
    for path in block_stores:
        root = zarr.open_group(str(path), mode="r")
        s = dict(root.attrs["stats"])
        stats.append(s)
        seconds = stores.tile_seconds(root)
        if seconds is None:  # a store from before per-tile seconds: its last job's total over its tiles
            seconds = [s["segment_seconds"] / max(s["computed"], 1)] * s["computed"]
            seconds += [np.nan] * (s["tiles"] - s["computed"])
        segment.extend(seconds)
        tile_enc = s.get("encoder_tile_seconds") or [(s.get("encoder_seconds") or np.nan) / s["tiles"]] * s["tiles"]
        encoder.extend(np.nan if x is None else x for x in tile_enc)
    encoder, segment = np.asarray(encoder, float), np.asarray(segment, float)
    return {
        "encoder_s_per_tile": _mean(encoder),
        "segment_s_per_image": _mean(segment) * len(segment),
        "peak_mem_mb": max(s["peak_mem_mb"] for s in stats),
        "device": stats[0]["device"],
        "n_tiles": len(segment),
        "timed_tiles": int((np.isfinite(encoder) & np.isfinite(segment)).sum()),
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
            import zarr

            roots[b] = zarr.open_group(str(block_stores[b]), mode="r")
        return roots[b][f"t{i}"][...]

    return read
