"""Automatic mask generation with a grid of box prompts, for models trained on boxes only.

LiteMedSAM was trained with box prompts alone: a point prompt gives it an empty
mask, so SAM's point-grid AMG finds nothing with it. Here each grid point is the
centre of boxes of a few sizes; every box is decoded once (single-mask output,
as SAM answers a box), and the masks go through the same IoU, stability and
box-NMS filters as point-grid AMG (`tilesam.segment.amg.filter_candidates`).

The decoder is split as for points (`tilesam.segment.decoder`): the first transformer block's
image side is computed once per batch, and the mask head and upscaling run only for boxes whose
predicted IoU passes ``pred_iou_thresh``; the masks equal ``MaskDecoder``'s up to float rounding.
"""

from __future__ import annotations

import torch
from segment_anything.modeling import Sam

from tilesam.config import AmgParams
from tilesam.resize import resized_shape, scale_boxes
from tilesam.segment.decoder import binarise_and_score, decode_mask_logits, decode_prompt_tokens, model_dtype
from tilesam.segment.grids import box_grid
from tilesam.segment.masks import Candidates, MaskSet, passes_threshold


@torch.inference_mode()
def decode_box_candidates(
    model: Sam,
    embedding: torch.Tensor,
    original_size: tuple[int, int],
    params: AmgParams,
) -> Candidates:
    """Decode every grid box (`params.box_sizes`) once; keep masks passing `params`' IoU and stability thresholds."""
    device = model.device
    embedding = embedding.to(device=device, dtype=model_dtype(model))
    original_size = (int(original_size[0]), int(original_size[1]))
    img_size = model.image_encoder.img_size
    input_size = resized_shape(*original_size, img_size)
    boxes = box_grid(params.points_per_side, params.box_sizes, original_size)
    coords = torch.as_tensor(scale_boxes(boxes, original_size, img_size), device=device).float()
    centres = torch.as_tensor((boxes[:, :2] + boxes[:, 2:]) / 2, device=device)
    grid_hw = (int(embedding.shape[-2]), int(embedding.shape[-1]))
    parts = []
    for start in range(0, len(boxes), params.points_per_batch):
        batch = slice(start, start + params.points_per_batch)
        sparse, dense = model.prompt_encoder(points=None, boxes=coords[batch], masks=None)
        iou_all, mask_tokens, image_tokens = decode_prompt_tokens(model, embedding, sparse, dense)
        iou = iou_all[:, 0]  # the single-mask output, SAM's answer to a box
        keep = passes_threshold(iou, params.pred_iou_thresh, strict=True)
        if not keep.any():
            continue
        if not keep.all():  # gathering the image tokens copies B*h*w*C floats
            rows = keep.nonzero()[:, 0]
            mask_tokens, image_tokens = mask_tokens[rows], image_tokens[rows]
        low_res = decode_mask_logits(model, mask_tokens, image_tokens, grid_hw, multimask=False)
        masks, stability, boxes = binarise_and_score(
            model, low_res[:, 0], input_size, original_size, params.stability_score_offset
        )
        stable = passes_threshold(stability, params.stability_score_thresh, strict=False)
        masks = masks[stable]
        parts.append(
            MaskSet(
                masks=masks,
                iou_preds=iou[keep][stable].float(),
                stability_scores=stability[stable].float(),
                boxes=boxes[stable],
                points=centres[batch][keep][stable],
            )
        )
    return Candidates(
        maskset=MaskSet.concat(parts, original_size, device),
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        stability_score_offset=params.stability_score_offset,
        n_points=len(boxes),
    )
