"""The decoder's three maps as a perfect decoder would predict them from known instance labels.

Made like micro-sam's training targets (torch-em's per-object distance transform): foreground =
labels > 0; per object, the distance to its centre (the most interior point when the centroid lies
outside it) and the inverted distance to its boundary, both normalised to [0, 1]; background 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def maps_from_labels(labels: np.ndarray) -> np.ndarray:
    """float32 (3, H, W): foreground, centre distance, boundary distance of `labels`."""
    labels = np.asarray(labels)
    maps = np.ones((3, *labels.shape), np.float32)
    maps[0] = labels > 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        obj = labels[box] == index
        inner = ndi.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
        centre = np.array(ndi.center_of_mass(obj))
        if not obj[tuple(np.round(centre).astype(int))]:
            centre = np.array(np.unravel_index(np.argmax(inner), obj.shape), float)
        yy, xx = np.indices(obj.shape)
        to_centre = np.hypot(yy - centre[0], xx - centre[1])
        maps[1][box][obj] = (to_centre / max(to_centre[obj].max(), 1e-6))[obj]
        maps[2][box][obj] = (1.0 - inner / inner.max())[obj]
    return maps


def map_reading_decoder():
    """A small real decoder network that reads the three maps from an embedding's first channels.

    micro-sam's UNETR decoder costs seconds to minutes a tile on a CPU; code around the decoder
    only needs a module from (B, 256, 64, 64) embeddings to 16x maps, and with this one the maps
    (so the labels) are known. Pair it with `embedding_with_maps` and a 256-pixel model input.
    """
    import torch

    conv = torch.nn.Conv2d(256, 3, 1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, :3, 0, 0] = torch.eye(3)
    return torch.nn.Sequential(conv, torch.nn.Upsample(scale_factor=4, mode="bilinear")).eval()


def embedding_with_maps(window_labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """float32 (256, 64, 64): noise, and the maps of a window (longest side 64) in channels 0-2.

    With a 256-pixel model input a 64-pixel window is resized 4x, so embedding pixels are window pixels.
    """
    h, w = window_labels.shape
    if max(h, w) != 64:
        raise ValueError(f"windows must have a longest side of 64, not {window_labels.shape}")
    embedding = np.random.default_rng(seed).normal(size=(256, 64, 64)).astype(np.float32)
    embedding[:3] = np.array([0.0, 1.0, 1.0], np.float32)[:, None, None]  # the padding: background
    embedding[:3, :h, :w] = maps_from_labels(window_labels)
    return embedding
