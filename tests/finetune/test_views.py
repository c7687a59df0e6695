"""Views: dihedral transforms, crop windows, targets in the input frame, and the fixed pool of views per image."""

from __future__ import annotations

import numpy as np

from tilesam.config import FinetuneConfig
from tilesam.finetune.data import ImageSet, Sample
from tilesam.finetune.views import ViewPool, crop_windows, dihedral, frame_targets, view_pixels


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    a = np.arange(12).reshape(3, 4)
    variants = [dihedral(a, k) for k in range(8)]
    assert len({v.tobytes() + bytes(v.shape) for v in variants}) == 8
    assert all(sorted(v.ravel()) == list(range(12)) for v in variants)
    np.testing.assert_array_equal(dihedral(a, 4), a[:, ::-1])
    np.testing.assert_array_equal(dihedral(dihedral(a, 1), 3), a)
    rgb = np.zeros((3, 4, 3))
    assert dihedral(rgb, 1).shape == (4, 3, 3)  # channels stay last


def test_view_pool_keeps_windows_with_objects_and_a_fixed_variant_pool(colour_image):
    images = ImageSet([Sample(*colour_image)])
    config = FinetuneConfig(crop_size=256, augment_variants=3, seed=1)
    pool = ViewPool(images, config, img_size=256)
    assert pool.windows[0] and all(x < 60 for _, x, _, _ in pool.windows[0])  # windows without objects dropped
    assert len(pool.variants[0]) == 3 and pool.variants[0][0] == 0
    assert ViewPool(images, config, img_size=256).variants == pool.variants  # fixed by the seed
    view = pool.draw(0, np.random.default_rng(0))
    pixels, view_labels = view_pixels(images, view)
    assert pixels.shape == (256, 256, 3) and view_labels.shape == (256, 256) and view_labels.max() == 1


def test_crop_windows_cover_the_image():
    windows = crop_windows((300, 520), 256)
    covered = np.zeros((300, 520), bool)
    for y, x, h, w in windows:
        assert (h, w) == (256, 256) and y + h <= 300 and x + w <= 520
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert crop_windows((100, 120), 256) == [(0, 0, 100, 120)]


def test_frame_targets_resize_labels_and_drop_tiny_objects():
    labels = np.zeros((512, 256), np.int32)
    labels[10:50, 10:50] = 1  # 20x20 in the 256 frame
    labels[100:102, 100:102] = 2  # one pixel in the frame
    targets = frame_targets(labels, 256, min_pixels=4)
    assert targets.labels.shape == (256, 128) and list(targets.ids) == [1]
    assert targets.masks(np.array([1])).sum() == 400
