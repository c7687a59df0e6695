"""Automatic instance segmentation (AIS): the decoder's three maps -> instance labels.

The maps are micro-sam's (foreground probability, distance to the object centre, distance to
the object boundary, each in [0, 1], the distances 0 inside and 1 at the background) and the
post-processing is that of micro-sam 1.8's ``InstanceSegmentationWithDecoder.generate`` (which
calls torch-em's ``watershed_from_center_and_boundary_distances``), step by step:

1. Gaussian smoothing of the foreground (``foreground_smoothing``) and of both distance maps
   (``distance_smoothing``); a sigma of 0 skips it. micro-sam smooths with bioimage-cpp's
   vigra-style filter: kernel radius ``ceil(3 sigma)``, mirrored borders (no repeated edge
   pixel). ``scipy.ndimage.gaussian_filter(mode="mirror", radius=ceil(3 sigma))`` is that
   filter (the tests compare them where bioimage-cpp is installed).
2. foreground = smoothed foreground > ``foreground_threshold``.
3. seeds = connected components (full connectivity, as ``skimage.measure.label``) of
   centre distance < ``center_distance_threshold`` and boundary distance <
   ``boundary_distance_threshold`` inside the foreground.
4. a seeded watershed on the smoothed boundary-distance map, restricted to the foreground,
   with axis-aligned neighbours (bioimage-cpp floods 4-connected in 2D, as skimage's
   ``connectivity=1``).
5. instances smaller than ``min_size`` pixels are dropped (set to background) and the rest
   renumbered 1..n in the order of their seeds.

The steps are separate functions so the parameter search (``tilesam.segment.search``) smooths
each map once per sigma and runs the watershed once per threshold pair, not once per setting.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import label as connected_components
from skimage.segmentation import relabel_sequential, watershed

from tilesam.config import AisParams

__all__ = ["ais_labels", "check_maps", "foreground_mask", "seeded_watershed", "size_filter", "smooth"]


def check_maps(maps: np.ndarray, source: str = "decoder maps") -> np.ndarray:
    """`maps` as float32 (3, H, W); a ValueError naming `source` for any other shape or non-finite values."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.shape[0] != 3 or min(maps.shape[1:]) < 1:
        raise ValueError(
            f"{source}: expected 3 maps (foreground, centre distance, boundary distance) of shape (3, H, W), "
            f"got {maps.shape}"
        )
    if not np.issubdtype(maps.dtype, np.floating):
        raise ValueError(f"{source}: maps must be floating point, got {maps.dtype}")
    maps = maps.astype(np.float32, copy=False)
    if not np.isfinite(maps).all():
        raise ValueError(f"{source}: the maps hold NaN or infinite values (a diverged decoder?)")
    return maps


def smooth(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing as micro-sam's (vigra-style kernel radius ceil(3 sigma), mirrored borders)."""
    if sigma <= 0:
        return image
    return ndi.gaussian_filter(image, sigma, mode="mirror", radius=math.ceil(3 * sigma))


def foreground_mask(foreground: np.ndarray, params: AisParams) -> np.ndarray:
    """Steps 1-2: the smoothed foreground map thresholded."""
    return smooth(foreground, params.foreground_smoothing) > params.foreground_threshold


def seeded_watershed(
    center: np.ndarray,
    boundary: np.ndarray,
    mask: np.ndarray,
    center_threshold: float,
    boundary_threshold: float,
) -> np.ndarray:
    """Steps 3-4 on already smoothed distance maps: seeds, then the watershed of the boundary distance."""
    seeds = connected_components((center < center_threshold) & (boundary < boundary_threshold) & mask)
    if not seeds.any():
        return np.zeros(mask.shape, dtype=np.uint32)
    return watershed(boundary, markers=seeds, mask=mask, connectivity=1).astype(np.uint32, copy=False)


def size_filter(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Step 5: instances below `min_size` pixels become background; the rest are renumbered 1..n in order."""
    if min_size <= 0 or not labels.any():
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return labels
    filtered = np.where(small[labels], 0, labels).astype(np.uint32, copy=False)
    return relabel_sequential(filtered)[0].astype(np.uint32, copy=False)


def ais_labels(maps: np.ndarray, params: AisParams | None = None, *, source: str = "decoder maps") -> np.ndarray:
    """Instance labels (uint32, 0 = background) of one window's maps (3, H, W), as micro-sam's AIS."""
    params = params or AisParams()
    maps = check_maps(maps, source)
    mask = foreground_mask(maps[0], params)
    center = smooth(maps[1], params.distance_smoothing)
    boundary = smooth(maps[2], params.distance_smoothing)
    labels = seeded_watershed(
        center, boundary, mask, params.center_distance_threshold, params.boundary_distance_threshold
    )
    return size_filter(labels, params.min_size)
