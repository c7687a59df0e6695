"""Prompted evaluation of a whole tiled image: each object prompted on one tile, all tiles scored as one image.

Every ground-truth object is prompted on the one tile whose inner region holds the centre
of its bounding box (per section in a volume), with the prompts of `tilesam.interactive.prompts`
derived from the part of the object inside that tile's window. The predicted masks of all
tiles are painted into one label image per iteration, scored against the whole ground
truth: a result comparable with automatic segmentation of the same image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from tilesam.interactive.prompts import MODES, N_ITERATIONS, iter_object_masks
from tilesam.metrics import relabel_gt, segmentation_scores
from tilesam.tiling import Tile, TileGrid

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

    from tilesam.embed import Provenance


def object_tiles(gt: np.ndarray, grid: TileGrid) -> dict[int, np.ndarray]:
    """Tile id -> ids of the objects (per section) whose bounding-box centre lies in its inner region."""
    (ty, tx) = grid.tile_shape
    out: dict[int, list[int]] = {}
    sections = gt[None] if gt.ndim == 2 else gt
    for z, section in enumerate(sections):
        for i, box in enumerate(ndimage.find_objects(section)):
            if box is None:
                continue
            cy = (box[0].start + box[0].stop - 1) // 2
            cx = (box[1].start + box[1].stop - 1) // 2
            tile = grid.tile_id(z if gt.ndim == 3 else None, cy // ty, cx // tx)
            out.setdefault(tile, []).append(i + 1)
    return {t: np.array(ids) for t, ids in out.items()}


def prompt_image(
    model: Sam,
    gt: np.ndarray,
    grid: TileGrid,
    embedding_of: Callable[[Tile], torch.Tensor],
    mode: str,
    seed: int = 0,
    n_iterations: int = N_ITERATIONS,
    feed_logits: bool = False,
) -> Iterator[np.ndarray]:
    """Predicted label image of the whole image per iteration (ids those of `relabel_gt(gt)`).

    feed_logits: give each iteration the previous mask logits (off: micro-sam's default).

    Holds one label image per iteration: size the images accordingly (a volume of 20 x 512^2
    with 8 iterations is 170 MB).
    """
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {MODES}")
    if gt.shape != tuple(grid.shape):
        raise ValueError(f"ground truth has shape {gt.shape}, the image {tuple(grid.shape)}")
    gt = relabel_gt(gt)
    iterations = 1 if mode in ("point", "box") else n_iterations
    preds = [np.zeros(gt.shape, dtype=np.uint32) for _ in range(iterations)]
    for tile_id, ids in sorted(object_tiles(gt, grid).items()):
        tile = grid.tile(tile_id)
        window = gt[tile.window_slices()]
        window = np.where(np.isin(window, ids), window, 0)
        masks = iter_object_masks(
            model,
            embedding_of(tile),
            window.shape,
            window,
            mode,
            n_iterations,
            seed=seed,
            use_mask_input=feed_logits,
            relabel=False,
        )
        for pred, result in zip(preds, masks):
            labels = result.label_image()
            target = pred[tile.window_slices()]
            target[labels > 0] = labels[labels > 0]
    yield from preds


def evaluate_prompts(
    model: Sam,
    gt: np.ndarray,
    grid: TileGrid,
    embedding_of: Callable[[Tile], torch.Tensor],
    mode: str,
    seed: int = 0,
    feed_logits: bool = False,
) -> list[dict]:
    """One record per iteration: scores of the prompted segmentation and the seconds it took."""
    records = []
    t0 = time.perf_counter()
    preds = prompt_image(model, gt, grid, embedding_of, mode, seed, feed_logits=feed_logits)
    for iteration, pred in enumerate(preds):
        scores = segmentation_scores(gt, pred).as_dict()
        records.append({"iteration": iteration, "prompt_seconds": time.perf_counter() - t0, **scores})
    return records


def prompt_params(mode: str, seed: int, feed_logits: bool) -> dict:
    """What a prompted row was made with, for the table's params column (feedback only matters when iterating)."""
    if mode in ("point", "box"):
        return {"seed": seed}
    return {"seed": seed, "iterations": N_ITERATIONS, "feed_logits": feed_logits}


def block_embeddings(block_stores: list[str], prov: Provenance):
    """A function tile -> stored embedding (1, 256, 64, 64), reading the image's embedding blocks.

    Each block store is checked against `prov` (with its own block number).
    """
    from tilesam.data import stores
    from tilesam.embed import read_embedding

    roots: dict[int, object] = {}

    def read(tile: Tile) -> torch.Tensor:
        b, i = divmod(tile.id, prov.tiles_per_block)
        if b not in roots:
            roots[b] = stores.open_done(block_stores[b], "embeddings", asdict(replace(prov, block=b)))
        return read_embedding(roots[b], i)

    return read
