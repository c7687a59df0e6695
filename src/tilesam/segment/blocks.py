"""Automatic segmentation of the tiles of one block, from their stored embeddings.

Each tile's window (tile + halo) is segmented on its own; the per-tile label
images are what `tilesam.stitch.tiles` joins into one image. The encoder is never
run again here: the embeddings come from the block's embedding store.

Three methods: `amg` (SAM's prompt grid, `tilesam.segment.amg`), `ais` (micro-sam's instance
decoder: the block's embeddings go through the decoder in batches of `AisParams.tiles_per_batch`
tiles, and each window's three maps are post-processed on their own, `tilesam.segment.ais`) and
`apg` (the same maps per batch of windows, then per window point prompts from them, decoded by
SAM from the window's embedding and merged by NMS, `tilesam.segment.apg`).

Why AIS per window and not micro-sam's way: micro-sam pastes each tile's maps into whole-image
float maps and runs one watershed over them, so its memory grows with the image (three float32
maps plus labels: ~16 bytes a pixel, 4 GB at 16k x 16k) and nothing is written until the whole
image is done. Here a block job holds one batch of windows' maps and one window's labels, whatever
the image size; its labels are stored per tile like AMG's, so the same stitcher joins them (an
object cut by a tile border is matched across the halo overlap), an interrupted block resumes
at its first missing tile, and 3D volumes are segmented per section and linked by the stitcher.
The price: a watershed sees only its window, so an object wider than the halo can be split
where two windows disagree, as with AMG; the halo should exceed half the largest object.
APG per window has the same reason and price; micro-sam's tiled APG decodes every prompt against
the whole image's tiled embeddings and holds whole-image masks until its NMS.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import SEGMENTERS, AisParams, AmgParams, ApgParams
from tilesam.data import stores
from tilesam.embed import Provenance, peak_mem_mb, read_embedding
from tilesam.resize import resized_shape
from tilesam.segment.amg import generate_masks
from tilesam.segment.labels import masks_to_labels
from tilesam.segment.results import APG_STAGES
from tilesam.tiling import Tile, TileGrid

METHODS = SEGMENTERS


@torch.no_grad()
def segment_block(
    model: Sam | None,
    embeddings: str | Path,
    prov: Provenance,
    grid: TileGrid,
    out: str | Path,
    *,
    method: str = "amg",
    params: AmgParams | AisParams | ApgParams | None = None,
    decoder: torch.nn.Module | None = None,
    decoder_id: dict | None = None,
    model_id: dict | None = None,
    workers: int = 1,
) -> dict:
    """Segment every tile of a block into `<out>` (arrays `t<i>`: window-sized uint32 labels).

    `amg`: `params` are AmgParams; `prompt: box` prompts a grid of boxes instead of points
    (`tilesam.segment.box_amg`), for models trained on box prompts only, such as LiteMedSAM.
    `ais`: `params` are AisParams and `decoder` the model's instance decoder
    (`tilesam.models.unetr`; `model` is not used); `decoder_id` (e.g. its state's sha256) goes
    into the provenance, so a store made with another decoder is not resumed. `model_id` (the
    model's name and checksum) goes into it too: the embeddings name only the encoder, which a
    finetuned model may share with its base.
    `apg`: `params` are ApgParams, `decoder` as for ais and `model` the SAM that decodes the prompts;
    each tile's seconds per stage (maps, prompts + masks, NMS) go into the array `stage_seconds`.
    `workers`: threads that finish AIS and APG windows while the device decodes the next batch (a
    GPU job's; 1 on a CPU, where the decoder itself keeps the cores busy).
    """
    if method not in METHODS:
        raise ValueError(f"unknown segmentation method {method!r}; known: {', '.join(METHODS)}")
    if method in ("ais", "apg"):
        if decoder is None:
            name = (model_id or {}).get("model", "?")
            raise ValueError(f"{out}: method {method} needs the instance decoder of model {name}, none was given")
        kind = AisParams if method == "ais" else ApgParams
        params = params or kind()
        if not isinstance(params, kind):
            raise TypeError(f"method {method} takes {kind.__name__}, got {type(params).__name__}")
        record = {"params": params.postprocessing(), "decoder": decoder_id}
    else:
        params = params or AmgParams()
        if not isinstance(params, AmgParams):
            raise TypeError(f"method amg takes AmgParams, got {type(params).__name__}")
        record = _params_record(params)
    src = stores.open_done(embeddings, "embeddings", asdict(prov))
    tiles = grid.block(prov.block, prov.tiles_per_block)
    provenance = {**asdict(prov), **(model_id or {}), "method": method, **record}
    root = stores.open_partial(out, "segmentation", provenance, len(tiles))
    done = root["done"][:]
    if method == "ais":
        _ais_tiles(decoder, src, tiles, done, root, params, prov.img_size, out, workers)
    elif method == "apg":
        _apg_tiles(model, decoder, src, tiles, done, root, params, prov.img_size, out, workers)
    else:
        _amg_tiles(model, src, tiles, done, root, params, prov.block)
    embed_stats = dict(src.attrs.get("stats", {}))
    encoder = stores.tile_seconds(src)  # the embedding store may be temporary: its tiles' seconds are kept here
    stats = {
        "tiles": len(tiles),
        "computed": int((~done).sum()),
        "segment_seconds": float(np.nansum(stores.tile_seconds(root))),
        "encoder_seconds": embed_stats.get("encoder_seconds"),
        "encoder_tile_seconds": None if encoder is None else [None if np.isnan(x) else float(x) for x in encoder],
        "device": str(next(decoder.parameters()).device if method == "ais" else model.device),
        "peak_mem_mb": max(peak_mem_mb(), embed_stats.get("peak_mem_mb", 0.0)),
    }
    root.attrs["stats"] = stats
    stores.finish(out)
    return stats


def _store_tile(root, i: int, labels: np.ndarray, seconds: float) -> None:
    """A tile's labels and seconds, then its done flag (so a killed job never marks a tile without data)."""
    root.create_array(f"t{i}", data=labels.astype(np.uint32), chunks=labels.shape, overwrite=True)
    root["seconds"][i] = seconds
    root["done"][i] = True


def _amg_tiles(model: Sam, src, tiles: list[Tile], done: np.ndarray, root, params: AmgParams, block: int) -> None:
    for i, tile in enumerate(tqdm(tiles, desc=f"amg block {block}")):
        if done[i]:
            continue
        t0 = time.perf_counter()
        embedding = read_embedding(src, i).to(model.device)
        labels = masks_to_labels(
            generate_masks(model, embedding, tile.window_shape, params),
            tile.window_shape,
            with_background=params.with_background,
        )
        _store_tile(root, i, labels, time.perf_counter() - t0)


def ais_batches(tiles: list[Tile], todo: list[int], batch_size: int) -> list[list[int]]:
    """Runs of at most `batch_size` tiles to compute, each of one window shape (one decoder call)."""
    batches: list[list[int]] = []
    for i in todo:
        if batches and len(batches[-1]) < batch_size and tiles[batches[-1][0]].window_shape == tiles[i].window_shape:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def _map_batches(
    decoder: torch.nn.Module,
    src,
    tiles: list[Tile],
    done: np.ndarray,
    batch_size: int,
    img_size: int,
    finish: Callable[[int, torch.Tensor, np.ndarray, float], None],
    workers: int,
    desc: str,
) -> None:
    """The decoder's maps per batch of the windows not done (`ais_batches`), then ``finish(i, embedding,
    maps, share)`` per window.

    ``share`` is the window's share of its batch's reading and decoding seconds. With ``workers`` > 1
    (a GPU job: the device makes maps far faster than one core post-processes them) the next batch's
    embeddings are read in the background and the windows are finished on that many threads (the
    watershed and connected components release the GIL) while the device decodes the next batch; at
    most two batches of maps are held. One worker: all in this thread, one step after the other.
    """
    from tilesam.models.unetr import decode_maps

    device = next(decoder.parameters()).device
    todo = [i for i in range(len(tiles)) if not done[i]]
    batches = ais_batches(tiles, todo, batch_size)

    def read(batch: list[int]) -> torch.Tensor:
        return torch.cat([read_embedding(src, i) for i in batch])

    with (
        ThreadPoolExecutor(max_workers=1) as reader,
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(todo), desc=desc) as bar,
    ):
        pending = reader.submit(read, batches[0]) if batches and workers > 1 else None
        previous: list[Future] = []
        for k, batch in enumerate(batches):
            t0 = time.perf_counter()
            embeddings = pending.result() if pending is not None else read(batch)
            if workers > 1 and k + 1 < len(batches):
                pending = reader.submit(read, batches[k + 1])
            window = tuple(int(v) for v in tiles[batch[0]].window_shape)
            input_size = resized_shape(*window, img_size)
            maps = decode_maps(
                decoder, embeddings.to(device), input_size, window, model_size=img_size, batch_size=len(batch)
            )
            share = (time.perf_counter() - t0) / len(batch)
            windows = [(i, embeddings[j : j + 1], maps[j], share) for j, i in enumerate(batch)]
            if workers == 1:
                for args in windows:
                    finish(*args)
                bar.update(len(batch))
                continue
            for future in previous:  # the batch before last is finished: at most two batches of maps held
                future.result()
            bar.update(len(previous))
            previous = [pool.submit(finish, *args) for args in windows]
        for future in previous:
            future.result()
        bar.update(len(previous))


def _ais_tiles(
    decoder: torch.nn.Module,
    src,
    tiles: list[Tile],
    done: np.ndarray,
    root,
    params: AisParams,
    img_size: int,
    out: str | Path,
    workers: int = 1,
) -> None:
    """Decoder maps per batch of windows, then AIS per window; labels stored tile by tile.

    A tile's seconds are its share of its batch's decoder call plus its own post-processing.
    """
    from tilesam.segment.ais import ais_labels

    def finish(i: int, embedding: torch.Tensor, tile_maps: np.ndarray, share: float) -> None:
        t0 = time.perf_counter()
        labels = ais_labels(tile_maps, params, source=f"{out} tile {i}")
        _store_tile(root, i, labels, share + time.perf_counter() - t0)

    _map_batches(decoder, src, tiles, done, params.tiles_per_batch, img_size, finish, workers, f"ais {Path(out).name}")


def _apg_tiles(
    model: Sam,
    decoder: torch.nn.Module,
    src,
    tiles: list[Tile],
    done: np.ndarray,
    root,
    params: ApgParams,
    img_size: int,
    out: str | Path,
    workers: int = 1,
) -> None:
    """Decoder maps per batch of windows (as AIS), then APG per window from its own embedding.

    A tile's seconds per stage: its share of its batch's maps, its prompts and masks, its NMS. With
    ``workers`` > 1 the windows' prompts, masks and NMS run on that many threads (SAM's prompt decoder
    holds no state: threads share it; each thread's GPU calls queue on the device's stream).
    """
    from tilesam.segment.apg import window_masks
    from tilesam.segment.nms import apply_nms

    if "stage_seconds" not in root:
        root.create_array("stage_seconds", shape=(len(tiles), len(APG_STAGES)), chunks=(1, len(APG_STAGES)),
                          dtype="f8", fill_value=np.nan)  # fmt: skip

    @torch.no_grad()  # grad mode is per thread: the pool's threads need it too
    def finish(i: int, embedding: torch.Tensor, tile_maps: np.ndarray, share: float) -> None:
        t0 = time.perf_counter()
        masks = window_masks(model, embedding, tile_maps, params, source=f"{out} tile {i}")
        t1 = time.perf_counter()
        labels = apply_nms(masks, params.min_size, params.nms_threshold, params.intersection_over_min)
        t2 = time.perf_counter()
        root["stage_seconds"][i] = [share, t1 - t0, t2 - t1]
        _store_tile(root, i, labels, share + t2 - t0)

    _map_batches(decoder, src, tiles, done, params.tiles_per_batch, img_size, finish, workers, f"apg {Path(out).name}")


def _params_record(params: AmgParams) -> dict:
    """The store's record of `params`, as it has always been written (tables and resume checks read it).

    `params` holds the thresholds and grid, `prompt` and `box_sizes` (None for points) sit beside it.
    """
    record = asdict(params)
    prompt, box_sizes = record.pop("prompt"), record.pop("box_sizes")
    return {"params": record, "prompt": prompt, "box_sizes": list(box_sizes) if prompt == "box" else None}
