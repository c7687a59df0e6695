"""Decoded binary masks with SAM's per-mask records, and the small helpers both AMG prompt grids share."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Candidates", "MaskSet", "masks_to_boxes", "passes_threshold"]


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


def passes_threshold(values: torch.Tensor, thresh: float, strict: bool) -> torch.Tensor:
    """SAM's filters: none when thresh <= 0, else '>' (IoU) or '>=' (stability)."""
    if thresh <= 0.0:
        return torch.ones_like(values, dtype=torch.bool)
    return values > thresh if strict else values >= thresh
