"""Views: the crops and dihedral variants of an image that training draws, and their targets in the input frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.utils.transforms import ResizeLongestSide

from tilesam.config import FinetuneConfig
from tilesam.finetune.data import FinetuneError, ImageSet

Window = tuple[int, int, int, int]  # y0, x0, height, width


@dataclass(frozen=True)
class View:
    """One training input: an image (or a crop of it) under one dihedral transform (0..7)."""

    image: int
    window: Window | None
    transform: int


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms (k % 4 quarter turns, then a flip for k >= 4)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def crop_windows(shape: tuple[int, int], crop: int) -> list[Window]:
    """Crops of side ``crop`` at half-crop steps covering the image (the image if it is smaller)."""
    h, w = min(crop, shape[0]), min(crop, shape[1])

    def starts(size: int, side: int) -> list[int]:
        if size <= side:
            return [0]
        return sorted(set(list(range(0, size - side, side // 2)) + [size - side]))

    return [(y, x, h, w) for y in starts(shape[0], h) for x in starts(shape[1], w)]


def view_pixels(images: ImageSet, view: View) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, labels) of a view."""
    rgb, labels = images.rgb[view.image], images.labels[view.image]
    if view.window is not None:
        y, x, h, w = view.window
        rgb, labels = rgb[y : y + h, x : x + w], labels[y : y + h, x : x + w]
    return dihedral(rgb, view.transform), dihedral(labels, view.transform)


def frame_shape(shape: tuple[int, int], img_size: int) -> tuple[int, int]:
    """Size of an image of ``shape`` in the model's input frame (longest side = img_size)."""
    return ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], img_size)


@dataclass(frozen=True)
class FrameTargets:
    """A view's objects in the model's input frame: labels resized, and the ids big enough to train on."""

    labels: np.ndarray  # (fh, fw)
    ids: np.ndarray

    def masks(self, ids: np.ndarray) -> np.ndarray:
        """(n, fh, fw) boolean masks of the given objects."""
        return self.labels[None] == np.asarray(ids)[:, None, None]


def frame_targets(labels: np.ndarray, img_size: int, min_pixels: int) -> FrameTargets:
    """Nearest-neighbour resize of the labels to the input frame; objects of at least min_pixels."""
    fh, fw = frame_shape(labels.shape, img_size)
    resized = F.interpolate(
        torch.from_numpy(labels.astype(np.float32))[None, None], size=(fh, fw), mode="nearest-exact"
    )
    frame = resized[0, 0].to(torch.int64).numpy()
    ids, counts = np.unique(frame, return_counts=True)
    keep = (ids != 0) & (counts >= min_pixels)
    return FrameTargets(frame, ids[keep])


class ViewPool:
    """The finite set of views each training image may be drawn as (finite, so embeddings can be cached)."""

    def __init__(self, images: ImageSet, config: FinetuneConfig, img_size: int) -> None:
        self.images = images
        self.windows: list[list[Window | None]] = []
        self.variants: list[list[int]] = []
        for i in range(len(images)):
            rng = np.random.default_rng([config.seed, 7919, i])  # the pool is fixed by the seed
            others = rng.permutation(np.arange(1, 8))[: config.augment_variants - 1]
            self.variants.append([0, *sorted(int(k) for k in others)])
            self.windows.append(self._windows_with_objects(i, config, img_size))
        if not any(self.windows):
            raise FinetuneError(f"no training image has an object of at least {config.min_object_pixels} pixels")

    def _windows_with_objects(self, i: int, config: FinetuneConfig, img_size: int) -> list[Window | None]:
        shape = self.images.labels[i].shape
        candidates: list[Window | None] = [None]
        if config.crop_size is not None and max(shape) > config.crop_size:
            candidates = list(crop_windows(shape, config.crop_size))
        keep = []
        for window in candidates:
            _, labels = view_pixels(self.images, View(i, window, 0))
            if frame_targets(labels, img_size, config.min_object_pixels).ids.size:
                keep.append(window)
        return keep

    def trainable(self) -> list[int]:
        """Images with at least one view that has objects."""
        return [i for i, windows in enumerate(self.windows) if windows]

    def draw(self, image: int, rng: np.random.Generator) -> View:
        windows, variants = self.windows[image], self.variants[image]
        return View(image, windows[rng.integers(len(windows))], variants[rng.integers(len(variants))])
