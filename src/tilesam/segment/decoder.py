"""SAM's mask decoder for a batch of point prompts on one embedding, with the image side shared.

The same arithmetic as ``MaskDecoder`` (so the outputs are SAM's, bit for bit on CPU), split and
batched for AMG:

* the first transformer block computes the image-side projections once per batch instead of
  once per point (they do not depend on the point until that block's image-to-token attention);
* the transformer (which yields the predicted IoUs) runs for every point, the mask head
  (upscaling convolutions + hypernetwork) only for points with a mask passing
  ``pred_iou_thresh``: its outputs are per point, so survivors get SAM's logits;
* only those masks are upscaled to the original size (the model's own ``postprocess_masks``, in
  chunks to bound memory) and binarised, with SAM's stability score, vectorised.

On CUDA the shared projections are matrix products of another shape than SAM's per-point
ones; cuBLAS may pick other kernels for them, so results can differ from SAM's in the last
bits of some logits (a pixel here and there), as SAM's own results do across batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam

from tilesam.config import AmgParams
from tilesam.segment.masks import MaskSet, masks_to_boxes, passes_threshold

__all__ = ["Geometry", "binarise_and_score", "decode_point_batch", "decode_prompt_tokens", "model_dtype"]

# Bytes of float32 upscaling intermediates allowed per chunk (the largest is one
# img_size x img_size plane per mask); SAM itself holds points_per_batch * 3 planes at once.
_UPSCALE_BUDGET_BYTES = 256 * 2**20


def model_dtype(model: Sam) -> torch.dtype:
    """The dtype of the decoder's weights, which embeddings are cast to."""
    return next(model.mask_decoder.parameters()).dtype


def _linear_rows(linear: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` as F.linear computes it for SAM's strided batched image tokens.

    SAM feeds permuted (non-contiguous) token tensors, for which F.linear copies the rows
    contiguous, multiplies and then adds the bias; doing the same here keeps a projection
    computed once for the whole batch bitwise equal to SAM's per-point ones.
    """
    out = x.reshape(-1, x.shape[-1]).contiguous() @ linear.weight.t()
    out.add_(linear.bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def _attend(attention: torch.nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The part of SAM's ``Attention.forward`` after the q/k/v projections."""
    heads = attention.num_heads

    def split(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, heads, c // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax((q @ k.permute(0, 1, 3, 2)) / math.sqrt(q.shape[-1]), dim=-1)
    out = weights @ v
    b, _, n, c = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(b, n, heads * c))


def _first_block_shared(
    block: torch.nn.Module, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's first ``TwoWayAttentionBlock`` with the image side computed once per batch.

    Before the image-to-token attention updates them, the image tokens are the same for
    every point, so their key/value projections (token-to-image) and query projection
    (image-to-token) are shared instead of repeated for each point: about a third of the
    transformer's work. ``image``/``image_pe`` are (1, N, C), ``tokens`` (B, T, C).
    """
    n = tokens.shape[0]
    queries = block.norm1(block.self_attn(q=tokens, k=tokens, v=tokens))
    image_keys = image + image_pe
    t2i = block.cross_attn_token_to_image
    k = _linear_rows(t2i.k_proj, image_keys).expand(n, -1, -1)
    v = _linear_rows(t2i.v_proj, image).expand(n, -1, -1)
    queries = block.norm2(queries + _attend(t2i, t2i.q_proj(queries + tokens), k, v))
    queries = block.norm3(queries + block.mlp(queries))
    i2t = block.cross_attn_image_to_token
    q = _linear_rows(i2t.q_proj, image_keys).expand(n, -1, -1)
    attn_out = _attend(i2t, q, i2t.k_proj(queries + tokens), i2t.v_proj(queries))
    return queries, block.norm4(image + attn_out)


def _run_transformer(
    transformer: torch.nn.Module, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` for one image (1, C, h, w) and a batch of prompts.

    Returns the output tokens (B, T, C) and the image tokens (B, h*w, C), equal to SAM's.
    """
    image = image.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1)
    n = tokens.shape[0]
    layers = list(transformer.layers)
    if layers and layers[0].skip_first_layer_pe:
        queries, keys = _first_block_shared(layers[0], image, image_pe, tokens)
        layers = layers[1:]
    else:
        queries, keys = tokens, image.expand(n, -1, -1)
    image_pe = image_pe.expand(n, -1, -1)
    for layer in layers:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=image_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + image_pe, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys


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
    hs, image_tokens = _run_transformer(decoder.transformer, image, model.prompt_encoder.get_dense_pe(), tokens)
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
    decoder = model.mask_decoder
    b, _, c = image_tokens.shape
    image = image_tokens.transpose(1, 2).view(b, c, *grid_hw)
    upscaled = decoder.output_upscaling(image)
    hyper_in = torch.stack(
        [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    b, c, h, w = upscaled.shape
    logits = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    return logits[:, 1:] if multimask else logits[:, :1]


def binarise_and_score(
    model: Sam,
    low_res: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upscale low-res logits (N, h, w) as SAM does; return bool masks and stability scores.

    The stability score is |logit > t + offset| / |logit > t - offset| at original size, t being
    ``model.mask_threshold``; it is computed in chunks so the img_size^2 intermediates of
    ``postprocess_masks`` stay within ``_UPSCALE_BUDGET_BYTES``.
    """
    t = model.mask_threshold
    img = model.image_encoder.img_size
    chunk = max(1, _UPSCALE_BUDGET_BYTES // (4 * (img * img + original_size[0] * original_size[1])))
    masks, scores = [], []
    for start in range(0, low_res.shape[0], chunk):
        logits = model.postprocess_masks(low_res[start : start + chunk, None], input_size, original_size)[:, 0]
        inner = (logits > t + offset).sum(dim=(-2, -1))
        outer = (logits > t - offset).sum(dim=(-2, -1))
        scores.append(inner.to(torch.int32) / outer.to(torch.int32))
        masks.append(logits > t)
    return torch.cat(masks), torch.cat(scores)


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
    masks, stability = binarise_and_score(
        model, low_res[keep], geometry.input_size, geometry.original_size, params.stability_score_offset
    )
    stable = passes_threshold(stability, params.stability_score_thresh, strict=False)
    point_index = rows[:, None].expand(-1, keep.shape[1])[keep][stable]
    masks = masks[stable]
    return MaskSet(
        masks=masks,
        iou_preds=iou_preds[rows][keep][stable],
        stability_scores=stability[stable],
        boxes=masks_to_boxes(masks),
        points=points[point_index],
    )
