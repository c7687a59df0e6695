import numpy as np

from tilesam.segment.box_amg import box_grid


def test_box_grid_is_centred_on_the_point_grid_and_clipped():
    boxes = box_grid(2, (0.1, 0.5), (100, 200))
    assert boxes.shape == (8, 4)
    centres = (boxes[:4, :2] + boxes[:4, 2:]) / 2
    np.testing.assert_allclose(centres, [[50, 25], [150, 25], [50, 75], [150, 75]])
    np.testing.assert_allclose(boxes[0], [40, 15, 60, 35])  # side 0.1 * 200
    assert boxes[:, [0, 1]].min() >= 0 and boxes[:, 2].max() <= 199 and boxes[:, 3].max() <= 99
