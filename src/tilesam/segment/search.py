"""The protocol's parameter searches, best mSA on a validation split: AMG's, AIS's and APG's.

AMG (IoU and stability thresholds): cheap because every tile is decoded once, at the loosest
thresholds of the grid; each setting then only filters the stored candidates
(`tilesam.segment.amg.filter_candidates`), paints, stitches (in memory) and scores.

AIS (centre and boundary thresholds, distance smoothing, minimum size): the decoder runs once
per tile; each distance smoothing is applied once per tile, each threshold pair's watershed run
once per tile and smoothing, and the minimum sizes only filter its result
(`tilesam.segment.ais`'s steps), then the tiles are stitched and scored.

APG (micro-sam's `default_grid_search_values_apg`: centre and boundary thresholds, minimum size,
NMS threshold, intersection over min or union): the decoder runs once per tile; the prompts of each
(centre, boundary) pair are decoded by SAM once per tile, and their masks' pairwise overlaps
computed once; every minimum size and NMS setting only filters and paints those masks
(`tilesam.segment.nms`).

The setting with the best mean mSA over the validation images is the one the other datasets
are segmented with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import AisParams, AisSearchGrid, AmgParams, ApgParams, ApgSearchGrid, SearchGrid, StitchParams
from tilesam.metrics import segmentation_scores
from tilesam.resize import resized_shape
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

AIS_SEARCHED = tuple(f.name for f in fields(AisSearchGrid))  # what each search tunes: its grid's keys
APG_KEYS = tuple(f.name for f in fields(ApgSearchGrid))


def ais_grid(grid: AisSearchGrid | None = None) -> dict[str, list]:
    """The AIS search's values per parameter (micro-sam's protocol by default, from the schema)."""
    grid = grid or AisSearchGrid()
    values = {key: protocol_range(*getattr(grid, key)) for key in AIS_SEARCHED[:3]}
    values["min_size"] = sorted({int(v) for v in grid.min_size})
    for key, vals in values.items():
        if not vals or (key != "min_size" and min(vals) < 0):
            raise ValueError(f"segmentation.ais_search.{key}: no valid values in {getattr(grid, key)}")
    return values


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


def search_ais(
    decoder: torch.nn.Module,
    images: list[SearchImage],
    params: AisParams,
    img_size: int,
    *,
    grid: dict[str, list] | None = None,
    stitch_params: StitchParams | None = None,
) -> pd.DataFrame:
    """mSA (mean over images) of every AIS setting of `grid` (`ais_grid`), best first.

    `params` gives the rest (foreground threshold and smoothing); `img_size` is the model's input side.
    """

    from tilesam.models.unetr import decode_maps
    from tilesam.segment.ais import check_maps, foreground_mask, seeded_watershed, size_filter, smooth

    grid = grid or ais_grid()
    stitch_params = stitch_params or StitchParams()
    device = next(decoder.parameters()).device
    rows = []
    for image in tqdm(images, desc="AIS search"):
        maps, masks = {}, {}
        for tile in image.grid.tiles():
            window = tuple(int(v) for v in tile.window_shape)
            input_size = resized_shape(*window, img_size)
            with torch.no_grad():
                embedding = image.embedding_of(tile).to(device)
                tile_maps = decode_maps(decoder, embedding, input_size, window, model_size=img_size)[0]
            maps[tile.id] = check_maps(tile_maps, f"{image.name} tile {tile.id}")
            masks[tile.id] = foreground_mask(maps[tile.id][0], params)
        for sigma in grid["distance_smoothing"]:
            smoothed = {t: (smooth(m[1], sigma), smooth(m[2], sigma)) for t, m in maps.items()}
            for centre in grid["center_distance_threshold"]:
                for boundary in grid["boundary_distance_threshold"]:
                    labels = {t: seeded_watershed(c, b, masks[t], centre, boundary) for t, (c, b) in smoothed.items()}
                    for min_size in grid["min_size"]:
                        tiles = {t: size_filter(lab, min_size) for t, lab in labels.items()}
                        msa = segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles, stitch_params)).msa
                        setting = dict(zip(AIS_SEARCHED, (centre, boundary, sigma, min_size)))
                        rows.append({"image": image.name, **setting, "mSA": msa})
    per_image = pd.DataFrame(rows)
    table = per_image.groupby(list(AIS_SEARCHED), as_index=False, sort=False)["mSA"].mean()
    return table.sort_values("mSA", ascending=False, kind="stable", ignore_index=True)


def apg_grid(grid: ApgSearchGrid | None = None) -> dict[str, list]:
    """The APG search's values per parameter (micro-sam's `default_grid_search_values_apg` by default)."""
    grid = grid or ApgSearchGrid()
    ranges = ("center_distance_threshold", "boundary_distance_threshold", "nms_threshold")
    values = {key: protocol_range(*getattr(grid, key)) for key in ranges}
    values["min_size"] = sorted({int(v) for v in grid.min_size})
    values["intersection_over_min"] = list(dict.fromkeys(bool(v) for v in grid.intersection_over_min))
    for key, vals in values.items():
        if not vals or (key in ranges and not 0 <= min(vals) <= max(vals) <= 1):
            raise ValueError(f"segmentation.apg_search.{key}: no valid values in {getattr(grid, key)}")
    return {key: values[key] for key in APG_KEYS}


def search_apg(
    model: Sam,
    decoder: torch.nn.Module,
    images: list[SearchImage],
    params: ApgParams,
    img_size: int,
    *,
    grid: dict[str, list] | None = None,
    stitch_params: StitchParams | None = None,
) -> pd.DataFrame:
    """mSA (mean over images) of every APG setting of `grid` (`apg_grid`), best first.

    `params` gives the rest (foreground threshold, multimasking, mask threshold, box refinement).
    """

    from tilesam.models.unetr import decode_maps
    from tilesam.segment import apg
    from tilesam.segment.ais import check_maps
    from tilesam.segment.nms import apply_nms, overlaps

    grid = grid or apg_grid()
    stitch_params = stitch_params or StitchParams()
    device = next(decoder.parameters()).device
    post = [
        (min_size, nms, iom)
        for min_size in grid["min_size"]
        for nms in grid["nms_threshold"]
        for iom in grid["intersection_over_min"]
    ]
    rows = []
    for image in tqdm(images, desc="APG search"):
        windows = {}  # tile id -> (embedding, maps)
        for tile in image.grid.tiles():
            window = tuple(int(v) for v in tile.window_shape)
            input_size = resized_shape(*window, img_size)
            with torch.no_grad():
                embedding = image.embedding_of(tile)
                tile_maps = decode_maps(decoder, embedding.to(device), input_size, window, model_size=img_size)[0]
            windows[tile.id] = (embedding, check_maps(tile_maps, f"{image.name} tile {tile.id}"))
        for centre in grid["center_distance_threshold"]:
            for boundary in grid["boundary_distance_threshold"]:
                setting = replace(params, center_distance_threshold=centre, boundary_distance_threshold=boundary)
                labels = {p: {} for p in post}
                for tile_id, (embedding, maps) in windows.items():
                    with torch.no_grad():
                        masks = apg.window_masks(model, embedding, maps, setting)
                    pairs = overlaps(masks.masks, masks.boxes) if len(masks) else None
                    for p in post:
                        labels[p][tile_id] = (
                            apply_nms(masks, *p, pairs=pairs) if len(masks) else np.zeros(masks.shape, np.uint32)
                        )
                for (min_size, nms, iom), tiles in labels.items():
                    msa = segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles, stitch_params)).msa
                    values = (centre, boundary, min_size, nms, iom)
                    rows.append({"image": image.name, **dict(zip(APG_KEYS, values)), "mSA": msa})
    per_image = pd.DataFrame(rows)
    table = per_image.groupby(list(APG_KEYS), as_index=False, sort=False)["mSA"].mean()
    return table.sort_values("mSA", ascending=False, kind="stable", ignore_index=True)
