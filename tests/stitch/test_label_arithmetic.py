"""Label arithmetic shared by tile stitching and section linking."""

from __future__ import annotations

import numpy as np

from tilesam.stitch.label_arithmetic import one_to_one


def test_one_to_one_takes_best_pairs_first_and_each_id_once():
    a = np.array([1, 1, 2, 3])
    b = np.array([5, 6, 5, 6])
    score = np.array([0.6, 0.9, 0.7, 0.2])
    kept = one_to_one(a, b, score, threshold=0.3)
    assert sorted(zip(a[kept].tolist(), b[kept].tolist())) == [(1, 6), (2, 5)]
    assert one_to_one(a, b, score, threshold=0.95).size == 0
