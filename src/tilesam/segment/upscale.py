"""SAM's mask upscaling and binarising, computed only where a mask can be.

``Sam.postprocess_masks`` resizes every low-res mask (256 x 256 logits) bilinearly to the model input
(1024 x 1024), crops the padding and resizes again to the original size: two full planes a prompt,
then three comparisons over the last one (mask, and the stability score's two). For a cell in a
1152-pixel window almost all of that is far below the threshold.

Both resizes are linear maps along each axis with non-negative weights that sum to one, so a pixel's
value lies between its source logits: where every low-res logit a pixel reads is at most the lower
stability threshold, the pixel counts for nothing. So per mask only the output rows and columns that
read a low-res logit above that threshold are computed, as ``A_y[rows] @ L @ A_x[cols]^T`` with the
composed weight matrices of the two resizes (PyTorch's bilinear, align_corners False). Results equal
``postprocess_masks`` up to float rounding (``tests/segment/test_upscale.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from segment_anything.modeling import Sam

__all__ = ["binarise", "is_sams_postprocessing"]


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of PyTorch's 1D bilinear resize of float32 data, align_corners False.

    Its CPU kernel computes a source index as one fused multiply-add in float32 (emulated here in
    float64, rounded once), clamps it at 0 and weights the two neighbours by the fraction.
    """
    scale = np.float32(np.float32(n_in) / np.float32(n_out))
    dst = np.arange(n_out, dtype=np.float64)
    source = np.maximum((np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0))
    low = source.astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = source - low.astype(np.float32)
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, low), (np.float32(1) - frac).astype(np.float64))
    np.add.at(weights, (rows, high), frac.astype(np.float64))
    return weights


@dataclass(frozen=True)
class _Axis:
    """One axis of the two resizes: composed weights (out, low) and, per output index, the low-res span it reads."""

    weights: torch.Tensor
    first: np.ndarray  # first low-res index each output index reads
    last: np.ndarray  # last one
    reads_from: np.ndarray  # per low-res index: the first output index that reads it
    reads_to: np.ndarray  # per low-res index: one past the last output index that reads it


@lru_cache(maxsize=16)
def _axis(low: int, model: int, keep: int, out: int) -> _Axis:
    composed = _bilinear(keep, out) @ _bilinear(low, model)[:keep]
    reads = composed > 0
    idx = np.arange(low)
    cover = [np.flatnonzero(reads[:, i]) for i in idx]
    return _Axis(
        weights=torch.from_numpy(composed.astype(np.float32)),
        first=reads.argmax(axis=1),
        last=low - 1 - reads[:, ::-1].argmax(axis=1),
        # low-res indices that no output reads (the padding) take their neighbours' bounds
        reads_from=np.minimum.accumulate(np.array([c[0] if len(c) else out for c in cover])[::-1])[::-1],
        reads_to=np.maximum.accumulate(np.array([c[-1] + 1 if len(c) else 0 for c in cover])),
    )


def is_sams_postprocessing(model: Sam) -> bool:
    """Whether the model upscales masks as ``segment_anything``'s ``Sam`` does (else use its own method)."""
    return type(model).postprocess_masks is Sam.postprocess_masks


def _span(above: torch.Tensor) -> tuple[int, int] | None:
    hits = torch.nonzero(above)
    return None if len(hits) == 0 else (int(hits[0]), int(hits[-1]))


def binarise(
    low_res: torch.Tensor,
    model_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    threshold: float,
    offset: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks (N, H, W) bool, stability scores (N,) and XYXY boxes (N, 4) of low-res logits (N, h, w).

    As ``postprocess_masks`` followed by ``logits > threshold`` and SAM's stability score
    ``|logits > threshold + offset| / |logits > threshold - offset|`` (NaN for a mask with no pixel above
    the lower threshold, as that formula gives); boxes as ``masks.masks_to_boxes``.
    """
    n, h, w = low_res.shape
    height, width = original_size
    ys = _axis(h, model_size, int(input_size[0]), int(height))
    xs = _axis(w, model_size, int(input_size[1]), int(width))
    device = low_res.device
    ay, ax = ys.weights.to(device), xs.weights.to(device)
    masks = torch.zeros((n, height, width), dtype=torch.bool, device=device)
    inner = torch.zeros(n, dtype=torch.int64)
    outer = torch.zeros(n, dtype=torch.int64)
    boxes = torch.zeros((n, 4), dtype=torch.int64)
    candidates = low_res > threshold - offset
    row_any, col_any = candidates.any(dim=2).cpu(), candidates.any(dim=1).cpu()
    for i in range(n):
        rows, cols = _span(row_any[i]), _span(col_any[i])
        if rows is None:
            continue
        y0, y1 = ys.reads_from[rows[0]], ys.reads_to[rows[1]]  # output rows that read a candidate
        x0, x1 = xs.reads_from[cols[0]], xs.reads_to[cols[1]]
        if y0 >= y1 or x0 >= x1:  # candidates only in the padding
            continue
        r0, r1 = ys.first[y0], ys.last[y1 - 1] + 1  # everything those rows read
        c0, c1 = xs.first[x0], xs.last[x1 - 1] + 1
        values = ay[y0:y1, r0:r1] @ low_res[i, r0:r1, c0:c1] @ ax[x0:x1, c0:c1].T
        mask = values > threshold
        masks[i, y0:y1, x0:x1] = mask
        inner[i] = int((values > threshold + offset).sum())
        outer[i] = int((values > threshold - offset).sum())
        if mask.any():
            my, mx = torch.nonzero(mask.any(dim=1)), torch.nonzero(mask.any(dim=0))
            boxes[i] = torch.tensor([x0 + int(mx[0]), y0 + int(my[0]), x0 + int(mx[-1]), y0 + int(my[-1])])
    stability = inner.to(torch.int32) / outer.to(torch.int32)
    return masks, stability.to(device), boxes.to(device)
