"""Training targets and loss of micro-sam's instance-segmentation decoder (see :mod:`tilesam.models.unetr`).

The targets equal torch-em's ``PerObjectDistanceTransform(distances=True, boundary_distances=True,
directed_distances=False, foreground=True)`` (its defaults otherwise: connected components first,
``min_size=0``, background fill 1.0, eps 1e-7), which micro-sam trains its decoder on; the loss equals
torch-em's ``DiceBasedDistanceLoss(mask_distances_in_bg=True)``. tilesam computes both itself (numpy,
scipy, scikit-image, torch) because torch-em is not a runtime dependency; ``tests/finetune/test_targets.py``
proves them equal to torch-em's.

Per object (pixels of one connected component of equal label), within its bounding box:

- centre: the rounded centroid, or where that lies outside the object the object's pixel farthest from
  the boundary; centre distance = Euclidean distance to it, divided by its maximum over the object.
- boundary distance: Euclidean distance to the nearest inner-boundary pixel (``find_boundaries(mode="inner")``
  of the whole label image, so a touching neighbour's boundary counts), inverted (maximum minus it) and
  divided by its maximum: 0 at the object's most interior point, about 1 on its boundary.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label, regionprops
from skimage.segmentation import find_boundaries
from torch import Tensor

__all__ = ["EPS", "batch_targets", "decoder_loss", "dice_loss", "instance_targets"]

EPS = 1e-7
"""torch-em's eps, both in the distance normalisation and in the dice denominator."""


def _object_distances(
    mask: np.ndarray, boundary: np.ndarray, centroid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised centre and inverted boundary distance of one object (both 0 outside ``mask``)."""
    to_boundary = ndimage.distance_transform_edt(~boundary) if boundary.any() else np.zeros(mask.shape)
    to_boundary[~mask] = 0
    peak = np.unravel_index(np.argmax(to_boundary), mask.shape)
    centre = centroid if mask[centroid] else peak
    yy, xx = np.ogrid[: mask.shape[0], : mask.shape[1]]
    to_centre = np.sqrt((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2)
    inverted = to_boundary[peak] - to_boundary
    to_centre[~mask], inverted[~mask] = 0, 0
    return to_centre / (to_centre.max() + EPS), inverted / (np.abs(inverted).max() + EPS)


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """float32 [3, H, W] targets of a 2D instance label image: foreground, centre distance, boundary distance.

    Background is 0 in the foreground channel and 1 in both distance channels. Ids need not be
    consecutive; a label split into several connected parts gives one object per part.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"instance_targets: expects a 2D label image (H, W), got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"instance_targets: labels must be integers (0 = background), got dtype {labels.dtype}")
    objects = label(labels, background=0)  # connectivity = ndim, as torch-em's connected components
    boundaries = find_boundaries(objects, mode="inner")
    targets = np.ones((3, *labels.shape), np.float32)
    targets[0] = objects > 0
    for prop in regionprops(objects):
        box = prop.slice
        mask = prop.image
        centroid = tuple(int(c) - s.start for c, s in zip(np.round(prop.centroid), box))
        centre, inverted = _object_distances(mask, boundaries[box], centroid)
        targets[1][box][mask] = centre[mask]
        targets[2][box][mask] = inverted[mask]
    return targets


def dice_loss(pred: Tensor, target: Tensor) -> Tensor:
    """1 - Dice over all pixels of the batch: 1 - 2 sum(p t) / (sum(p^2) + sum(t^2)), denominator >= eps."""
    denominator = (pred * pred).sum() + (target * target).sum()
    return 1.0 - 2.0 * (pred * target).sum() / denominator.clamp(min=EPS)


def decoder_loss(pred: Tensor, target: Tensor) -> Tensor:
    """The decoder's training loss: dice of the foreground plus dice of both distance maps inside the foreground.

    ``pred`` are the decoder's sigmoid maps and ``target`` the :func:`instance_targets` of the same
    pixels, both [B, 3, H, W]. Distances are masked with the target foreground on both sides, so the
    background value 1 of the targets never enters the loss.
    """
    if pred.shape != target.shape or pred.ndim != 4 or pred.shape[1] != 3:
        raise ValueError(
            f"decoder_loss: pred and target must both be [B, 3, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    target = target.to(pred.dtype)
    foreground = target[:, 0:1]
    loss = dice_loss(pred[:, 0:1], foreground)
    for channel in (1, 2):
        loss = loss + dice_loss(
            pred[:, channel : channel + 1] * foreground, target[:, channel : channel + 1] * foreground
        )
    return loss


def batch_targets(labels: list[np.ndarray] | np.ndarray, device: str | torch.device = "cpu") -> Tensor:
    """The stacked :func:`instance_targets` of several label images as a float32 [B, 3, H, W] tensor."""
    return torch.from_numpy(np.stack([instance_targets(x) for x in labels])).to(device)
