"""A small synthetic cell image and per-tile embeddings, for tests that run the real model over tiles."""

from __future__ import annotations

import numpy as np

from tilesam.data import synthetic
from tilesam.embed import encode, normalize

SPEC = synthetic.SyntheticSpec("cells", (200, 260), 16, (9.0, 18.0), seed=11)


def make_cells() -> tuple[np.ndarray, np.ndarray]:
    """(image, ground truth) of 16 synthetic cells on 200 x 260 pixels."""
    gt = synthetic.make_labels(SPEC)
    return synthetic.render(gt, SPEC.seed), gt


def embedder(model, image):
    """tile -> embedding of its window, computed once per tile (as the embed jobs store them)."""
    cache = {}
    rng = (float(image.min()), float(image.max()))

    def embedding_of(tile):
        if tile.window not in cache:
            cache[tile.window] = encode(model, [normalize(image[tile.window_slices()], rng)])
        return cache[tile.window]

    return embedding_of
