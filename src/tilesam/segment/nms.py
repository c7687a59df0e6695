"""Mask non-maximum suppression and painting, as micro-sam 1.8's ``util.apply_nms`` (APG's last step).

micro-sam's steps, each reproduced value for value (float32 where micro-sam computes in float32,
so that a threshold compares the same number):

1. masks of at most ``min_size`` pixels are dropped (none when ``min_size`` is 0);
2. score = predicted IoU x stability score (float32);
3. pairwise overlap: intersection over union, or intersection / (smaller area + 1e-6) with
   ``intersection_over_min``, counted only for pairs whose boxes (SAM's inclusive XYXY) overlap by
   more than one row and column (micro-sam's box gate: a pair whose boxes share a single row or
   column counts as not overlapping);
4. greedy NMS in the order of ``torch.argsort(scores, descending=True)``: a mask whose overlap
   with a kept one exceeds ``nms_threshold`` is dropped;
5. painting (``util.mask_data_to_segmentation``): the kept masks, largest first, each onto pixels
   still unlabelled; then connected components (4-neighbours, by value), pieces under ``min_size``
   pixels removed, ids renumbered 1..n.

micro-sam computes the overlaps with whole-image boolean operations for every box-overlapping
pair, in a Python loop over the pairs; here each mask's intersections with all its partners are
counted at once, on bit-packed masks, inside its box, which holds every common pixel: the same
counts, at the cost of the boxes, not the window, and one loop step per mask, not per pair. The
overlaps do not depend on which masks survive step 1, so the parameter search computes them once
per set of masks (`Overlaps`) and reuses them for every minimum size and NMS threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential

from tilesam.segment.masks import MaskSet

__all__ = ["Overlaps", "apply_nms", "nms_keep", "overlaps", "paint", "size_keep"]

IOMIN_EPS = 1e-6  # micro-sam's eps in intersection / (min area + eps)


@dataclass(frozen=True)
class Overlaps:
    """Pairwise overlaps of one set of masks, both kinds, (N, N) float32 (0 where the boxes do not overlap)."""

    iou: torch.Tensor
    iomin: torch.Tensor

    def of(self, intersection_over_min: bool) -> torch.Tensor:
        return self.iomin if intersection_over_min else self.iou


def _box_gate(boxes: torch.Tensor) -> torch.Tensor:
    """micro-sam's ``_overlap_matrix``: the boxes' common part is more than one row and one column."""
    x0 = torch.max(boxes[:, None, 0], boxes[:, 0])
    y0 = torch.max(boxes[:, None, 1], boxes[:, 1])
    x1 = torch.min(boxes[:, None, 2], boxes[:, 2])
    y1 = torch.min(boxes[:, None, 3], boxes[:, 3])
    return (torch.clamp(x1 - x0, min=0) * torch.clamp(y1 - y0, min=0)) > 0


def overlaps(masks: torch.Tensor, boxes: torch.Tensor) -> Overlaps:
    """IoU and intersection-over-min of every pair of (N, H, W) bool masks with inclusive XYXY `boxes`.

    Intersections are counted on the masks packed 8 pixels a byte, one mask against all its
    box-gated partners at once, inside the first mask's box: a common pixel lies in both boxes, so
    the count is exact; the partners' pixels outside that box, or in the packed bytes it cuts, are
    outside the first mask and count nothing.
    """
    n = masks.shape[0]
    boxes = boxes.cpu().to(torch.int64)
    packed = np.packbits(masks.cpu().numpy(), axis=-1)  # (N, H, ceil(W / 8)) uint8
    areas = torch.from_numpy(np.bitwise_count(packed).sum(axis=(1, 2), dtype=np.int64))
    gate = _box_gate(boxes)
    upper = torch.triu(gate, diagonal=1).numpy()
    inter = np.zeros((n, n), dtype=np.int64)
    for i in np.flatnonzero(upper.any(axis=1)):
        partners = np.flatnonzero(upper[i])
        x0, y0, x1, y1 = boxes[i].tolist()
        rows, cols = slice(y0, y1 + 1), slice(x0 // 8, x1 // 8 + 1)
        common = packed[partners, rows, cols] & packed[i, rows, cols]
        inter[i, partners] = np.bitwise_count(common).sum(axis=(1, 2), dtype=np.int64)
    inter = torch.from_numpy(inter + inter.T)
    union = areas[:, None] + areas[None, :] - inter
    iou = torch.where(gate, inter / union.clamp(min=1), torch.zeros((), dtype=torch.float32))
    smaller = torch.minimum(areas[:, None], areas[None, :]).to(torch.float32)
    iomin = torch.where(gate, inter.to(torch.float32) / (smaller + IOMIN_EPS), torch.zeros((), dtype=torch.float32))
    return Overlaps(iou.to(torch.float32), iomin)


def size_keep(areas: torch.Tensor, min_size: int) -> torch.Tensor:
    """Indices of the masks larger than `min_size` pixels (all when it is 0), in order."""
    if min_size <= 0:
        return torch.arange(len(areas))
    return torch.nonzero(areas > min_size)[:, 0]


def nms_keep(scores: torch.Tensor, overlap: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy NMS: indices kept, best score first; a mask overlapping a kept one by more than `threshold` goes."""
    order = torch.argsort(scores, descending=True)
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(int(i))
        if len(order) == 1:
            break
        order = order[1:][overlap[i, order[1:]] <= threshold]
    return torch.tensor(keep, dtype=torch.int64)


def paint(masks: torch.Tensor, shape: tuple[int, int], min_size: int) -> np.ndarray:
    """Masks (in NMS order) painted largest first onto unlabelled pixels; 4-connected pieces under `min_size` dropped."""
    labels = np.zeros(shape, dtype=np.uint32)
    if masks.shape[0] == 0:
        return labels
    areas = masks.sum(dim=(-2, -1)).tolist()
    for seg_id, k in enumerate(sorted(range(len(areas)), key=lambda k: areas[k], reverse=True), start=1):
        mask = masks[k].cpu().numpy()
        labels[mask & (labels == 0)] = seg_id
    labels = connected_components(labels, background=0, connectivity=1).astype(np.uint32, copy=False)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


def apply_nms(
    maskset: MaskSet,
    min_size: int,
    nms_threshold: float,
    intersection_over_min: bool,
    pairs: Overlaps | None = None,
) -> np.ndarray:
    """Instance labels of a window's decoded masks, as micro-sam's ``apply_nms`` (`pairs`: their overlaps, if known)."""
    keep = size_keep(maskset.areas.cpu(), min_size)
    if len(keep) == 0:
        return np.zeros(maskset.shape, dtype=np.uint32)
    pairs = pairs or overlaps(maskset.masks, maskset.boxes)
    scores = (maskset.iou_preds.cpu() * maskset.stability_scores.cpu()).to(torch.float32)[keep]
    overlap = pairs.of(intersection_over_min)[keep][:, keep]
    kept = keep[nms_keep(scores, overlap, nms_threshold)]
    return paint(maskset.masks[kept], maskset.shape, min_size)
