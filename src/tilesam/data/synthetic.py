"""A deterministic synthetic fluorescence-nuclei dataset with exact ground truth.

The default workflow must run offline on a fresh machine, so tilesam makes its
own demo data: bright elliptical nuclei of varied size on a dark, noisy
background, some touching, blurred like a widefield image. 2D images and a
small 3D stack (ellipsoids spanning several sections) are made the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage


@dataclass(frozen=True)
class SyntheticSpec:
    name: str
    shape: tuple[int, ...]  # (Y, X) or (Z, Y, X)
    n_objects: int
    radius: tuple[float, float]  # min/max semi-axis in pixels (yx)
    seed: int


#: The demo set: one 2D image larger than a default tile, one small 2D image
#: and one small 3D stack. Shapes are known before anything is generated so
#: that the workflow can plan its tile jobs up front.
DEMO = (
    SyntheticSpec("nuclei_large", (512, 640), 48, (9.0, 22.0), seed=1),
    SyntheticSpec("nuclei_small", (256, 256), 14, (8.0, 18.0), seed=2),
    SyntheticSpec("nuclei_stack", (5, 192, 192), 8, (10.0, 20.0), seed=3),
)


#: Sides of the synthetic training images: SAM resizes every window to the model's input (256 for
#: LiteMedSAM), so the demo's windows reach the model at scales 0.8 (320-pixel windows of the large
#: image) to 1.33 (the stack's 192-pixel sections). A decoder trained at one scale only misreads
#: the others (trained on 256-pixel images alone, AIS painted blobs into the stack's background).
TRAIN_SIDES = (192, 256, 320)


#: Training images for the default run's finetuning (`source: synthetic_train`): the same kind of
#: nuclei as the demo's (14 per 256^2), other seeds, so no demo image is ever trained on. The stack
#: trains section by section: only there does a section show the dim blur of a nucleus that ends
#: in the next one, which its labels call background (without it AIS segmented that blur as
#: nuclei, extending the demo stack's objects by a section).
TRAIN = tuple(
    SyntheticSpec(f"train_{i:02d}", (side, side), round(14 * side**2 / 256**2), (8.0, 22.0), seed=100 + i)
    for i, side in enumerate(TRAIN_SIDES * 2)
) + (SyntheticSpec("train_stack", (6, 192, 192), 10, (8.0, 20.0), seed=106),)

#: The synthetic sources a dataset entry can name, and their images.
SOURCES: dict[str, tuple[SyntheticSpec, ...]] = {"synthetic": DEMO, "synthetic_train": TRAIN}


def demo_specs() -> dict[str, SyntheticSpec]:
    """Every synthetic image by name (the names of all sources are distinct)."""
    return {s.name: s for specs in SOURCES.values() for s in specs}


def _place_objects(spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """Ellipse (or ellipsoid) centres and semi-axes; overlaps allowed a little so some touch."""
    ndim = len(spec.shape)
    lo, hi = spec.radius
    centres, axes = [], []
    tries = 0
    while len(centres) < spec.n_objects and tries < 50 * spec.n_objects:
        tries += 1
        ax = rng.uniform(lo, hi, size=2)
        if ndim == 3:
            ax = np.concatenate([[rng.uniform(1.5, max(2.0, spec.shape[0] / 2))], ax])
        c = np.array([rng.uniform(0, s) for s in spec.shape])
        # touching is fine, swallowing is not: keep centres apart by ~ the smaller radius
        if all(
            np.linalg.norm((c - o)[-2:]) > 0.8 * (ax[-2:].min() + a[-2:].min())
            or (ndim == 3 and abs(c[0] - o[0]) > ax[0] + a[0])
            for o, a in zip(centres, axes)
        ):
            centres.append(c)
            axes.append(ax)
    return np.array(centres), np.array(axes)


def make_labels(spec: SyntheticSpec) -> np.ndarray:
    """Instance labels (uint16, 0 = background): later objects are painted under earlier ones."""
    rng = np.random.default_rng(spec.seed)
    centres, axes = _place_objects(spec, rng)
    labels = np.zeros(spec.shape, np.uint16)
    for i, (c, ax) in enumerate(zip(centres, axes), start=1):
        angle = rng.uniform(0, np.pi)
        lo = [max(int(c[d] - ax.max() - 1), 0) for d in range(len(c))]
        hi = [min(int(c[d] + ax.max() + 2), spec.shape[d]) for d in range(len(c))]
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        g = np.ogrid[sl]
        y, x = g[-2] - c[-2], g[-1] - c[-1]
        u = y * np.cos(angle) + x * np.sin(angle)
        v = -y * np.sin(angle) + x * np.cos(angle)
        r = (u / ax[-2]) ** 2 + (v / ax[-1]) ** 2
        if len(c) == 3:
            r = r + ((g[0] - c[0]) / ax[0]) ** 2
        region = labels[sl]
        region[(r <= 1.0) & (region == 0)] = i
    return _consecutive(labels)


def _consecutive(labels: np.ndarray) -> np.ndarray:
    ids = np.unique(labels)
    ids = ids[ids > 0]
    lut = np.zeros(int(labels.max()) + 1, labels.dtype)
    lut[ids] = np.arange(1, len(ids) + 1, dtype=labels.dtype)
    return lut[labels]


def render(labels: np.ndarray, seed: int) -> np.ndarray:
    """A widefield-like uint8 image of the labelled nuclei: texture, blur, background, noise."""
    rng = np.random.default_rng(seed + 1000)
    n = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 1.0, size=n)])
    img = brightness[labels].astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape).astype(np.float32), 2)
    img *= 1.0 + 0.15 * texture / (texture.std() + 1e-6)
    sigma = (0.5, 1.2, 1.2) if labels.ndim == 3 else 1.2
    img = ndimage.gaussian_filter(img, sigma)
    img += 0.08 + 0.03 * ndimage.gaussian_filter(rng.normal(0, 1, labels.shape).astype(np.float32), 30) * 30
    img += rng.normal(0, 0.03, labels.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_demo(spec: SyntheticSpec, image_path: str | Path, labels_path: str | Path) -> None:
    """Write one demo image and its ground truth as TIFF files."""
    labels = make_labels(spec)
    image = render(labels, spec.seed)
    for path, arr in ((image_path, image), (labels_path, labels)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, arr, compression="zlib")
