"""SAM's input geometry: a window resized so its longest side is the model's input side, and prompts
(points, boxes) in the resized frame.

The same arithmetic as segment_anything's ``ResizeLongestSide`` (which SamPredictor uses), without
importing it: its module imports torchvision and, through it, torch._dynamo, about 1 CPU-s of a
job's start that a decoder job does not otherwise pay.
"""

from __future__ import annotations

import numpy as np

__all__ = ["resized_shape", "scale_boxes", "scale_points"]


def resized_shape(height: int, width: int, side: int) -> tuple[int, int]:
    """The window's shape once its longest side is ``side`` (rounded half up, as SAM does)."""
    scale = side / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def scale_points(points: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """x, y points (``(..., 2)``) of a window of ``original_size`` (H, W) in its resized frame, as float64."""
    height, width = original_size
    new_height, new_width = resized_shape(height, width, side)
    scaled = np.array(points, dtype=np.float64)
    scaled[..., 0] *= new_width / width
    scaled[..., 1] *= new_height / height
    return scaled


def scale_boxes(boxes: np.ndarray, original_size: tuple[int, int], side: int) -> np.ndarray:
    """x0, y0, x1, y1 boxes (``(n, 4)``) in the resized frame: their two corners as points."""
    return scale_points(np.asarray(boxes).reshape(-1, 2, 2), original_size, side).reshape(-1, 4)
