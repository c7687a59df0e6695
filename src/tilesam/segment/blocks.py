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
    seconds = 0.0
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
        seconds += time.perf_counter() - t0
        root.create_array(f"t{i}", data=labels.astype(np.uint32), chunks=labels.shape, overwrite=True)
        root["done"][i] = True
    embed_stats = dict(src.attrs.get("stats", {}))
    stats = {
        "tiles": len(tiles),
        "computed": int((~done).sum()),
        "segment_seconds": seconds,
        "encoder_seconds": embed_stats.get("encoder_seconds"),
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
    """Cost columns of one image from its blocks' stats: encoder s/tile, segmentation s, peak memory."""
    import zarr

    stats = [dict(zarr.open_group(str(p), mode="r").attrs["stats"]) for p in block_stores]
    tiles = sum(s["tiles"] for s in stats)
    return {
        "encoder_s_per_tile": sum(s.get("encoder_seconds") or 0.0 for s in stats) / max(tiles, 1),
        "segment_s_per_image": sum(s["segment_seconds"] for s in stats),
        "peak_mem_mb": max(s["peak_mem_mb"] for s in stats),
        "device": stats[0]["device"],
        "n_tiles": tiles,
    }


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
