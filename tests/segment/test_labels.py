"""Painting masks into a label image: largest first, ids consecutive, micro-sam's background option."""

from __future__ import annotations

import numpy as np
import torch

from tilesam.segment.labels import masks_to_labels
from tilesam.segment.masks import MaskSet, masks_to_boxes


def _maskset(masks: np.ndarray) -> MaskSet:
    m = torch.as_tensor(masks)
    n = len(m)
    return MaskSet(m, torch.ones(n), torch.ones(n), masks_to_boxes(m), torch.zeros((n, 2), dtype=torch.float64))


def test_masks_to_labels_paints_largest_first_and_relabels():
    masks = np.zeros((4, 10, 10), dtype=bool)
    masks[0, 2:4, 2:4] = True  # small, inside the big one: stays on top
    masks[1, :, :6] = True  # big
    masks[2, 6:8, 6:8] = True  # 4 px, painted over by mask 3 (equal area, later in order)
    masks[3, 6:8, 6:8] = True
    labels = masks_to_labels(_maskset(masks), (10, 10))
    assert labels.dtype == np.uint32
    assert sorted(np.unique(labels)) == [0, 1, 2, 3]  # one mask fully overwritten, ids consecutive
    assert labels[0, 0] == 1  # largest painted first -> id 1
    assert len(np.unique(labels[2:4, 2:4])) == 1 and labels[2, 2] not in (0, labels[0, 0])
    assert (labels[masks[1] & ~masks[0]] == labels[0, 0]).all()
    assert len(np.unique(labels[6:8, 6:8])) == 1 and labels[6, 6] not in (0, 1, labels[2, 2])
    assert (labels[~masks.any(axis=0)] == 0).all()


def test_masks_to_labels_with_background_drops_dominant_label():
    masks = np.zeros((2, 10, 10), dtype=bool)
    masks[0, :, :8] = True  # 80 px > 20 px unlabelled: taken as background
    masks[1, 1:3, 1:3] = True
    dropped = masks_to_labels(_maskset(masks), (10, 10), with_background=True)
    assert sorted(np.unique(dropped)) == [0, 1] and (dropped[1:3, 1:3] == 1).all()
    masks[0, :, :] = False
    masks[0, :4, :4] = True  # now smaller than the unlabelled area: kept
    kept = masks_to_labels(_maskset(masks), (10, 10), with_background=True)
    assert sorted(np.unique(kept)) == [0, 1, 2]
