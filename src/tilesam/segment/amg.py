"""Automatic mask generation (AMG) on a stored SAM image embedding.

This returns what ``segment_anything.SamAutomaticMaskGenerator`` returns for one crop
(``crop_n_layers=0``: the crop is the whole tile window), up to float rounding (a pixel here and
there where a logit sits at the threshold; the tests check it), but starts from an embedding that was computed once and stored, and does less work:

* the point grid, prompt transform and prompt encoder are SAM's, fed the same float64 point
  coordinates in the same batches;
* the decoder shares the image side of its first block across a batch and runs the mask head
  and upscaling only for masks passing ``pred_iou_thresh`` (``tilesam.segment.decoder``);
  stability score, binarisation and boxes are computed as SAM does, but vectorised and
  without RLE round trips;
* duplicates are removed with torchvision's ``batched_nms`` on the same inputs in the same
  order as SAM, so even tie-breaking matches.

Decoding and thresholding are separate steps (``decode_candidates`` then ``filter_candidates``)
so a grid search over ``pred_iou_thresh`` / ``stability_score_thresh`` reuses one decoder run:
the candidates keep every mask that passes the *loosest* thresholds of the search, already
binarised at the original size, with its scores. A mask's pixels, box and stability score do
not depend on the thresholds, only whether it survives does.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from segment_anything.modeling import Sam

from tilesam.config import AmgParams
from tilesam.resize import resized_shape, scale_points
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.decoder import Geometry, decode_point_batch, model_dtype
from tilesam.segment.grids import point_grid
from tilesam.segment.masks import Candidates, MaskSet, masks_to_boxes, passes_threshold

__all__ = ["decode_candidates", "filter_candidates", "generate_masks", "remove_small_regions"]


def _prompt_points(
    points_per_side: int, original_size: tuple[int, int], img_size: int, device: torch.device
) -> tuple[np.ndarray, torch.Tensor]:
    """Grid points in original pixels and their float64 model-input coordinates (as SAM)."""
    h, w = original_size
    points = point_grid(points_per_side) * np.array([w, h], dtype=np.float64)
    coords = scale_points(points, original_size, img_size)
    return points, torch.as_tensor(coords, device=device)


def decode_candidates(
    model: Sam, embedding: torch.Tensor, original_size: tuple[int, int], params: AmgParams
) -> Candidates:
    """Decode the prompt grid (``params.prompt``: points or boxes) once; keep masks passing its thresholds.

    Use the loosest thresholds of a parameter search here and ``filter_candidates`` for each
    setting. Masks are kept binarised at ``original_size`` (H*W bytes each): with both
    thresholds at 0, that is 3 * points_per_side^2 masks for points.
    """
    if params.prompt == "box":
        return decode_box_candidates(model, embedding, original_size, params)
    return _decode_point_candidates(model, embedding, original_size, params)


@torch.inference_mode()
def _decode_point_candidates(
    model: Sam, embedding: torch.Tensor, original_size: tuple[int, int], params: AmgParams
) -> Candidates:
    """Point-grid candidates with SAM's multimask output (three masks per point)."""
    if embedding.dim() != 4 or embedding.shape[0] != 1:
        raise ValueError(f"expected one image embedding (1, C, h, w), got {tuple(embedding.shape)}")
    device = model.device
    embedding = embedding.to(device=device, dtype=model_dtype(model))
    original_size = (int(original_size[0]), int(original_size[1]))
    img_size = model.image_encoder.img_size
    geometry = Geometry(
        original_size=original_size,
        input_size=resized_shape(*original_size, img_size),
        grid_hw=(int(embedding.shape[-2]), int(embedding.shape[-1])),
    )
    points, coords = _prompt_points(params.points_per_side, original_size, img_size, device)
    points_t = torch.as_tensor(points, device=device)
    parts = []
    for start in range(0, len(points), params.points_per_batch):
        batch = slice(start, start + params.points_per_batch)
        part = decode_point_batch(model, embedding, coords[batch], points_t[batch], geometry, params)
        if part is not None:
            parts.append(part)
    return Candidates(
        maskset=MaskSet.concat(parts, original_size, device),
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        stability_score_offset=params.stability_score_offset,
        n_points=len(points),
    )


def filter_candidates(
    candidates: Candidates,
    pred_iou_thresh: float,
    stability_score_thresh: float,
    box_nms_thresh: float,
) -> MaskSet:
    """Threshold candidates and remove duplicates by box NMS (scores: predicted IoU).

    Output is in NMS order (descending predicted IoU), as SAM returns it. The thresholds must
    be at least as strict as the ones the candidates were decoded with.
    """
    for name, thresh, floor in (
        ("pred_iou_thresh", pred_iou_thresh, candidates.pred_iou_thresh),
        ("stability_score_thresh", stability_score_thresh, candidates.stability_score_thresh),
    ):
        if floor > 0.0 and thresh < floor:
            raise ValueError(f"{name}={thresh} is looser than the decoded candidates' {floor}")
    ms = candidates.maskset
    keep = passes_threshold(ms.iou_preds, pred_iou_thresh, strict=True)
    keep &= passes_threshold(ms.stability_scores, stability_score_thresh, strict=False)
    ms = ms.select(keep)
    if len(ms) == 0:
        return ms
    from torchvision.ops import batched_nms  # AMG's only use of torchvision (~1 CPU-s to import)

    order = batched_nms(
        ms.boxes.float(),
        ms.iou_preds,
        torch.zeros(len(ms), dtype=torch.int64, device=ms.boxes.device),
        iou_threshold=box_nms_thresh,
    )
    return ms.select(order)


def _small_components(image: np.ndarray, min_area: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """8-connected components of a bool image: label image, component sizes, small flags."""
    from scipy import ndimage

    labels, n = ndimage.label(image, structure=np.ones((3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return labels, sizes, sizes < min_area


def _clean_mask(mask: np.ndarray, min_area: int) -> tuple[np.ndarray, bool]:
    """SAM's clean-up of one mask: fill small holes, then drop small islands.

    A hole is any 8-connected background component smaller than ``min_area`` (touching the
    border or not); if every island is small, the largest is kept. Returns (mask, changed).
    """
    changed = False
    labels, _, small = _small_components(~mask, min_area)
    if small.any():
        mask = mask | np.concatenate([[False], small])[labels]
        changed = True
    labels, sizes, small = _small_components(mask, min_area)
    if small.any():
        keep = ~small
        if not keep.any():
            keep[int(np.argmax(sizes))] = True
        mask = np.concatenate([[False], keep])[labels]
        changed = True
    return mask, changed


def remove_small_regions(maskset: MaskSet, min_area: int, nms_thresh: float) -> MaskSet:
    """Fill holes / drop islands smaller than ``min_area`` per mask, then NMS again.

    As SAM's ``postprocess_small_regions``: NMS prefers masks that needed no change (score 1
    vs 0). This loops over masks on the CPU (connected components), which is acceptable
    because ``min_mask_region_area`` is off by default.
    """
    if len(maskset) == 0 or min_area <= 0:
        return maskset
    device = maskset.masks.device
    cleaned, unchanged = [], []
    for mask in maskset.masks.cpu().numpy():
        new, changed = _clean_mask(mask, min_area)
        cleaned.append(new)
        unchanged.append(not changed)
    masks = torch.as_tensor(np.stack(cleaned), device=device)
    boxes = masks_to_boxes(masks)
    scores = torch.tensor(unchanged, dtype=torch.float32, device=device)
    from torchvision.ops import batched_nms

    order = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), dtype=torch.int64, device=device), nms_thresh)
    return replace(maskset, masks=masks, boxes=boxes).select(order)


def generate_masks(model: Sam, embedding: torch.Tensor, original_size: tuple[int, int], params: AmgParams) -> MaskSet:
    """The masks SamAutomaticMaskGenerator(crop_n_layers=0) returns, from a stored embedding.

    ``embedding`` is the image encoder output (1, C, 64, 64) for the image of
    ``original_size`` (H, W), on the model's device. With ``prompt: box`` the box grid's masks
    go through the same thresholds and NMS.
    """
    candidates = decode_candidates(model, embedding, original_size, params)
    masks = filter_candidates(candidates, params.pred_iou_thresh, params.stability_score_thresh, params.box_nms_thresh)
    # box AMG has never had the small-region clean-up; kept so that its outputs stay as they were
    if params.min_mask_region_area > 0 and params.prompt == "point":
        nms = max(params.box_nms_thresh, params.crop_nms_thresh)
        masks = remove_small_regions(masks, params.min_mask_region_area, nms)
    return masks
