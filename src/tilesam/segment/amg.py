"""Automatic mask generation (AMG) on a stored SAM image embedding.

This returns what ``segment_anything.SamAutomaticMaskGenerator`` returns for one crop
(``crop_n_layers=0``: the crop is the whole tile window), bit for bit on CPU (the tests check
it), but starts from an embedding that was computed once and stored, and does less work:

* the point grid, prompt transform and prompt encoder are SAM's, fed the same float64 point
  coordinates in the same batches;
* the decoder's first transformer block computes the image-side projections once per batch
  instead of once per point (they do not depend on the point until that block's
  image-to-token attention), with the same arithmetic, so the outputs stay identical;
* the decoder is split in two: the transformer (which yields the predicted IoUs) runs for
  every point, the mask head (upscaling convolutions + hypernetwork) only for points with a
  mask passing ``pred_iou_thresh``: its outputs are per point, so survivors get SAM's logits;
* only masks passing the IoU filter are upscaled to the original size (with the model's own
  ``postprocess_masks``, in chunks to bound memory); stability score, binarisation and boxes
  are computed there as SAM does, but vectorised and without RLE round trips;
* duplicates are removed with torchvision's ``batched_nms`` on the same inputs in the same
  order as SAM, so even tie-breaking matches.

Decoding and thresholding are separate steps (``decode_candidates`` then ``filter_candidates``)
so a grid search over ``pred_iou_thresh`` / ``stability_score_thresh`` reuses one decoder run:
the candidates keep every mask that passes the *loosest* thresholds of the search, already
binarised at the original size, with its scores. A mask's pixels, box and stability score do
not depend on the thresholds, only whether it survives does.

On CUDA the shared projections are matrix products of another shape than SAM's per-point
ones; cuBLAS may pick other kernels for them, so results can differ from SAM's in the last
bits of some logits (a pixel here and there), as SAM's own results do across batch sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from torchvision.ops import batched_nms

from tilesam.config import AmgParams

__all__ = [
    "Candidates",
    "MaskSet",
    "decode_candidates",
    "filter_candidates",
    "generate_masks",
    "binarise_and_score",
    "masks_to_boxes",
    "passes_threshold",
    "masks_to_labels",
    "point_grid",
    "remove_small_regions",
]

# Bytes of float32 upscaling intermediates allowed per chunk (the largest is one
# img_size x img_size plane per mask); SAM itself holds points_per_batch * 3 planes at once.
_UPSCALE_BUDGET_BYTES = 256 * 2**20


@dataclass
class MaskSet:
    """Binary masks with SAM's per-mask records, all tensors on one device.

    ``boxes`` are XYXY with inclusive maxima (SAM's convention, [0, 0, 0, 0] for an empty mask);
    ``points`` are the (x, y) prompt points in original pixel coordinates.
    """

    masks: torch.Tensor  # (N, H, W) bool
    iou_preds: torch.Tensor  # (N,) float32
    stability_scores: torch.Tensor  # (N,) float32
    boxes: torch.Tensor  # (N, 4) int64
    points: torch.Tensor  # (N, 2) float64

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    @property
    def areas(self) -> torch.Tensor:
        return self.masks.sum(dim=(-2, -1))

    def select(self, index: torch.Tensor) -> MaskSet:
        """Rows picked by a boolean mask or an index tensor, in that order."""
        return MaskSet(
            masks=self.masks[index],
            iou_preds=self.iou_preds[index],
            stability_scores=self.stability_scores[index],
            boxes=self.boxes[index],
            points=self.points[index],
        )

    @staticmethod
    def empty(shape: tuple[int, int], device: torch.device | str = "cpu") -> MaskSet:
        return MaskSet(
            masks=torch.zeros((0, *shape), dtype=torch.bool, device=device),
            iou_preds=torch.zeros(0, dtype=torch.float32, device=device),
            stability_scores=torch.zeros(0, dtype=torch.float32, device=device),
            boxes=torch.zeros((0, 4), dtype=torch.int64, device=device),
            points=torch.zeros((0, 2), dtype=torch.float64, device=device),
        )

    @staticmethod
    def concat(parts: list[MaskSet], shape: tuple[int, int], device: torch.device) -> MaskSet:
        if not parts:
            return MaskSet.empty(shape, device)
        return MaskSet(
            masks=torch.cat([p.masks for p in parts]),
            iou_preds=torch.cat([p.iou_preds for p in parts]),
            stability_scores=torch.cat([p.stability_scores for p in parts]),
            boxes=torch.cat([p.boxes for p in parts]),
            points=torch.cat([p.points for p in parts]),
        )


@dataclass
class Candidates:
    """Decoded masks in SAM's order (point-major, multimask index minor), before NMS.

    Every mask passed the prefilter ``pred_iou_thresh`` / ``stability_score_thresh`` recorded
    here; ``filter_candidates`` can apply any thresholds at least as strict.
    """

    maskset: MaskSet
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    n_points: int = 0


def point_grid(n_per_side: int) -> np.ndarray:
    """Cell-centred n x n grid in [0, 1]^2 as (x, y) rows, x varying fastest (SAM's layout)."""
    half_step = 1.0 / (2 * n_per_side)
    ticks = np.linspace(half_step, 1.0 - half_step, n_per_side)
    xs, ys = np.meshgrid(ticks, ticks, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """XYXY boxes (inclusive maxima, int64) of (N, H, W) bool masks; [0, 0, 0, 0] if empty."""
    n, h, w = masks.shape
    if n == 0:
        return torch.zeros((0, 4), dtype=torch.int64, device=masks.device)
    rows = masks.any(dim=-1).to(torch.uint8)
    cols = masks.any(dim=-2).to(torch.uint8)
    # argmax returns the first maximal index: first occupied row/column from either end.
    top = rows.argmax(dim=-1)
    bottom = (h - 1) - rows.flip(-1).argmax(dim=-1)
    left = cols.argmax(dim=-1)
    right = (w - 1) - cols.flip(-1).argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1)
    occupied = rows.any(dim=-1)
    return boxes * occupied[:, None]


def _model_dtype(model: Sam) -> torch.dtype:
    return next(model.mask_decoder.parameters()).dtype


def _prompt_points(
    points_per_side: int, original_size: tuple[int, int], img_size: int, device: torch.device
) -> tuple[np.ndarray, torch.Tensor]:
    """Grid points in original pixels and their float64 model-input coordinates (as SAM)."""
    h, w = original_size
    points = point_grid(points_per_side) * np.array([w, h], dtype=np.float64)
    coords = ResizeLongestSide(img_size).apply_coords(points, original_size)
    return points, torch.as_tensor(coords, device=device)


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


def _decode_tokens(
    model: Sam, embedding: torch.Tensor, coords: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt encoder + two-way transformer for single positive points (B of them).

    Returns the multimask IoU predictions (B, 3), mask tokens (B, n_mask_tokens, C) and the
    updated image tokens (B, h*w, C): what ``MaskDecoder.predict_masks`` computes before
    its mask head.
    """
    decoder = model.mask_decoder
    labels = torch.ones((coords.shape[0], 1), dtype=torch.int, device=coords.device)
    sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    # Without a mask prompt the dense embedding is one learned vector, the same for every point.
    image = embedding + dense[:1]
    hs, image_tokens = _run_transformer(decoder.transformer, image, model.prompt_encoder.get_dense_pe(), tokens)
    iou_preds = decoder.iou_prediction_head(hs[:, 0, :])[:, 1:]
    mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    return iou_preds, mask_tokens, image_tokens


def _decode_masks(
    model: Sam, mask_tokens: torch.Tensor, image_tokens: torch.Tensor, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """Mask head of ``MaskDecoder.predict_masks``: low-res multimask logits (B, 3, 256, 256)."""
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
    return logits[:, 1:]


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


def passes_threshold(values: torch.Tensor, thresh: float, strict: bool) -> torch.Tensor:
    """SAM's filters: none when thresh <= 0, else '>' (IoU) or '>=' (stability)."""
    if thresh <= 0.0:
        return torch.ones_like(values, dtype=torch.bool)
    return values > thresh if strict else values >= thresh


@dataclass
class _Geometry:
    """Sizes that map low-res decoder logits back to the original image, as SamPredictor does."""

    original_size: tuple[int, int]  # (H, W) of the image that was embedded
    input_size: tuple[int, int]  # its size after ResizeLongestSide, before padding
    grid_hw: tuple[int, int]  # embedding grid (64, 64)


def _decode_batch(
    model: Sam,
    embedding: torch.Tensor,
    coords: torch.Tensor,
    points: torch.Tensor,
    geometry: _Geometry,
    params: AmgParams,
) -> MaskSet | None:
    """Masks of one batch of points that pass the IoU and stability prefilters (SAM's order)."""
    iou_preds, mask_tokens, image_tokens = _decode_tokens(model, embedding, coords)
    keep = passes_threshold(iou_preds, params.pred_iou_thresh, strict=True)  # (B, 3)
    rows = keep.any(dim=1).nonzero()[:, 0]
    if rows.numel() == 0:
        return None
    if rows.numel() < keep.shape[0]:  # gathering the image tokens copies B*h*w*C floats
        mask_tokens, image_tokens = mask_tokens[rows], image_tokens[rows]
    keep = keep[rows]
    low_res = _decode_masks(model, mask_tokens, image_tokens, geometry.grid_hw)
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


@torch.inference_mode()
def decode_candidates(
    model: Sam, embedding: torch.Tensor, original_size: tuple[int, int], params: AmgParams
) -> Candidates:
    """Decode the point grid once; keep masks passing ``params``' IoU and stability thresholds.

    Use the loosest thresholds of a parameter search here and ``filter_candidates`` for each
    setting. Masks are kept binarised at ``original_size`` (H*W bytes each): with both
    thresholds at 0, that is 3 * points_per_side^2 masks.
    """
    if embedding.dim() != 4 or embedding.shape[0] != 1:
        raise ValueError(f"expected one image embedding (1, C, h, w), got {tuple(embedding.shape)}")
    device = model.device
    embedding = embedding.to(device=device, dtype=_model_dtype(model))
    original_size = (int(original_size[0]), int(original_size[1]))
    img_size = model.image_encoder.img_size
    geometry = _Geometry(
        original_size=original_size,
        input_size=ResizeLongestSide.get_preprocess_shape(*original_size, img_size),
        grid_hw=(int(embedding.shape[-2]), int(embedding.shape[-1])),
    )
    points, coords = _prompt_points(params.points_per_side, original_size, img_size, device)
    points_t = torch.as_tensor(points, device=device)
    parts = []
    for start in range(0, len(points), params.points_per_batch):
        batch = slice(start, start + params.points_per_batch)
        part = _decode_batch(model, embedding, coords[batch], points_t[batch], geometry, params)
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
    order = batched_nms(boxes.float(), scores, torch.zeros(len(boxes), dtype=torch.int64, device=device), nms_thresh)
    return replace(maskset, masks=masks, boxes=boxes).select(order)


def generate_masks(model: Sam, embedding: torch.Tensor, original_size: tuple[int, int], params: AmgParams) -> MaskSet:
    """The masks SamAutomaticMaskGenerator(crop_n_layers=0) returns, from a stored embedding.

    ``embedding`` is the image encoder output (1, C, 64, 64) for the image of
    ``original_size`` (H, W), on the model's device.
    """
    candidates = decode_candidates(model, embedding, original_size, params)
    masks = filter_candidates(candidates, params.pred_iou_thresh, params.stability_score_thresh, params.box_nms_thresh)
    if params.min_mask_region_area > 0:
        nms = max(params.box_nms_thresh, params.crop_nms_thresh)
        masks = remove_small_regions(masks, params.min_mask_region_area, nms)
    return masks


def _relabel_consecutive(labels: np.ndarray) -> np.ndarray:
    """Map the ids present (0 stays 0) to 1..M, keeping their order."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    lookup = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint32)
    lookup[ids] = np.arange(1, len(ids) + 1, dtype=np.uint32)
    return lookup[labels]


def masks_to_labels(
    maskset: MaskSet,
    shape: tuple[int, int] | None = None,
    with_background: bool = False,
) -> np.ndarray:
    """Paint masks into a uint32 label image, largest first so smaller masks end on top.

    Ids are 1..N consecutive in painting order (ties in area keep the MaskSet's order, as
    micro-sam's stable sort does); masks fully painted over vanish. ``with_background`` is
    micro-sam's option (pass ``AmgParams.with_background`` to follow it): the label covering
    the most pixels becomes background when it covers more than the unlabelled area.
    """
    shape = maskset.shape if shape is None else (int(shape[0]), int(shape[1]))
    if maskset.shape != shape:
        raise ValueError(f"masks have shape {maskset.shape}, expected {shape}")
    if len(maskset) == 0:
        return np.zeros(shape, dtype=np.uint32)
    areas = maskset.areas.cpu().numpy()
    order = torch.as_tensor(np.argsort(-areas, kind="stable"), device=maskset.masks.device)
    labels = _paint_last_wins(maskset.masks[order])
    labels = labels.cpu().numpy().astype(np.uint32)
    if with_background:
        counts = np.bincount(labels.ravel())
        largest = int(np.argmax(counts))
        if largest != 0:
            labels[labels == largest] = 0
    return _relabel_consecutive(labels)


def _paint_last_wins(masks: torch.Tensor, budget: int = 2**24) -> torch.Tensor:
    """Label image where each pixel gets 1 + the index of the last mask covering it.

    Masks are taken in chunks of about ``budget`` pixels so the int32 stack stays small.
    """
    n, h, w = masks.shape
    chunk = max(1, budget // (h * w))
    labels = torch.zeros((h, w), dtype=torch.int32, device=masks.device)
    for start in range(0, n, chunk):
        block = masks[start : start + chunk]
        ids = torch.arange(start + 1, start + 1 + block.shape[0], dtype=torch.int32, device=masks.device)
        labels = torch.maximum(labels, (block * ids[:, None, None]).amax(dim=0))
    return labels
