"""Where AMG puts its prompts: SAM's point grid, and boxes of a few sizes centred on it."""

from __future__ import annotations

import numpy as np

__all__ = ["box_grid", "point_grid"]


def point_grid(n_per_side: int) -> np.ndarray:
    """Cell-centred n x n grid in [0, 1]^2 as (x, y) rows, x varying fastest (SAM's layout)."""
    half_step = 1.0 / (2 * n_per_side)
    ticks = np.linspace(half_step, 1.0 - half_step, n_per_side)
    xs, ys = np.meshgrid(ticks, ticks, indexing="xy")
    return np.stack([xs.ravel(), ys.ravel()], axis=-1)


def box_grid(points_per_side: int, sizes: tuple[float, ...], original_size: tuple[int, int]) -> np.ndarray:
    """XYXY boxes (float, original pixels) centred on SAM's point grid, one per size, clipped."""
    h, w = original_size
    centres = point_grid(points_per_side) * np.array([w, h], dtype=np.float64)
    half = np.array(sizes, dtype=np.float64)[:, None] * max(h, w) / 2  # (S, 1)
    boxes = [np.concatenate([centres - hs, centres + hs], axis=1) for hs in half]
    boxes = np.concatenate(boxes)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w - 1)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h - 1)
    return boxes
