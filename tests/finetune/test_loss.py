"""The training signal: corrective clicks go where the mask is wrong, and the Dice loss spans 0..1."""

from __future__ import annotations

import numpy as np
import torch

from tilesam.finetune.loss import TrainingPrompts, add_corrections, dice_loss


def test_corrections_add_a_click_per_error_kind_and_pad_missing_ones():
    true = np.zeros((2, 20, 20), bool)
    true[:, 5:15, 5:15] = True
    pred = true.copy()
    pred[0, 5:15, 5:8] = False  # object 0: missed part only
    start = TrainingPrompts(None, None, np.array([[5, 5, 15, 15]] * 2, float), multimask=False)
    out = add_corrections(start, true, pred, np.random.default_rng(0))
    assert out.points.shape == (2, 2, 2) and out.boxes is start.boxes
    assert out.labels.tolist() == [[1, -1], [-1, -1]]
    x, y = out.points[0, 0]
    assert true[0, int(y), int(x)] and not pred[0, int(y), int(x)]


def test_dice_loss_is_zero_for_a_perfect_mask_and_one_for_an_empty_one():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    assert float(dice_loss((target * 2 - 1) * 50, target)) < 0.02
    assert float(dice_loss(torch.full_like(target, -50.0), target)) > 0.9
