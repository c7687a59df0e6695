"""The training signal: corrective clicks go where the mask is wrong, the Dice loss spans 0..1, and
backpropagating each pass at once gives the gradient of the summed loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers.finetune import TINY
from tilesam.finetune.cache import EmbeddingCache
from tilesam.finetune.data import ImageSet, Sample
from tilesam.finetune.loss import TrainingPrompts, add_corrections, dice_loss, view_loss
from tilesam.finetune.views import View
from tilesam.models import resolve
from tilesam.models.unetr import InstanceDecoder


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


@pytest.mark.parametrize("encoder", ["frozen", "trained"])
def test_backward_per_pass_gives_the_gradient_of_the_summed_loss(lite_medsam, data, embeddings, encoder):
    """view_loss backpropagates each pass (and the decoder's loss) at once: the gradient of one backward.

    A trained encoder gets its gradient gathered on the embedding and sent through it once.
    """
    images = ImageSet([Sample(im, lab) for im, lab in zip(*data)])
    trained = encoder == "trained"
    parts = ("image_encoder", "mask_decoder", "decoder") if trained else ("mask_decoder", "decoder")
    config = replace(TINY, sub_iterations=3, objects_per_image=3, train_parts=parts).for_device(
        "cpu"
    )  # decoder_crop 16
    cache = None if trained else EmbeddingCache(lite_medsam, resolve("lite_medsam").sha256, embeddings)
    torch.manual_seed(0)
    decoder = InstanceDecoder(upscale=4)
    params = [*lite_medsam.mask_decoder.parameters(), *decoder.parameters()]
    if trained:
        params += list(lite_medsam.image_encoder.neck.parameters())

    def gradients(per_pass: bool) -> list[torch.Tensor]:
        for p in params:
            p.requires_grad_(True)
            p.grad = None
        rng = np.random.default_rng(1)
        backward = (lambda loss: loss.backward()) if per_pass else None
        parts = view_loss(lite_medsam, images, View(0, None, 0), cache, rng, config, decoder=decoder, backward=backward)
        if not per_pass:
            parts.total.backward()
        return [p.grad.clone() for p in params]

    one, per_pass = gradients(False), gradients(True)
    assert all(g.abs().sum() > 0 for g in [*one[:3], *one[-3:]])
    for a, b in zip(one, per_pass):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    for p in params:
        p.grad = None
