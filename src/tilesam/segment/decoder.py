"""SAM's mask decoder for a batch of point prompts on one embedding, split and batched for AMG.

* the transformer (``two_way.run_transformer``: SAM's, with the image side shared in its first
  block and its products reassociated) yields the predicted IoUs for every point; the mask head
  runs only for points with a mask passing ``pred_iou_thresh``: its outputs are per point, so
  survivors get the logits they would get alone;
* only those masks are upscaled to the original size and binarised, with SAM's stability score: on a
  CPU only where a mask can be (``upscale.binarise``), on a GPU with the model's own
  ``postprocess_masks`` in chunks to bound memory.

Outputs equal SAM's up to float rounding: a pixel here and there where a logit sits at the
threshold, as SAM's own results differ across batch sizes (``tests/segment/test_amg.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam

from tilesam.config import AmgParams
from tilesam.segment.masks import MaskSet, masks_to_boxes, passes_threshold
from tilesam.segment.two_way import mask_logits, run_transformer
from tilesam.segment.upscale import binarise, is_sams_postprocessing

__all__ = ["Geometry", "binarise_and_score", "decode_point_batch", "decode_prompt_tokens", "model_dtype"]

# Bytes of float32 upscaling intermediates allowed per chunk (the largest is one
# img_size x img_size plane per mask); SAM itself holds points_per_batch * 3 planes at once.
_UPSCALE_BUDGET_BYTES = 256 * 2**20


def model_dtype(model: Sam) -> torch.dtype:
    """The dtype of the decoder's weights, which embeddings are cast to."""
    return next(model.mask_decoder.parameters()).dtype


def decode_prompt_tokens(
    model: Sam, embedding: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-way transformer and IoU head for a batch of encoded prompts (``model.prompt_encoder``'s output).

    Returns the IoU predictions of every mask token (B, n_mask_tokens), the mask tokens
    (B, n_mask_tokens, C) and the updated image tokens (B, h*w, C): what
    ``MaskDecoder.predict_masks`` computes before its mask head. Index 0 is the single-mask
    output (SAM's answer to a box), 1: the multimask outputs.
    """
    decoder = model.mask_decoder
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    # Without a mask prompt the dense embedding is one learned vector, the same for every prompt.
    image = embedding + dense[:1]
    hs, image_tokens = run_transformer(decoder.transformer, image, model.prompt_encoder.get_dense_pe(), tokens)
    iou_preds = decoder.iou_prediction_head(hs[:, 0, :])
    mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    return iou_preds, mask_tokens, image_tokens


def decode_tokens(
    model: Sam, embedding: torch.Tensor, coords: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt encoder + two-way transformer for single positive points (B of them).

    Returns the multimask IoU predictions (B, 3), mask tokens (B, n_mask_tokens, C) and the
    updated image tokens (B, h*w, C).
    """
    labels = torch.ones((coords.shape[0], 1), dtype=torch.int, device=coords.device)
    sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
    iou_preds, mask_tokens, image_tokens = decode_prompt_tokens(model, embedding, sparse, dense)
    return iou_preds[:, 1:], mask_tokens, image_tokens


def decode_mask_logits(
    model: Sam,
    mask_tokens: torch.Tensor,
    image_tokens: torch.Tensor,
    grid_hw: tuple[int, int],
    multimask: bool = True,
) -> torch.Tensor:
    """Mask head of ``MaskDecoder.predict_masks``: low-res logits (B, 3, 256, 256), or (B, 1, ...) single-mask."""
    which = slice(1, None) if multimask else slice(0, 1)
    return mask_logits(model.mask_decoder, mask_tokens, image_tokens, grid_hw, which)


def binarise_and_score(
    model: Sam,
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    offset: float,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upscale low-res logits (N, h, w) as SAM does; return bool masks, stability scores and XYXY boxes.

    The stability score is |logit > t + offset| / |logit > t - offset| at original size, t being
    ``threshold`` (default ``model.mask_threshold``). On a CPU only where a mask can be
    (``upscale.binarise``); elsewhere with the model's ``postprocess_masks``, in chunks so its
    img_size^2 intermediates stay within ``_UPSCALE_BUDGET_BYTES``.
    """
    t = model.mask_threshold if threshold is None else threshold
    img = model.image_encoder.img_size
    if low_res.device.type == "cpu" and is_sams_postprocessing(model):
        return binarise(low_res, img, input_size, original_size, t, offset)
    chunk = max(1, _UPSCALE_BUDGET_BYTES // (4 * (img * img + original_size[0] * original_size[1])))
    masks, scores = [], []
    for start in range(0, low_res.shape[0], chunk):
        logits = model.postprocess_masks(low_res[start : start + chunk, None], input_size, original_size)[:, 0]
        inner = (logits > t + offset).sum(dim=(-2, -1))
        outer = (logits > t - offset).sum(dim=(-2, -1))
        scores.append(inner.to(torch.int32) / outer.to(torch.int32))
        masks.append(logits > t)
    masks = torch.cat(masks)
    return masks, torch.cat(scores), masks_to_boxes(masks)


@dataclass
class Geometry:
    """Sizes that map low-res decoder logits back to the original image, as SamPredictor does."""

    original_size: tuple[int, int]  # (H, W) of the image that was embedded
    input_size: tuple[int, int]  # its size after ResizeLongestSide, before padding
    grid_hw: tuple[int, int]  # embedding grid (64, 64)


def decode_point_batch(
    model: Sam,
    embedding: torch.Tensor,
    coords: torch.Tensor,
    points: torch.Tensor,
    geometry: Geometry,
    params: AmgParams,
) -> MaskSet | None:
    """Masks of one batch of points that pass the IoU and stability prefilters (SAM's order)."""
    iou_preds, mask_tokens, image_tokens = decode_tokens(model, embedding, coords)
    keep = passes_threshold(iou_preds, params.pred_iou_thresh, strict=True)  # (B, 3)
    rows = keep.any(dim=1).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    if rows.numel() < keep.shape[0]:  # gathering the image tokens copies B*h*w*C floats
        mask_tokens, image_tokens = mask_tokens[rows], image_tokens[rows]
    keep = keep[rows]
    low_res = decode_mask_logits(model, mask_tokens, image_tokens, geometry.grid_hw)
    masks, stability, boxes = binarise_and_score(
        model, low_res[keep], geometry.input_size, geometry.original_size, params.stability_score_offset
    )
    stable = passes_threshold(stability, params.stability_score_thresh, strict=False)
    point_index = rows[:, None].expand(-1, keep.shape[1])[keep][stable]
    masks = masks[stable]
    return MaskSet(
        masks=masks,
        iou_preds=iou_preds[rows][keep][stable],
        stability_scores=stability[stable],
        boxes=boxes[stable],
        points=points[point_index],
    )
