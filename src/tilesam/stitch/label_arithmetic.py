"""Label-array arithmetic shared by tile stitching and section linking.

Counting ids and co-occurring id pairs, relabelling through a lookup, greedy
one-to-one matching and consecutive numbering: numpy only, no I/O. Each picks a
dense bincount / lookup table when ids are small (what segmenters emit) and
falls back to sorting otherwise, so sparse 32-bit ids cost no extra memory.
"""

from __future__ import annotations

import numpy as np

__all__ = ["U32_MAX", "consecutive_ids", "group_sums", "id_counts", "one_to_one", "pair_counts", "remap"]

U32_MAX = 0xFFFFFFFF


def id_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted nonzero ids of a label array and their pixel counts.

    bincount when ids are small (what segmenters emit), np.unique otherwise.
    """
    flat = labels.ravel()
    if flat.size == 0:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    top = int(flat.max())
    if top < max(1 << 16, 2 * flat.size):
        counts = np.bincount(flat, minlength=top + 1)
        ids = np.flatnonzero(counts[1:]) + 1
        return ids.astype(np.uint32), counts[ids].astype(np.int64)
    ids, counts = np.unique(flat, return_counts=True)
    nonzero = ids != 0
    return ids[nonzero].astype(np.uint32), counts[nonzero].astype(np.int64)


def pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Co-occurring (a, b) label pairs of two same-shape arrays and their pixel counts."""
    a, b = a.ravel(), b.ravel()
    if a.size == 0:
        empty = np.zeros(0, np.uint32)
        return empty, empty, np.zeros(0, np.int64)
    n_b = int(b.max()) + 1
    if (int(a.max()) + 1) * n_b <= max(1 << 16, 4 * a.size):
        counts = np.bincount(a.astype(np.int64) * n_b + b)
        keys = np.flatnonzero(counts)
        return (keys // n_b).astype(np.uint32), (keys % n_b).astype(np.uint32), counts[keys]
    keys, counts = np.unique((a.astype(np.uint64) << np.uint64(32)) | b, return_counts=True)
    return (
        (keys >> np.uint64(32)).astype(np.uint32),
        (keys & np.uint64(U32_MAX)).astype(np.uint32),
        counts.astype(np.int64),
    )


def remap(values: np.ndarray, keys: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Replace each value found in sorted `keys` by the matching `new`; anything else becomes 0.

    A dense lookup table over keys' range when it is small, binary search otherwise.
    """
    if keys.size == 0:
        return np.zeros(values.shape, new.dtype)
    lo, hi = int(keys[0]), int(keys[-1])
    span = hi - lo + 1
    if span <= max(1 << 16, 2 * values.size):
        lut = np.zeros(span + 1, new.dtype)  # last slot: values outside keys' range
        lut[keys.astype(np.int64) - lo] = new
        index = values.astype(np.int64)
        index -= lo
        index[(index < 0) | (index >= span)] = span
        return lut[index]
    pos = np.searchsorted(keys, values).clip(max=keys.size - 1)
    return np.where(keys[pos] == values, new[pos], 0).astype(new.dtype)


def group_sums(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique keys, each row's group, and the summed weights per group."""
    groups, row = np.unique(keys, return_inverse=True)
    sums = np.bincount(row, weights=weights, minlength=groups.size).astype(np.int64)
    return groups, row, sums


def one_to_one(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, threshold: float, rank: np.ndarray | None = None
) -> np.ndarray:
    """Indices of candidate pairs kept by greedy one-to-one matching, best first.

    Pairs scoring below `threshold` are never kept; each `a` and each `b` is kept
    at most once; candidates are taken in order of `rank` (default: `score`),
    highest first. When the candidates are unique already (always so for IoU
    above 0.5: an instance cannot overlap two disjoint ones by more than half),
    no loop is needed.
    """
    rank = score if rank is None else rank
    candidates = np.flatnonzero(score >= threshold)
    order = candidates[np.argsort(-rank[candidates], kind="stable")]
    if np.unique(a[order]).size == order.size and np.unique(b[order]).size == order.size:
        return order
    used_a: set[int] = set()
    used_b: set[int] = set()
    kept = []
    for i, ai, bi in zip(order.tolist(), a[order].tolist(), b[order].tolist()):
        if ai not in used_a and bi not in used_b:
            used_a.add(ai)
            used_b.add(bi)
            kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def consecutive_ids(component: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..n for the components that hold a kept node, numbered by their first node; 0 otherwise."""
    comps, first, row = np.unique(component, return_index=True, return_inverse=True)
    kept = np.bincount(row[keep], minlength=comps.size) > 0
    by_first = np.argsort(first, kind="stable")
    kept_by_first = by_first[kept[by_first]]
    number = np.zeros(comps.size, np.uint32)
    number[kept_by_first] = np.arange(1, kept_by_first.size + 1, dtype=np.uint32)
    return number[row], int(kept_by_first.size)
