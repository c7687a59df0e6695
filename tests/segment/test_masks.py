"""Mask records: boxes as SAM computes them."""

from __future__ import annotations

import numpy as np
import torch
from segment_anything.utils.amg import batched_mask_to_box

from tilesam.segment.masks import masks_to_boxes


def test_masks_to_boxes_matches_sam():
    rng = np.random.default_rng(1)
    masks = rng.random((20, 17, 23)) < 0.02
    masks[3] = False  # empty -> [0, 0, 0, 0]
    masks = torch.as_tensor(masks)
    assert torch.equal(masks_to_boxes(masks), batched_mask_to_box(masks))
