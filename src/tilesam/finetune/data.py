"""The annotated images finetuning learns from: files paired by name, a validation split, pixels read once."""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from tilesam.data.datasets import stem
from tilesam.download import file_sha256
from tilesam.embed import normalize
from tilesam.metrics import relabel_gt

Paths = str | os.PathLike | Sequence[str | os.PathLike]  # globs and/or files


class FinetuneError(RuntimeError):
    """Finetuning cannot start or continue (bad data, a state file of other settings, ...)."""


@dataclass(frozen=True)
class Sample:
    """One annotated 2D image: the image file and its instance-label file."""

    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return stem(self.image)


def _expand(paths: Paths, what: str) -> list[Path]:
    """Globs and/or paths -> sorted existing files; an empty match is an error naming the pattern."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: set[Path] = set()
    for item in items:
        matches = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [str(item)]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FinetuneError(f"{what}: {item!s} matches no file")
        files.update(Path(m) for m in matches)
    return sorted(files)


def pair_files(images: Paths, labels: Paths) -> list[Sample]:
    """Images and label files (globs or lists) paired by file name, sorted by name."""
    image_files, label_files = _expand(images, "images"), _expand(labels, "labels")
    by_name = {stem(p): p for p in label_files}
    missing = [str(p) for p in image_files if stem(p) not in by_name]
    if missing:
        raise FinetuneError(f"images without labels of the same name: {', '.join(missing[:5])}")
    return sorted((Sample(p, by_name[stem(p)]) for p in image_files), key=lambda s: s.name)


def split_samples(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): the last ``val_fraction`` of the samples sorted by name validate."""
    ordered = sorted(samples, key=lambda s: s.name)
    n_val = math.ceil(val_fraction * len(ordered)) if val_fraction > 0 else 0
    if n_val >= len(ordered) and n_val:
        raise FinetuneError(f"val_fraction {val_fraction} leaves no training image of {len(ordered)}")
    return ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]


def train_val_samples(
    images: Paths, labels: Paths, val_images: Paths | None, val_labels: Paths | None, val_fraction: float
) -> tuple[list[Sample], list[Sample]]:
    """(train, validation) samples: the validation files given, or else a split of the training files."""
    train = pair_files(images, labels)
    if val_images is None and val_labels is None:
        return split_samples(train, val_fraction)
    if val_images is None or val_labels is None:
        raise FinetuneError("give both val_images and val_labels, or neither")
    return train, pair_files(val_images, val_labels)


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """A 2D grayscale or colour image as min/max-normalised uint8 RGB (what SAM sees)."""
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # channel-first colour
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]  # drop alpha
    elif image.ndim != 2:
        raise FinetuneError(f"{path}: expected a 2D grayscale or RGB image, got shape {image.shape}")
    return normalize(image, (float(image.min()), float(image.max())))


def _sections(sample: Sample) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(suffix, RGB, labels) of each 2D training image of a sample: the image, or each section of a volume.

    A volume (3D labels, a grayscale image of the same shape) trains section by section, each
    normalised by the whole volume's range as the workflow normalises its tiles; its sections
    teach what the 2D images cannot, e.g. that the dim blur of a nucleus in the next section is
    background.
    """
    image = np.asarray(tifffile.imread(sample.image))
    labels = np.asarray(tifffile.imread(sample.labels))
    if labels.ndim == 3:
        if image.shape != labels.shape:
            raise FinetuneError(
                f"{sample.labels}: 3D labels of shape {labels.shape} need a grayscale volume of the same shape,"
                f" {sample.image} has {image.shape}"
            )
        lo_hi = (float(image.min()), float(image.max()))
        return [
            (f":z{z}", normalize(image[z], lo_hi), relabel_gt(labels[z]).astype(np.int32))
            for z in range(labels.shape[0])
        ]
    rgb = _to_rgb(image, sample.image)
    if labels.shape != rgb.shape[:2]:
        raise FinetuneError(f"{sample.labels}: labels of shape {labels.shape} do not match the image's {rgb.shape[:2]}")
    return [("", rgb, relabel_gt(labels).astype(np.int32))]


def _digest(path: Path) -> str:
    """Short content hash of a file: the embedding-cache key of its image."""
    return file_sha256(path, remember=False)[:20]


class ImageSet:
    """Annotated 2D images loaded once: normalised RGB, relabelled labels, names and content digests.

    A volume contributes one entry per section, named ``<name>:z<index>``.
    """

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.rgb: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        self.names: list[str] = []
        self.digests: list[str] = []
        for sample in self.samples:
            digest = _digest(sample.image)
            for suffix, rgb, labels in _sections(sample):
                self.rgb.append(rgb)
                self.labels.append(labels)
                self.names.append(sample.name + suffix)
                self.digests.append(digest + suffix)

    def __len__(self) -> int:
        return len(self.rgb)
