"""Stitching per-tile instance labels into one global label image, in bounded memory.

Each tile is segmented on its window (inner region + halo), with ids local to
the tile. Stitching makes one image with global ids:

1. Scan (one read per tile): row by row, keeping two rows of windows in memory,
   record each tile's local ids (and their pixel counts in its inner region) and
   match the instances of every pair of neighbouring tiles (diagonals included)
   over the overlap of their two windows.
2. Join: matches are joined with a guarded union-find (strongest match first; a
   join that would put two instances of the same tile into one object is
   refused), then objects that own at least one inner-region pixel get ids
   1..n, in tile order.
3. Paint (one more read per tile, three rows of windows held): every tile writes
   its inner region, relabelled through a lookup table, into the output zarr
   array; pixels it calls background take the object a neighbour sees there, so
   that an object found by one tile only is not cut straight at its border.

Matching uses the IoU of the two instances *restricted to the overlap of the two
windows*. The overlap is the only region both tiles have seen, so this is the
only fair comparison: an object seen whole by one tile and cut at the other's
window border has identical restrictions (IoU 1) in both, whatever lies outside.

Volumes are stitched section by section, then `link_sections` links the objects
of adjacent sections by IoU (one-to-one), optionally closes one-section gaps and
drops objects spanning too few sections, rewriting the label volume chunk by chunk.

`export_tif` and `instance_table` read a label array chunk by chunk, too.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import zarr
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tilesam.config import StitchParams
from tilesam.tiling import Tile, TileGrid

__all__ = [
    "LinkResult",
    "StitchResult",
    "export_tif",
    "instance_table",
    "join_guarded",
    "link_objects",
    "link_sections",
    "one_to_one",
    "overlap_iou",
    "stitch",
    "stitch_tiles",
]

ReadTile = Callable[[Tile], np.ndarray]
Slices = tuple[slice, ...]

_U32_MAX = 0xFFFFFFFF


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LinkResult:
    """What linking the sections of a volume did."""

    n_objects: int  # 3D objects written, ids 1..n_objects
    n_section_objects: int  # 2D objects (per section) before linking
    n_links: int  # links between adjacent sections
    n_gap_links: int  # links over one missing section (z to z+2)
    n_dropped: int  # 3D objects dropped as spanning fewer than min_z_extent sections


@dataclass(frozen=True)
class StitchResult:
    """What stitching an image did; `links` is set for volumes."""

    n_objects: int  # ids 1..n_objects in the output
    n_tiles: int
    n_matches: int  # one-to-one instance matches between neighbouring tiles
    n_merges: int  # matches that joined two different objects (the others were redundant)
    n_rejected: int  # matches refused by the over-merge guard
    links: LinkResult | None = None


@dataclass(frozen=True)
class _TileIds:
    """A tile's local ids (sorted, nonzero) and each one's pixel count in the inner region."""

    ids: np.ndarray
    inner_area: np.ndarray


@dataclass(frozen=True)
class _PairMatches:
    """One-to-one matches between the local ids of two neighbouring tiles."""

    tile_a: int
    tile_b: int
    ids_a: np.ndarray
    ids_b: np.ndarray
    iou: np.ndarray


@dataclass(frozen=True)
class _SectionTables:
    """Per-section object areas and cross-section overlaps of one yx column of chunks.

    `areas` rows are (z, id, pixels); `next_` and `skip` rows are (z, id in z,
    id in z+1 resp. z+2, shared pixels).
    """

    areas: np.ndarray
    next_: np.ndarray
    skip: np.ndarray


# --------------------------------------------------------------------------- label arithmetic


def _id_counts(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def _pair_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
        (keys & np.uint64(_U32_MAX)).astype(np.uint32),
        counts.astype(np.int64),
    )


def _remap(values: np.ndarray, keys: np.ndarray, new: np.ndarray) -> np.ndarray:
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


def overlap_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every pair of instances that share pixels, between two labellings of one region.

    `a` and `b` label the same pixels (the overlap of two tile windows), so the
    IoU is that of the two instances' restrictions to this region. Returns
    (ids in a, ids in b, iou) for all pairs with a nonzero intersection.
    """
    ids_a, ids_b, inter = _pair_counts(a, b)
    _, row_a, area_a = _group_sums(ids_a, inter)
    _, row_b, area_b = _group_sums(ids_b, inter)
    both = (ids_a != 0) & (ids_b != 0)
    inter_ab = inter[both]
    union = area_a[row_a[both]] + area_b[row_b[both]] - inter_ab
    return ids_a[both], ids_b[both], inter_ab / union


def _group_sums(keys: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique keys, each row's group, and the summed weights per group."""
    groups, row = np.unique(keys, return_inverse=True)
    sums = np.bincount(row, weights=weights, minlength=groups.size).astype(np.int64)
    return groups, row, sums


def one_to_one(a: np.ndarray, b: np.ndarray, score: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of candidate pairs kept by greedy one-to-one matching, best score first.

    Pairs scoring below `threshold` are never kept; each `a` and each `b` is kept
    at most once. When the candidates are unique already (always so for IoU
    above 0.5: an instance cannot overlap two disjoint ones by more than half),
    no loop is needed.
    """
    candidates = np.flatnonzero(score >= threshold)
    order = candidates[np.argsort(-score[candidates], kind="stable")]
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


def join_guarded(
    n_nodes: int, a: np.ndarray, b: np.ndarray, score: np.ndarray, group: np.ndarray
) -> tuple[np.ndarray, int, int]:
    """Union-find over matches (strongest first) that never puts two nodes of one group together.

    Nodes are tile instances and `group` is each node's tile. A tile says its
    instances are different objects, so a match that would join two components
    both holding an instance of the same tile is refused: this stops chains of
    weak matches in dense regions from merging neighbours. Returns each node's
    component (the id of a node in it), the number of joins and of refusals.
    """
    parent: dict[int, int] = {}
    members: dict[int, set[int]] = {}

    def find(x: int) -> int:
        while parent.get(x, x) != x:
            parent[x] = parent.get(parent[x], parent[x])
            x = parent[x]
        return x

    merges = rejected = 0
    for i in np.argsort(-score, kind="stable").tolist():
        ra, rb = find(int(a[i])), find(int(b[i]))
        if ra == rb:
            continue
        groups_a = members.get(ra) or {int(group[ra])}
        groups_b = members.get(rb) or {int(group[rb])}
        if groups_a & groups_b:
            rejected += 1
            continue
        if len(groups_a) < len(groups_b):
            ra, rb, groups_a, groups_b = rb, ra, groups_b, groups_a
        parent[rb] = ra
        members[ra] = groups_a | groups_b
        members.pop(rb, None)
        merges += 1
    component = np.arange(n_nodes, dtype=np.int64)
    for node in parent:
        component[node] = find(node)
    return component, merges, rejected


def _consecutive_ids(component: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..n for the components that hold a kept node, numbered by their first node; 0 otherwise."""
    comps, first, row = np.unique(component, return_index=True, return_inverse=True)
    kept = np.bincount(row[keep], minlength=comps.size) > 0
    by_first = np.argsort(first, kind="stable")
    kept_by_first = by_first[kept[by_first]]
    number = np.zeros(comps.size, np.uint32)
    number[kept_by_first] = np.arange(1, kept_by_first.size + 1, dtype=np.uint32)
    return number[row], int(kept_by_first.size)


# --------------------------------------------------------------------------- tiles


def _workers(workers: int | None) -> int:
    return max(1, workers if workers is not None else min(4, os.cpu_count() or 1))


@contextmanager
def _mapper(workers: int) -> Iterator[Callable]:
    """`map` on a thread pool (numpy and zarr release the GIL), or plain `map` for one worker."""
    if workers <= 1:
        yield map
        return
    with ThreadPoolExecutor(workers) as pool:
        yield pool.map


def _read_window(read_tile: ReadTile, tile: Tile) -> np.ndarray:
    """The tile's labels, checked for shape and converted to uint32."""
    window = np.asarray(read_tile(tile))
    if window.shape != tile.window_shape:
        raise ValueError(
            f"read_tile returned shape {window.shape} for tile {tile.id}, expected its window shape {tile.window_shape}"
        )
    if window.dtype == np.uint32:
        return window
    if not np.issubdtype(window.dtype, np.integer):
        raise TypeError(f"tile {tile.id}: labels must be integers, got {window.dtype}")
    if window.size and (int(window.min()) < 0 or int(window.max()) > _U32_MAX):
        raise ValueError(f"tile {tile.id}: labels must lie in 0..2**32-1")
    return window.astype(np.uint32)


def _window_overlap(a: Tile, b: Tile) -> tuple[Slices, Slices] | None:
    """Where the windows of two tiles overlap: the index into each window, or None."""
    lo = [max(a.window[k][0], b.window[k][0]) for k in (0, 1)]
    hi = [min(a.window[k][1], b.window[k][1]) for k in (0, 1)]
    if any(h <= lo_k for lo_k, h in zip(lo, hi)):
        return None

    def index(t: Tile) -> Slices:
        return tuple(slice(lo[k] - t.window[k][0], hi[k] - t.window[k][0]) for k in (0, 1))

    return index(a), index(b)


def _tile_ids(tile: Tile, window: np.ndarray) -> _TileIds:
    ids, _ = _id_counts(window)
    inner_ids, inner_counts = _id_counts(window[tile.inner_in_window()])
    inner_area = np.zeros(ids.size, np.int64)
    inner_area[np.searchsorted(ids, inner_ids)] = inner_counts
    return _TileIds(ids, inner_area)


def _match_pair(a: Tile, window_a: np.ndarray, b: Tile, window_b: np.ndarray, threshold: float) -> _PairMatches:
    overlap = _window_overlap(a, b)
    if overlap is None:
        empty = np.zeros(0, np.uint32)
        return _PairMatches(a.id, b.id, empty, empty, np.zeros(0))
    ids_a, ids_b, iou = overlap_iou(window_a[overlap[0]], window_b[overlap[1]])
    kept = one_to_one(ids_a, ids_b, iou, threshold)
    return _PairMatches(a.id, b.id, ids_a[kept], ids_b[kept], iou[kept])


def _row_tiles(grid: TileGrid, z: int, row: int) -> list[Tile]:
    nx = grid.grid_shape[1]
    return [grid.tile(grid.tile_id(z if grid.is_volume else None, row, col)) for col in range(nx)]


def _scan(
    grid: TileGrid, read_tile: ReadTile, threshold: float, mapper: Callable
) -> tuple[list[_TileIds], list[_PairMatches]]:
    """Pass 1: local ids of every tile and matches of every neighbouring pair.

    Two rows of windows are held at a time, so each tile is read once.
    """
    ny = grid.grid_shape[0]
    tile_ids: list[_TileIds] = []
    pairs: list[_PairMatches] = []

    def read_row(z: int, row: int) -> dict[int, np.ndarray]:
        tiles = _row_tiles(grid, z, row) if row < ny else []
        return {t.id: w for t, w in zip(tiles, mapper(partial(_read_window, read_tile), tiles))}

    for z in range(grid.n_sections):
        below = read_row(z, 0)
        for row in range(ny):
            current, below = below, read_row(z, row + 1)
            windows = current | below

            def scan_tile(tile: Tile, windows=windows) -> tuple[_TileIds, list[_PairMatches]]:
                window = windows[tile.id]
                matches = [
                    _match_pair(tile, window, other, windows[other.id], threshold) for other in grid.neighbours(tile)
                ]
                return _tile_ids(tile, window), matches

            for ids, matches in mapper(scan_tile, _row_tiles(grid, z, row)):
                tile_ids.append(ids)
                pairs.extend(matches)
    return tile_ids, pairs


def _global_ids(tile_ids: list[_TileIds], pairs: list[_PairMatches]) -> tuple[list[np.ndarray], int, int, int, int]:
    """Join the matches and number the objects.

    Returns per-tile tables of global ids (aligned with each tile's local ids),
    the number of objects, of matches, of joins and of refused joins.
    """
    sizes = np.array([t.ids.size for t in tile_ids], dtype=np.int64)
    offset = np.concatenate([[0], np.cumsum(sizes)])
    node_tile = np.repeat(np.arange(len(tile_ids)), sizes)

    def nodes(tile: int, ids: np.ndarray) -> np.ndarray:
        return offset[tile] + np.searchsorted(tile_ids[tile].ids, ids)

    a = np.concatenate([nodes(p.tile_a, p.ids_a) for p in pairs] or [np.zeros(0, np.int64)])
    b = np.concatenate([nodes(p.tile_b, p.ids_b) for p in pairs] or [np.zeros(0, np.int64)])
    iou = np.concatenate([p.iou for p in pairs] or [np.zeros(0)])
    component, merges, rejected = join_guarded(int(offset[-1]), a, b, iou, node_tile)
    inner = np.concatenate([t.inner_area for t in tile_ids] or [np.zeros(0, np.int64)]) > 0
    gid, n_objects = _consecutive_ids(component, inner)
    per_tile = [gid[offset[i] : offset[i + 1]] for i in range(len(tile_ids))]
    return per_tile, n_objects, int(a.size), merges, rejected


def _write_unit(arr: zarr.Array) -> tuple[int, ...]:
    """The block one write rewrites whole: the shard of a sharded array, else the chunk."""
    return tuple(getattr(arr, "shards", None) or arr.chunks)


def _tiles_own_chunks(grid: TileGrid, out: zarr.Array) -> bool:
    """Whether every chunk (or shard) of `out` lies inside one tile's inner region in yx."""
    cy, cx = _write_unit(out)[-2:]
    ty, tx = grid.tile_shape
    return ty % cy == 0 and tx % cx == 0


_AROUND = ((-1, 0), (0, -1), (0, 1), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))  # edges before corners


def _fill_background(
    grid: TileGrid, tile: Tile, labels: np.ndarray, windows: dict[int, np.ndarray], to_global: Callable
) -> np.ndarray:
    """Give the tile's background pixels the objects its neighbours see there (edge neighbours first).

    An object found by a neighbour, reaching into this tile through the neighbour's
    halo, and missed by this tile would otherwise be cut straight at this tile's
    border. The tile's own objects always win; only pixels it calls background change.
    `windows` hold local ids; `to_global(tile_id, ids)` relabels just the pixels taken.
    """
    ny, nx = grid.grid_shape
    (iy0, iy1), (ix0, ix1) = tile.inner
    for dr, dc in _AROUND:
        r, c = tile.row + dr, tile.col + dc
        if not (0 <= r < ny and 0 <= c < nx):
            continue
        other = grid.tile(grid.tile_id(tile.z, r, c))
        (wy0, wy1), (wx0, wx1) = other.window
        y0, y1, x0, x1 = max(iy0, wy0), min(iy1, wy1), max(ix0, wx0), min(ix1, wx1)
        if y1 <= y0 or x1 <= x0:
            continue
        mine = labels[y0 - iy0 : y1 - iy0, x0 - ix0 : x1 - ix0]  # a view: filled in place
        theirs = windows[other.id][y0 - wy0 : y1 - wy0, x0 - wx0 : x1 - wx0]
        hole = (mine == 0) & (theirs != 0)
        if hole.any():
            mine[hole] = to_global(other.id, theirs[hole])
    return labels


def _paint(
    grid: TileGrid,
    read_tile: ReadTile,
    out: zarr.Array,
    tile_ids: list[_TileIds],
    gids: list[np.ndarray],
    mapper: Callable,
    fill: bool,
) -> None:
    """Pass 2: write each tile's inner region with global ids, row by row.

    With `fill`, the windows of the rows above and below are held too, so that
    background pixels can take a neighbour's object.
    """
    ny = grid.grid_shape[0]
    reach = 1 if fill else 0

    def to_global(tile_id: int, values: np.ndarray) -> np.ndarray:
        return _remap(values, tile_ids[tile_id].ids, gids[tile_id])

    def read_row(z: int, row: int) -> dict[int, np.ndarray]:
        tiles = _row_tiles(grid, z, row) if 0 <= row < ny else []
        return {t.id: w for t, w in zip(tiles, mapper(partial(_read_window, read_tile), tiles))}

    # tiles that share output chunks must not write concurrently
    write_mapper = mapper if _tiles_own_chunks(grid, out) else map
    for z in range(grid.n_sections):
        rows = deque((read_row(z, r) for r in range(-reach, reach)), maxlen=2 * reach + 1)
        for row in range(ny):
            rows.append(read_row(z, row + reach))
            windows = {k: v for r in rows for k, v in r.items()}

            def paint(tile: Tile, windows=windows) -> None:
                labels = to_global(tile.id, windows[tile.id][tile.inner_in_window()])
                if fill:
                    labels = _fill_background(grid, tile, labels, windows, to_global)
                out[tile.inner_slices()] = labels.astype(out.dtype)

            for _ in write_mapper(paint, _row_tiles(grid, z, row)):
                pass


def stitch_tiles(
    grid: TileGrid,
    read_tile: ReadTile,
    out: zarr.Array,
    *,
    iou_threshold: float = 0.5,
    fill_background: bool = True,
    workers: int | None = None,
) -> StitchResult:
    """Stitch per-tile local labels into `out` with global ids 1..n (each section on its own for volumes).

    `read_tile(tile)` returns the tile's labels over its window (uint32, 0 =
    background, ids local to the tile) and must return the same labels each
    time (it is called twice per tile, from worker threads when workers > 1).
    `out` has the grid's shape; chunks that divide the tile shape let tiles be
    written in parallel. Instances of neighbouring tiles are matched one-to-one
    by the IoU of their restrictions to the windows' overlap (at least
    `iou_threshold`); objects only ever seen in halos get no id. With
    `fill_background`, a pixel that its own tile calls background takes the
    object a neighbouring tile sees there (see `_fill_background`).
    """
    if tuple(out.shape) != grid.shape:
        raise ValueError(f"output shape {tuple(out.shape)} differs from the grid's {grid.shape}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    with _mapper(_workers(workers)) as mapper:
        tile_ids, pairs = _scan(grid, read_tile, iou_threshold, mapper)
        gids, n_objects, n_matches, merges, rejected = _global_ids(tile_ids, pairs)
        if n_objects > np.iinfo(out.dtype).max:
            raise ValueError(f"{n_objects} objects do not fit the output dtype {out.dtype}")
        _paint(grid, read_tile, out, tile_ids, gids, mapper, fill_background)
    return StitchResult(n_objects, grid.n_tiles, n_matches, merges, rejected)


def stitch(grid: TileGrid, read_tile: ReadTile, out: zarr.Array, params: StitchParams | None = None) -> StitchResult:
    """Stitch an image into `out`: tiles only for 2D, tiles then `link_sections` for volumes."""
    params = params or StitchParams()
    result = stitch_tiles(
        grid,
        read_tile,
        out,
        iou_threshold=params.iou_threshold,
        fill_background=params.fill_background,
        workers=params.workers,
    )
    if not grid.is_volume:
        return result
    links = link_sections(
        out,
        iou_threshold=params.link_iou_threshold,
        close_gaps=params.close_gaps,
        min_z_extent=params.min_z_extent,
        workers=params.workers,
    )
    return replace(result, n_objects=links.n_objects, links=links)


def stitch_in_memory(grid: TileGrid, tiles: dict[int, np.ndarray], params: StitchParams | None = None) -> np.ndarray:
    """`stitch` of per-tile window labels held in a dict (tile id -> labels), for small images."""
    chunks = (1,) * (len(grid.shape) - 2) + tuple(min(t, s) for t, s in zip(grid.tile_shape, grid.shape[-2:]))
    out = zarr.create_array(store=zarr.storage.MemoryStore(), shape=grid.shape, chunks=chunks, dtype="uint32")
    stitch(grid, lambda tile: tiles[tile.id], out, params)
    return out[...]


# --------------------------------------------------------------------------- sections


def _chunk_regions(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[Slices]:
    """The index of every chunk of an array of this shape and chunking, in C order."""
    grids = np.meshgrid(*[np.arange(0, s, c) for s, c in zip(shape, chunks)], indexing="ij")
    starts = np.stack([g.ravel() for g in grids], axis=1) if grids else np.zeros((1, 0), int)
    return [tuple(slice(int(s), min(int(s) + c, n)) for s, c, n in zip(row, chunks, shape)) for row in starts]


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
    ids_a, ids_b, shared = _pair_counts(a[both], b[both])
    return np.column_stack([np.full(ids_a.size, z, np.int64), ids_a, ids_b, shared]).astype(np.int64)


def _section_tables(labels: zarr.Array, close_gaps: bool, region: Slices) -> _SectionTables:
    """Object areas and overlaps with the next (and next but one) section, in one yx region."""
    ys, xs = region
    areas, next_, skip = [], [], []
    previous: deque[np.ndarray] = deque(maxlen=2)  # sections z-2, z-1
    for z, plane in _planes(labels, ys, xs):
        ids, counts = _id_counts(plane)
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
    keys, _, area = _group_sums((areas[:, 0] << 32) | areas[:, 1], areas[:, 2])

    def edges(rows: np.ndarray, dz: int) -> Edges:
        a = np.searchsorted(keys, (rows[:, 0] << 32) | rows[:, 1])
        b = np.searchsorted(keys, ((rows[:, 0] + dz) << 32) | rows[:, 2])
        pair, _, shared = _group_sums(a * max(keys.size, 1) + b, rows[:, 3])
        return pair // max(keys.size, 1), pair % max(keys.size, 1), shared

    next_ = edges(_rows((t.next_ for t in tables), 4), 1)
    skip = edges(_rows((t.skip for t in tables), 4), 2)
    return keys, area, next_, skip


def link_objects(
    z: np.ndarray,
    area: np.ndarray,
    next_edges: Edges,
    skip_edges: Edges,
    *,
    iou_threshold: float = 0.5,
    close_gaps: bool = True,
    min_z_extent: int = 1,
) -> tuple[np.ndarray, LinkResult]:
    """Link 2D objects of adjacent sections into 3D objects; returns each node's 3D id (0: dropped).

    Nodes are 2D objects with section `z` and pixel `area`; edges give shared
    pixels with objects of section z+1 (`next_edges`) and z+2 (`skip_edges`).
    Links are one-to-one by IoU, so every 3D object is a chain with at most one
    2D object per section. A gap link z -> z+2 is made only between objects that
    found no partner across z+1 (one missing or failed section). Ids 1..n are
    numbered by each object's first (z, id) node.
    """
    n = z.size
    a1, b1, s1 = next_edges
    kept = one_to_one(a1, b1, s1 / (area[a1] + area[b1] - s1), iou_threshold)
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
        gap = one_to_one(a2, b2, s2 / (area[a2] + area[b2] - s2), iou_threshold)
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
    gid, n_objects = _consecutive_ids(comp, long_enough[comp])
    dropped = int(n_comp - long_enough.sum())
    return gid, LinkResult(n_objects, n, int(kept.size), n_gap, dropped)


def link_sections(
    labels: zarr.Array,
    out: zarr.Array | None = None,
    *,
    iou_threshold: float = 0.5,
    close_gaps: bool = True,
    min_z_extent: int = 1,
    workers: int | None = None,
) -> LinkResult:
    """Relabel a (Z, Y, X) label volume so that ids are consistent across sections.

    Each section's labels are taken as that section's 2D objects (ids may repeat
    between sections, as from a per-slice segmenter). Objects of adjacent
    sections are linked one-to-one when their IoU is at least `iou_threshold`
    (see `link_objects`); the result, ids 1..n, goes to `out` (default: in place).
    Reads `labels` twice, one chunk column or chunk at a time.
    """
    out = labels if out is None else out
    if labels.ndim != 3 or tuple(out.shape) != tuple(labels.shape):
        raise ValueError(f"need a 3D label volume and an output of its shape, got {labels.shape}, {out.shape}")
    with _mapper(_workers(workers)) as mapper:
        columns = _chunk_regions(labels.shape[1:], labels.chunks[1:])
        tables = list(mapper(partial(_section_tables, labels, close_gaps), columns))
        keys, area, next_edges, skip_edges = _section_graph(tables)
        del tables
        z = keys >> 32
        gid, result = link_objects(
            z,
            area,
            next_edges,
            skip_edges,
            iou_threshold=iou_threshold,
            close_gaps=close_gaps,
            min_z_extent=min_z_extent,
        )
        ids = (keys & _U32_MAX).astype(np.uint32)
        bounds = np.searchsorted(z, np.arange(labels.shape[0] + 1))

        def relabel(region: Slices) -> None:
            block = labels[region]
            new = np.empty(block.shape, out.dtype)
            for k, plane in enumerate(block):
                lo, hi = bounds[region[0].start + k], bounds[region[0].start + k + 1]
                new[k] = _remap(plane, ids[lo:hi], gid[lo:hi])
            out[region] = new

        for _ in mapper(relabel, _chunk_regions(out.shape, _write_unit(out))):
            pass
    return result


# --------------------------------------------------------------------------- exports


def export_tif(
    labels: zarr.Array,
    path: str | Path,
    *,
    tile: tuple[int, int] = (256, 256),
    compression: str | None = "zlib",
    bigtiff: bool | None = None,
) -> Path:
    """Write a label image (2D) or volume (one page per section) as a tiled TIFF.

    Reads one band of about a chunk's height and the full width at a time, so
    memory stays bounded. BigTIFF is used for arrays over 2 GiB unless told.
    """
    if labels.ndim not in (2, 3):
        raise ValueError(f"export_tif writes 2D or 3D label arrays, got shape {labels.shape}")
    if len(tile) != 2 or any(t <= 0 or t % 16 for t in tile):
        raise ValueError(f"TIFF tiles must be positive multiples of 16, got {tile}")
    path = Path(path)
    bigtiff = labels.nbytes > 2**31 if bigtiff is None else bigtiff
    height, width = labels.shape[-2:]
    th, tw = tile
    band = th * -(-labels.chunks[-2] // th)  # a multiple of the tile height, at least one chunk

    def tiles() -> Iterator[np.ndarray]:
        for z in range(labels.shape[0] if labels.ndim == 3 else 1):
            for y0 in range(0, height, band):
                rows = slice(y0, min(y0 + band, height))
                block = labels[z, rows, :] if labels.ndim == 3 else labels[rows, :]
                for ty in range(0, block.shape[0], th):
                    for tx in range(0, width, tw):
                        yield block[ty : ty + th, tx : tx + tw]

    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        tif.write(
            tiles(),
            shape=tuple(labels.shape),
            dtype=labels.dtype,
            tile=tuple(tile),
            compression=compression,
            photometric="minisblack",
        )
    return path


def _chunk_stats(labels: zarr.Array, axes: str, region: Slices) -> pd.DataFrame:
    """Per-id pixel count, coordinate sums, minima and maxima within one chunk."""
    block = labels[region]
    flat = block.ravel()
    where = np.flatnonzero(flat)
    columns = ["id", "n"] + [f"{s}_{ax}" for s in ("sum", "min", "max") for ax in axes]
    if where.size == 0:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in columns})
    ids = flat[where]
    order = np.argsort(ids, kind="stable")
    ids, where = ids[order], where[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    stats = {"id": ids[starts].astype(np.int64), "n": np.diff(np.r_[starts, ids.size])}
    for ax, coord, origin in zip(axes, np.unravel_index(where, block.shape), region):
        coord = coord.astype(np.int64) + origin.start
        stats[f"sum_{ax}"] = np.add.reduceat(coord, starts)
        stats[f"min_{ax}"] = np.minimum.reduceat(coord, starts)
        stats[f"max_{ax}"] = np.maximum.reduceat(coord, starts)
    return pd.DataFrame(stats, columns=columns)


def instance_table(labels: zarr.Array, *, workers: int | None = None) -> pd.DataFrame:
    """One row per instance: id, area (2D) or volume (3D), centroid and bounding box.

    Computed chunk by chunk from per-chunk sums, minima and maxima, never from
    the whole image. Bounding boxes are half-open: bbox_y0 <= y < bbox_y1.
    """
    if labels.ndim not in (2, 3):
        raise ValueError(f"instance_table reads 2D or 3D label arrays, got shape {labels.shape}")
    axes = "zyx"[-labels.ndim :]
    with _mapper(_workers(workers)) as mapper:
        parts = list(mapper(partial(_chunk_stats, labels, axes), _chunk_regions(labels.shape, labels.chunks)))
    how = {"n": "sum"} | {f"{s}_{ax}": s for s in ("sum", "min", "max") for ax in axes}
    stats = pd.concat(parts, ignore_index=True).groupby("id", sort=True).agg(how)
    n = stats["n"].to_numpy(np.int64)
    columns = {"id": stats.index.to_numpy(np.int64), "area" if labels.ndim == 2 else "volume": n}
    columns |= {f"centroid_{ax}": stats[f"sum_{ax}"].to_numpy() / n for ax in axes}
    columns |= {f"bbox_{ax}0": stats[f"min_{ax}"].to_numpy(np.int64) for ax in axes}
    columns |= {f"bbox_{ax}1": stats[f"max_{ax}"].to_numpy(np.int64) + 1 for ax in axes}
    return pd.DataFrame(columns)
