"""Segmentation accuracy: hand-computed cases, edge cases, invariances, and two independent references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt
from scipy.optimize import linear_sum_assignment

from tilesam.metrics import THRESHOLDS, Overlaps, matched_count, overlaps, relabel_gt, segmentation_scores


def square(shape, y, x, size, value, out=None):
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    out[y : y + size, x : x + size] = value
    return out


def test_thresholds_are_the_ten_from_050_to_095():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_hand_computed_exact_shifted_and_spurious():
    # gt: two 4x4 squares. pred: an exact copy of the first, the second shifted by one column
    # (intersection 12, union 20: IoU 0.6), and a spurious object.
    gt = square((12, 20), 1, 1, 4, 1)
    square(gt.shape, 6, 6, 4, 2, gt)
    pred = square(gt.shape, 1, 1, 4, 7)
    square(gt.shape, 6, 7, 4, 3, pred)
    square(gt.shape, 1, 14, 3, 9, pred)
    s = segmentation_scores(gt, pred)
    assert (s.n_true, s.n_pred, s.tp, s.fp, s.fn) == (2, 3, 2, 1, 0)
    for t in (0.5, 0.55, 0.6):  # both matched: 2 / (2 + 1 + 0)
        assert s.sa[t] == pytest.approx(2 / 3)
    for t in (0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95):  # only the exact copy: 1 / (1 + 2 + 1)
        assert s.sa[t] == pytest.approx(1 / 4)
    assert s.msa == pytest.approx((3 * 2 / 3 + 7 / 4) / 10)
    assert (s.sa50, s.sa75) == (pytest.approx(2 / 3), pytest.approx(1 / 4))
    assert (s.precision, s.recall, s.f1) == (pytest.approx(2 / 3), 1.0, pytest.approx(0.8))


def test_iou_exactly_at_threshold_counts_and_matching_stays_one_to_one():
    # A 2-pixel gt object and two 1-pixel predictions: each has IoU exactly 0.5, only one may match.
    gt = np.array([[1, 1, 0]])
    pred = np.array([[4, 5, 0]])
    s = segmentation_scores(gt, pred)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.sa50 == pytest.approx(1 / 2)
    assert s.sa[0.55] == 0.0


def test_matching_is_optimal_not_greedy():
    # gt a overlaps p (IoU .4) and q (IoU .3); gt b overlaps only p (IoU .35). Greedy by IoU
    # takes a-p and leaves b unmatched; the optimal matching a-q, b-p has two pairs.
    ov = Overlaps(np.array([0, 0, 1]), np.array([0, 1, 0]), np.array([0.4, 0.3, 0.35]), n_true=2, n_pred=2)
    assert matched_count(ov, 0.3) == 2
    assert matched_count(ov, 0.35) == 1
    assert matched_count(ov, 0.41) == 0


def test_ground_truth_is_split_into_connected_components():
    # id 1 has two separate pieces; id 2 touches the first piece and must stay its own object.
    gt = square((10, 20), 1, 1, 3, 1)
    square(gt.shape, 1, 12, 3, 1, gt)
    square(gt.shape, 1, 4, 3, 2, gt)
    relabelled = relabel_gt(gt)
    assert len(np.unique(relabelled)) - 1 == 3
    pred = relabelled * 10
    assert segmentation_scores(gt, pred).msa == 1.0
    assert segmentation_scores(gt, pred, relabel=False).n_true == 2
    # The prediction is not split: one object covering both pieces matches neither (IoU 0.5 each
    # at most one of them, at t > 0.5 none).
    s = segmentation_scores(gt, gt)
    assert (s.n_true, s.n_pred, s.tp) == (3, 2, 2)
    assert s.sa[0.55] == pytest.approx(1 / 4)


def test_empty_images():
    empty = np.zeros((8, 8), dtype=np.uint16)
    objects = square((8, 8), 2, 2, 3, 5).astype(np.uint16)
    both_empty = segmentation_scores(empty, empty)
    assert both_empty.msa == both_empty.precision == both_empty.recall == both_empty.f1 == 1.0
    assert all(v == 1.0 for v in both_empty.sa.values())
    missed = segmentation_scores(objects, empty)
    assert (missed.n_true, missed.n_pred, missed.fn) == (1, 0, 1)
    assert missed.msa == missed.precision == missed.recall == missed.f1 == 0.0
    spurious = segmentation_scores(empty, objects)
    assert (spurious.n_true, spurious.n_pred, spurious.fp) == (0, 1, 1)
    assert spurious.msa == spurious.precision == spurious.recall == spurious.f1 == 0.0


def test_objects_without_background_pixels():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[3, 3, 3, 4]])
    s = segmentation_scores(gt, pred)
    # gt1-p3: IoU 2/3; gt2-p4: IoU 1/2; at 0.5 both match, up to 0.65 only one.
    assert s.sa50 == 1.0
    assert s.sa[0.55] == pytest.approx(1 / 3)
    assert s.sa[0.7] == 0.0


def test_3d_volume():
    gt = np.zeros((4, 10, 10), dtype=np.uint32)
    gt[0:2, 0:4, 0:4] = 1  # 32 voxels
    gt[2:4, 5:9, 5:9] = 2
    pred = np.zeros_like(gt)
    pred[0:2, 0:4, 0:4] = 11
    pred[2:3, 5:9, 5:9] = 12  # half of object 2: IoU 0.5
    s = segmentation_scores(gt, pred)
    assert (s.n_true, s.n_pred, s.tp) == (2, 2, 2)
    assert s.sa50 == 1.0
    assert s.sa[0.55] == pytest.approx(1 / 3)
    # A slice-wise 2D relabel would be wrong: the object spans z and must stay one object.
    assert relabel_gt(gt).max() == 2


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_as_dict_is_a_flat_row():
    gt = square((8, 8), 1, 1, 3, 1)
    row = segmentation_scores(gt, gt).as_dict()
    assert [k for k in row if k.startswith("sa")] == [f"sa{p}" for p in range(50, 100, 5)]
    assert row["msa"] == row["sa50"] == row["f1"] == 1.0
    assert (row["n_true"], row["tp"], row["fp"], row["fn"]) == (1, 1, 0, 0)


# --- random label images: invariances and references -------------------------------------


def random_labels(rng: np.random.Generator, shape=(48, 56), n_seeds=14) -> np.ndarray:
    """Voronoi cells of random seeds: some cells are background, some touch, some are set apart."""
    seeds = np.ones(shape, dtype=bool)
    coords = tuple(rng.integers(0, s, n_seeds) for s in shape)
    seeds[coords] = False
    _, nearest = distance_transform_edt(seeds, return_indices=True)
    ids = np.zeros(shape, dtype=np.int64)
    ids[coords] = rng.permutation(n_seeds) + 1
    labels = ids[tuple(nearest)]
    labels[np.isin(labels, rng.choice(n_seeds, n_seeds // 4, replace=False) + 1)] = 0
    apart = np.isin(labels, rng.choice(n_seeds, n_seeds // 2, replace=False) + 1)
    edge = np.zeros(shape, dtype=bool)
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    labels[edge & apart] = 0
    return labels


def perturbed(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """A prediction: shifted, with one object dropped, one merged pair and one spurious blob."""
    pred = np.roll(gt, shift=(int(rng.integers(-1, 2)), int(rng.integers(1, 3))), axis=(0, 1)).copy()
    ids = np.unique(pred)[1:]
    if ids.size > 3:
        pred[pred == ids[0]] = 0
        pred[pred == ids[1]] = ids[2]
    pred[rng.integers(0, 40) : rng.integers(41, 48), 0:5] = 999
    permute = np.concatenate([[0], rng.permutation(np.arange(1, 1000)) + 5000])
    return permute[pred]


def reference_scores(gt: np.ndarray, pred: np.ndarray) -> tuple[list[float], int]:
    """Slow and independent: IoU of every pair by an explicit loop, then an assignment per threshold."""
    true_ids = [i for i in np.unique(gt) if i != 0]
    pred_ids = [i for i in np.unique(pred) if i != 0]
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for a, t in enumerate(true_ids):
        for b, p in enumerate(pred_ids):
            inter = np.logical_and(gt == t, pred == p).sum()
            union = np.logical_or(gt == t, pred == p).sum()
            iou[a, b] = inter / union
    sa, tp50 = [], 0
    for threshold in THRESHOLDS:
        rows, cols = linear_sum_assignment(-(iou >= threshold).astype(float))
        tp = int((iou[rows, cols] >= threshold).sum())
        tp50 = tp if threshold == 0.5 else tp50
        total = len(true_ids) + len(pred_ids) - tp
        sa.append(tp / total if total else 1.0)
    return sa, tp50


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference_on_random_images(seed):
    rng = np.random.default_rng(seed)
    gt = relabel_gt(random_labels(rng))
    pred = perturbed(rng, gt)
    sa, tp50 = reference_scores(gt, pred)
    s = segmentation_scores(gt, pred)
    assert s.tp == tp50
    np.testing.assert_allclose([s.sa[t] for t in THRESHOLDS], sa, atol=1e-12)
    assert 0 < s.msa < 1  # a meaningful case, neither trivial extreme


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.int64, np.uint64])
def test_invariant_to_label_permutation_and_dtype(dtype):
    rng = np.random.default_rng(42)
    gt = relabel_gt(random_labels(rng))
    pred = perturbed(rng, gt)
    expected = segmentation_scores(gt, pred).as_dict()
    gt_perm = np.concatenate([[0], rng.permutation(gt.max()) + 1])[gt]
    pred_ids = np.unique(pred)
    pred_map = dict(zip(pred_ids, np.concatenate([[0], rng.permutation(len(pred_ids) - 1) + 1])))
    pred_perm = np.vectorize(pred_map.get)(pred)
    assert segmentation_scores(gt_perm.astype(dtype), pred_perm.astype(dtype)).as_dict() == pytest.approx(expected)


def test_overlaps_iou_of_every_overlapping_pair():
    gt = np.array([[1, 1, 2, 2, 0]])
    pred = np.array([[0, 5, 5, 6, 6]])
    ov = overlaps(gt, pred)
    pairs = {(int(t), int(p)): float(v) for t, p, v in zip(ov.true_index, ov.pred_index, ov.iou)}
    assert pairs == {(0, 0): pytest.approx(1 / 3), (1, 0): pytest.approx(1 / 3), (1, 1): pytest.approx(1 / 3)}
    assert (ov.n_true, ov.n_pred) == (2, 2)


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_python_elf(seed):
    elf_eval = pytest.importorskip("elf.evaluation", reason="python-elf is not installed")
    rng = np.random.default_rng(100 + seed)
    gt = relabel_gt(random_labels(rng, shape=(64, 64), n_seeds=25))
    pred = perturbed(rng, gt)
    s = segmentation_scores(gt, pred)
    # Same thresholds as ours: elf's default np.arange(0.5, 1, 0.05) puts e.g. 0.85 one ulp above 0.85.
    msa, accuracies = elf_eval.mean_segmentation_accuracy(pred, gt, thresholds=list(THRESHOLDS), return_accuracies=True)
    assert s.msa == pytest.approx(msa, abs=1e-6)
    np.testing.assert_allclose([s.sa[t] for t in THRESHOLDS], accuracies, atol=1e-6)
    at50 = elf_eval.matching(pred, gt, threshold=0.5)
    assert (s.precision, s.recall, s.f1) == pytest.approx((at50["precision"], at50["recall"], at50["f1"]), abs=1e-6)


def test_uint64_ids_past_int64_stay_distinct_objects():
    """Ground truth imported as uint64 (ids past 2**32 - 1): three objects stay three, whatever their ids."""
    gt = np.zeros((20, 20), np.uint64)
    gt[1:5, 1:5], gt[8:12, 8:12], gt[15:19, 15:19] = 1, 2**32 + 1, 2**64 - 1
    scores = segmentation_scores(gt, (gt > 0).astype(np.uint32) * np.arange(1, 21, dtype=np.uint32)[:, None])
    assert scores.n_true == 3
    assert relabel_gt(gt).max() == 3 and (relabel_gt(gt) == 0).sum() == (gt == 0).sum()
    assert segmentation_scores(gt, gt).msa == 1.0
    full = np.full((4, 4), 2**64 - 1, np.uint64)  # no background at all: one object, not background
    assert relabel_gt(full).max() == 1
