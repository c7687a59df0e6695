"""AMG prompt grids: SAM's point grid, and boxes centred on it."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything.utils.amg import build_point_grid

from tilesam.segment.grids import box_grid, point_grid


@pytest.mark.parametrize("n", [1, 5, 32])
def test_point_grid_matches_sam(n):
    np.testing.assert_array_equal(point_grid(n), build_point_grid(n))


def test_box_grid_is_centred_on_the_point_grid_and_clipped():
    boxes = box_grid(2, (0.1, 0.5), (100, 200))
    assert boxes.shape == (8, 4)
    centres = (boxes[:4, :2] + boxes[:4, 2:]) / 2
    np.testing.assert_allclose(centres, [[50, 25], [150, 25], [50, 75], [150, 75]])
    np.testing.assert_allclose(boxes[0], [40, 15, 60, 35])  # side 0.1 * 200
    assert boxes[:, [0, 1]].min() >= 0 and boxes[:, 2].max() <= 199 and boxes[:, 3].max() <= 99
