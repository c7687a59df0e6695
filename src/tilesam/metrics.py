"""Instance segmentation scores: segmentation accuracy (SA) at IoU thresholds, the micro-sam way.

SA(t) = TP / (TP + FP + FN), where TP is the size of a one-to-one matching between
ground-truth and predicted objects that only uses pairs with IoU >= t. Like python-elf
(which micro-sam uses), the matching is optimal: it has as many pairs as possible. We
compute it as a maximum bipartite matching on the sparse graph of overlapping pairs,
so images or volumes with many thousands of objects need no dense IoU matrix; for
t > 0.5 every object has at most one partner anyway and the matching is trivial.

The ground truth is relabelled by connected components first (each connected piece of
one id becomes its own object; touching objects with different ids stay distinct).
The prediction is scored as given. Label 0 is background in both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching
from skimage.measure import label as connected_components

THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds of the mean segmentation accuracy: 0.50, 0.55, ..., 0.95."""


@dataclass(frozen=True)
class Scores:
    """Scores of one image or volume; precision/recall/f1 and tp/fp/fn are at IoU 0.5."""

    n_true: int
    n_pred: int
    sa: dict[float, float] = field(repr=False)
    msa: float
    sa50: float
    sa75: float
    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int

    def as_dict(self) -> dict[str, float]:
        """Flat row for a table: the per-threshold SA as sa50, sa55, ..., sa95."""
        row: dict[str, float] = {
            "n_true": self.n_true,
            "n_pred": self.n_pred,
            "msa": self.msa,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
        }
        row.update({f"sa{round(t * 100):02d}": v for t, v in self.sa.items()})
        return row


@dataclass(frozen=True)
class Overlaps:
    """Sparse contingency table of two label images: one entry per overlapping object pair."""

    true_index: np.ndarray  # index of the ground-truth object, 0..n_true-1
    pred_index: np.ndarray  # index of the predicted object, 0..n_pred-1
    iou: np.ndarray
    n_true: int
    n_pred: int


def relabel_gt(gt: np.ndarray) -> np.ndarray:
    """Each connected component of each id becomes its own object (full connectivity)."""
    gt = np.asarray(gt)
    if gt.dtype == np.uint64:  # skimage cannot label uint64; real label counts fit in int64
        gt = gt.astype(np.int64)
    return connected_components(gt, background=0)


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Map object ids to 0..n-1 (background to -1); also return the object sizes."""
    ids, inverse, sizes = np.unique(labels.ravel(), return_inverse=True, return_counts=True)
    has_background = ids.size > 0 and ids[0] == 0
    index = inverse.astype(np.int64) - int(has_background)
    sizes = sizes[1:] if has_background else sizes
    return index, sizes, sizes.size


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """IoU of every overlapping (gt object, predicted object) pair, from one pass over the pixels."""
    t_index, t_sizes, n_true = _dense_ids(gt)
    p_index, p_sizes, n_pred = _dense_ids(pred)
    both = (t_index >= 0) & (p_index >= 0)
    keys = t_index[both] * max(n_pred, 1) + p_index[both]
    pair_keys, intersection = np.unique(keys, return_counts=True)
    ti, pi = np.divmod(pair_keys, max(n_pred, 1))
    union = t_sizes[ti] + p_sizes[pi] - intersection
    return Overlaps(ti, pi, intersection / union, n_true, n_pred)


def matched_count(ov: Overlaps, threshold: float) -> int:
    """Size of a maximum one-to-one matching that only uses pairs with IoU >= threshold."""
    keep = ov.iou >= threshold
    if not keep.any():
        return 0
    ti, pi = ov.true_index[keep], ov.pred_index[keep]
    unique_partners = np.unique(ti).size == ti.size and np.unique(pi).size == pi.size
    if unique_partners:  # always the case for threshold > 0.5
        return int(ti.size)
    graph = csr_matrix((np.ones(ti.size), (ti, pi)), shape=(ov.n_true, ov.n_pred))
    partner = maximum_bipartite_matching(graph, perm_type="column")
    return int(np.count_nonzero(partner >= 0))


def _ratio(numerator: int, denominator: int, nothing_there: bool) -> float:
    """A count ratio; 1 where neither image has objects, else 0 without any match."""
    if nothing_there:
        return 1.0
    return numerator / denominator if numerator > 0 else 0.0


def segmentation_scores(gt: np.ndarray, pred: np.ndarray, relabel: bool = True) -> Scores:
    """Score a predicted instance segmentation (2D or 3D) against the ground truth.

    No objects in either image scores 1 everywhere (nothing to find, nothing wrongly found);
    objects in only one of them score 0. Set relabel=False only where the ground truth is
    already split into connected components.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in shape: {gt.shape} vs {pred.shape}")
    if relabel:
        gt = relabel_gt(gt)
    ov = overlaps(gt, pred)
    n_true, n_pred = ov.n_true, ov.n_pred
    empty = n_true == 0 and n_pred == 0
    sa = {}
    for t in THRESHOLDS:
        tp = matched_count(ov, t)
        sa[t] = _ratio(tp, n_true + n_pred - tp, empty)
    tp = matched_count(ov, 0.5)
    fp, fn = n_pred - tp, n_true - tp
    return Scores(
        n_true=n_true,
        n_pred=n_pred,
        sa=sa,
        msa=float(np.mean(list(sa.values()))),
        sa50=sa[0.5],
        sa75=sa[0.75],
        precision=_ratio(tp, tp + fp, empty),
        recall=_ratio(tp, tp + fn, empty),
        f1=_ratio(2 * tp, 2 * tp + fp + fn, empty),
        tp=tp,
        fp=fp,
        fn=fn,
    )
