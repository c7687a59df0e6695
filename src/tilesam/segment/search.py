"""The protocol's AMG parameter search: IoU and stability thresholds, best mSA on a validation split.

Cheap because every tile is decoded once, at the loosest thresholds of the grid; each setting
then only filters the stored candidates (`tilesam.segment.amg.filter_candidates`), paints, stitches
(in memory) and scores. The setting with the best mean mSA over the validation images is the
one the test split is segmented with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import AmgParams, SearchGrid, StitchParams
from tilesam.metrics import segmentation_scores
from tilesam.segment.amg import decode_candidates, filter_candidates
from tilesam.segment.labels import masks_to_labels
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import Tile, TileGrid


def protocol_range(start: float, stop: float, step: float = 0.025) -> list[float]:
    """start, start + step, ..., stop (inclusive), rounded so 0.6 + 0.025 k prints as it should."""
    n = int(round((stop - start) / step)) + 1
    return [round(start + k * step, 6) for k in range(n)]


#: the protocol's grid (micro-sam's: IoU 0.6..0.9 and stability 0.6..0.95 in steps of 0.025), from the schema
PRED_IOU_GRID = protocol_range(*SearchGrid().pred_iou_thresh)
STABILITY_GRID = protocol_range(*SearchGrid().stability_score_thresh)


@dataclass
class SearchImage:
    """One validation image: its tile grid, stored embeddings and ground truth."""

    name: str
    grid: TileGrid
    embedding_of: Callable[[Tile], torch.Tensor]
    gt: np.ndarray


def search_amg(
    model: Sam,
    images: list[SearchImage],
    params: AmgParams,
    *,
    pred_iou_grid: list[float] = PRED_IOU_GRID,
    stability_grid: list[float] = STABILITY_GRID,
    stitch_params: StitchParams | None = None,
) -> pd.DataFrame:
    """mSA (mean over images) of every (pred_iou_thresh, stability_score_thresh), best first.

    `params` gives everything else, the prompt grid (points or boxes) included.
    """
    stitch_params = stitch_params or StitchParams()
    loosest = replace(params, pred_iou_thresh=min(pred_iou_grid), stability_score_thresh=min(stability_grid))
    rows = []
    for image in tqdm(images, desc="AMG search"):
        candidates = {
            tile.id: decode_candidates(model, image.embedding_of(tile), tile.window_shape, loosest)
            for tile in image.grid.tiles()
        }
        for iou in pred_iou_grid:
            for stability in stability_grid:
                tiles = {
                    tile_id: masks_to_labels(
                        filter_candidates(c, iou, stability, params.box_nms_thresh),
                        c.maskset.shape,
                        with_background=params.with_background,
                    )
                    for tile_id, c in candidates.items()
                }
                msa = segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles, stitch_params)).msa
                rows.append(
                    {"image": image.name, "pred_iou_thresh": iou, "stability_score_thresh": stability, "mSA": msa}
                )
    per_image = pd.DataFrame(rows)
    table = per_image.groupby(["pred_iou_thresh", "stability_score_thresh"], as_index=False)["mSA"].mean()
    # best first; ties go to the stricter setting (fewer, surer masks)
    return table.sort_values(["mSA", "pred_iou_thresh", "stability_score_thresh"], ascending=False, ignore_index=True)
