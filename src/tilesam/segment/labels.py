"""Painting a set of masks into one label image, as micro-sam does (largest first, smaller on top)."""

from __future__ import annotations

import numpy as np
import torch

from tilesam.segment.masks import MaskSet

__all__ = ["masks_to_labels"]


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
