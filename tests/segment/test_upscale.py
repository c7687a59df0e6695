"""tilesam.segment.upscale against segment-anything's ``Sam.postprocess_masks`` + thresholds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tilesam.segment.masks import masks_to_boxes
from tilesam.segment.upscale import _bilinear, binarise

OFFSET = 1.0


def _reference(low_res, model_size, input_size, original_size, threshold):
    """What Sam.postprocess_masks does (its code path, spelled out), then SAM's mask and stability score."""
    up = F.interpolate(low_res[:, None], (model_size, model_size), mode="bilinear", align_corners=False)
    up = up[..., : input_size[0], : input_size[1]]
    logits = F.interpolate(up, original_size, mode="bilinear", align_corners=False)[:, 0]
    inner = (logits > threshold + OFFSET).sum(dim=(-2, -1)).to(torch.int32)
    outer = (logits > threshold - OFFSET).sum(dim=(-2, -1)).to(torch.int32)
    masks = logits > threshold
    return masks, inner / outer, masks_to_boxes(masks)


def _logits(n: int, side: int, seed: int) -> torch.Tensor:
    """Blobs of every size (one cell to most of the window) in a sea of strongly negative logits, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    out = np.empty((n, side, side), np.float32)
    for i in range(n):
        cy, cx = rng.uniform(0, side, 2)
        radius = rng.choice([0.6, 3, 10, side / 2])
        out[i] = 4 * (1 - np.hypot(yy - cy, xx - cx) / radius) + rng.normal(0, 0.3, (side, side))
        out[i] = np.maximum(out[i], -12)
    return torch.from_numpy(out)


@pytest.mark.parametrize(
    "low, model_size, input_size, original_size",
    [
        (256, 1024, (1024, 1024), (1152, 1152)),  # an APG window of vit_b
        (256, 1024, (1024, 768), (640, 480)),  # a non-square tile: padding in x, downscaled
        (256, 1024, (683, 1024), (1000, 1500)),
        (256, 256, (256, 200), (300, 234)),  # LiteMedSAM: the first resize is the identity
    ],
)
def test_equals_postprocess_masks_and_thresholds(low, model_size, input_size, original_size):
    low_res = _logits(24, low, seed=sum(original_size))
    low_res[0] = -5.0  # nothing above either threshold: stability 0 / 0
    low_res[1] = 3.0  # everything above
    low_res[2, : low * input_size[0] // model_size] = -5.0  # candidates only in the padding (or none)
    low_res[2, :, low * input_size[1] // model_size :] = -5.0
    masks, stability, boxes = binarise(low_res, model_size, input_size, original_size, 0.0, OFFSET)
    ref_masks, ref_stability, ref_boxes = _reference(low_res, model_size, input_size, original_size, 0.0)
    differ = (masks != ref_masks).sum(dim=(1, 2))
    assert differ.max() <= 2, differ  # float rounding at the threshold, if at all
    torch.testing.assert_close(stability, ref_stability, rtol=0, atol=1e-3, equal_nan=True)
    same = differ == 0
    assert torch.equal(boxes[same], ref_boxes[same])
    assert 0 < ref_masks.sum(dim=(1, 2)).float().median() < original_size[0] * original_size[1] / 4  # mixed sizes


def test_bilinear_weights_are_pytorchs():
    for n_in, n_out in [(256, 1024), (1024, 1152), (683, 1000), (256, 256), (7, 3)]:
        x = torch.randn(n_in)  # float32: PyTorch computes the source indices in the input's precision
        theirs = F.interpolate(x[None, None, None], (1, n_out), mode="bilinear", align_corners=False)[0, 0, 0]
        np.testing.assert_allclose(_bilinear(n_in, n_out) @ x.double().numpy(), theirs.numpy(), rtol=0, atol=1e-6)
