"""Linking the 2D objects of adjacent sections of a label volume into 3D objects.

Volumes are stitched section by section (`tilesam.stitch.tiles`), so ids repeat
between sections. `link_sections` links the objects of adjacent sections by their overlap
(one-to-one), optionally closes one-section gaps and drops objects spanning too
few sections, rewriting the label volume chunk by chunk.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import zarr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tilesam.stitch.chunks import Slices, chunk_regions, resolve_workers, thread_map, write_unit
from tilesam.stitch.label_arithmetic import (
    U32_MAX,
    consecutive_ids,
    group_sums,
    id_counts,
    one_to_one,
    pair_counts,
    remap,
)

__all__ = ["LinkResult", "link_objects", "link_sections"]


@dataclass(frozen=True)
class LinkResult:
    """What linking the sections of a volume did."""

    n_objects: int  # 3D objects written, ids 1..n_objects
    n_section_objects: int  # 2D objects (per section) before linking
    n_links: int  # links between adjacent sections
    n_gap_links: int  # links over one missing section (z to z+2)
    n_dropped: int  # 3D objects dropped as spanning fewer than min_z_extent sections


@dataclass(frozen=True)
class _SectionTables:
    """Per-section object areas and cross-section overlaps of one yx column of chunks.

    `areas` rows are (z, id, pixels); `next_` and `skip` rows are (z, id in z,
    id in z+1 resp. z+2, shared pixels).
    """

    areas: np.ndarray
    next_: np.ndarray
    skip: np.ndarray


def _planes(labels: zarr.Array, ys: slice, xs: slice) -> Iterator[tuple[int, np.ndarray]]:
    """The sections of one yx region, top to bottom, read one chunk-deep slab at a time."""
    depth = labels.chunks[0]
    for z0 in range(0, labels.shape[0], depth):
        slab = labels[z0 : z0 + depth, ys, xs]
        for k, plane in enumerate(slab):
            yield z0 + k, plane


def _rows(columns: Iterable[np.ndarray], width: int) -> np.ndarray:
    """Stack int64 table rows; an empty (0, width) table when there are none."""
    parts = [c for c in columns if c.size]
    return np.concatenate(parts) if parts else np.zeros((0, width), np.int64)


def _shared_rows(z: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(z, id in a, id in b, shared pixels) for objects of two sections that overlap."""
    both = (a > 0) & (b > 0)
    ids_a, ids_b, shared = pair_counts(a[both], b[both])
    return np.column_stack([np.full(ids_a.size, z, np.int64), ids_a, ids_b, shared]).astype(np.int64)


def _section_tables(labels: zarr.Array, close_gaps: bool, region: Slices) -> _SectionTables:
    """Object areas and overlaps with the next (and next but one) section, in one yx region."""
    ys, xs = region
    areas, next_, skip = [], [], []
    previous: deque[np.ndarray] = deque(maxlen=2)  # sections z-2, z-1
    for z, plane in _planes(labels, ys, xs):
        ids, counts = id_counts(plane)
        areas.append(np.column_stack([np.full(ids.size, z, np.int64), ids, counts]).astype(np.int64))
        if previous:
            next_.append(_shared_rows(z - 1, previous[-1], plane))
        if close_gaps and len(previous) == 2:
            skip.append(_shared_rows(z - 2, previous[0], plane))
        previous.append(plane)
    return _SectionTables(_rows(areas, 3), _rows(next_, 4), _rows(skip, 4))


Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # node a, node b, shared pixels


def _section_graph(tables: list[_SectionTables]) -> tuple[np.ndarray, np.ndarray, Edges, Edges]:
    """Merge the regions' tables: nodes are (z, id) sorted, keyed z << 32 | id; with areas and edges."""
    areas = _rows((t.areas for t in tables), 3)
    keys, _, area = group_sums((areas[:, 0] << 32) | areas[:, 1], areas[:, 2])

    def edges(rows: np.ndarray, dz: int) -> Edges:
        a = np.searchsorted(keys, (rows[:, 0] << 32) | rows[:, 1])
        b = np.searchsorted(keys, ((rows[:, 0] + dz) << 32) | rows[:, 2])
        pair, _, shared = group_sums(a * max(keys.size, 1) + b, rows[:, 3])
        return pair // max(keys.size, 1), pair % max(keys.size, 1), shared

    next_ = edges(_rows((t.next_ for t in tables), 4), 1)
    skip = edges(_rows((t.skip for t in tables), 4), 2)
    return keys, area, next_, skip


def _overlap_and_iou(area: np.ndarray, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
    """Shared pixels over the smaller object's area, and IoU, of each edge."""
    a, b, shared = edges
    return shared / np.minimum(area[a], area[b]), shared / (area[a] + area[b] - shared)


def link_objects(
    z: np.ndarray,
    area: np.ndarray,
    next_edges: Edges,
    skip_edges: Edges,
    *,
    overlap_threshold: float = 0.5,
    close_gaps: bool = True,
    min_z_extent: int = 1,
) -> tuple[np.ndarray, LinkResult]:
    """Link 2D objects of adjacent sections into 3D objects; returns each node's 3D id (0: dropped).

    Nodes are 2D objects with section `z` and pixel `area`; edges give shared
    pixels with objects of section z+1 (`next_edges`) and z+2 (`skip_edges`).
    Two objects may link when their shared pixels are at least `overlap_threshold`
    of the smaller one: a nucleus's cap in an anisotropic stack lies inside the
    next section's larger profile, but their IoU can be 0.2 (micro-sam likewise
    links by the overlap normalised by one object's area, not by IoU). Links are
    one-to-one, best IoU first (so a small fragment inside an object does not
    take the object's true continuation), and every 3D object is a chain with
    at most one 2D object per section. A gap link z -> z+2 is made only between
    objects that found no partner across z+1 (one missing or failed section).
    Ids 1..n are numbered by each object's first (z, id) node.
    """
    n = z.size
    a1, b1, _ = next_edges
    overlap, iou = _overlap_and_iou(area, next_edges)
    kept = one_to_one(a1, b1, overlap, overlap_threshold, rank=iou)
    a, b = [a1[kept]], [b1[kept]]
    n_gap = 0
    if close_gaps:
        a2, b2, s2 = skip_edges
        has_next = np.zeros(n, bool)
        has_prev = np.zeros(n, bool)
        has_next[a1[kept]] = True
        has_prev[b1[kept]] = True
        free = ~has_next[a2] & ~has_prev[b2]
        a2, b2, s2 = a2[free], b2[free], s2[free]
        overlap, iou = _overlap_and_iou(area, (a2, b2, s2))
        gap = one_to_one(a2, b2, overlap, overlap_threshold, rank=iou)
        a.append(a2[gap])
        b.append(b2[gap])
        n_gap = int(gap.size)
    if n == 0:
        return np.zeros(0, np.uint32), LinkResult(0, 0, 0, 0, 0)
    links = np.concatenate(a), np.concatenate(b)
    graph = coo_matrix((np.ones(links[0].size, np.int8), links), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    z_lo = np.full(n_comp, np.iinfo(np.int64).max)
    z_hi = np.full(n_comp, -1, np.int64)
    np.minimum.at(z_lo, comp, z)
    np.maximum.at(z_hi, comp, z)
    long_enough = z_hi - z_lo + 1 >= min_z_extent
    gid, n_objects = consecutive_ids(comp, long_enough[comp])
    dropped = int(n_comp - long_enough.sum())
    return gid, LinkResult(n_objects, n, int(kept.size), n_gap, dropped)


def link_sections(
    labels: zarr.Array,
    out: zarr.Array | None = None,
    *,
    overlap_threshold: float = 0.5,
    close_gaps: bool = True,
    min_z_extent: int = 1,
    workers: int | None = None,
) -> LinkResult:
    """Relabel a (Z, Y, X) label volume so that ids are consistent across sections.

    Each section's labels are taken as that section's 2D objects (ids may repeat
    between sections, as from a per-slice segmenter). Objects of adjacent
    sections are linked one-to-one when their shared pixels are at least
    `overlap_threshold` of the smaller one (see `link_objects`); the result, ids 1..n, goes to `out` (default: in place).
    Reads `labels` twice, one chunk column or chunk at a time.
    """
    out = labels if out is None else out
    if labels.ndim != 3 or tuple(out.shape) != tuple(labels.shape):
        raise ValueError(f"need a 3D label volume and an output of its shape, got {labels.shape}, {out.shape}")
    with thread_map(resolve_workers(workers)) as mapper:
        columns = chunk_regions(labels.shape[1:], labels.chunks[1:])
        tables = list(mapper(partial(_section_tables, labels, close_gaps), columns))
        keys, area, next_edges, skip_edges = _section_graph(tables)
        del tables
        z = keys >> 32
        gid, result = link_objects(
            z,
            area,
            next_edges,
            skip_edges,
            overlap_threshold=overlap_threshold,
            close_gaps=close_gaps,
            min_z_extent=min_z_extent,
        )
        ids = (keys & U32_MAX).astype(np.uint32)
        bounds = np.searchsorted(z, np.arange(labels.shape[0] + 1))

        def relabel(region: Slices) -> None:
            block = labels[region]
            new = np.empty(block.shape, out.dtype)
            for k, plane in enumerate(block):
                lo, hi = bounds[region[0].start + k], bounds[region[0].start + k + 1]
                new[k] = remap(plane, ids[lo:hi], gid[lo:hi])
            out[region] = new

        for _ in mapper(relabel, chunk_regions(out.shape, write_unit(out))):
            pass
    return result
