"""tilesam.resize against segment_anything's ResizeLongestSide, the oracle it replaces (SamPredictor's geometry)."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything.utils.transforms import ResizeLongestSide

from tilesam.resize import resized_shape, scale_boxes, scale_points


@pytest.mark.parametrize("side", [256, 1024])
@pytest.mark.parametrize("shape", [(512, 512), (640, 384), (129, 1000), (7, 3), (1023, 1025)])
def test_shapes_points_and_boxes_are_resize_longest_sides_bit_for_bit(shape, side):
    rng = np.random.default_rng(sum(shape) + side)
    sam = ResizeLongestSide(side)
    assert resized_shape(*shape, side) == sam.get_preprocess_shape(*shape, side)
    points = rng.uniform(0, max(shape), size=(5, 3, 2))
    np.testing.assert_array_equal(scale_points(points, shape, side), sam.apply_coords(points, shape))
    boxes = rng.integers(0, max(shape), size=(6, 4))  # integer input comes back as float64, as SAM's
    scaled = scale_boxes(boxes, shape, side)
    assert scaled.dtype == np.float64 and scaled.shape == (6, 4)
    np.testing.assert_array_equal(scaled, sam.apply_boxes(boxes, shape))
    assert boxes.dtype.kind == "i"  # the input is not changed
