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

Volumes are stitched section by section, then linked across sections
(`tilesam.stitch.sections.link_sections`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import zarr

from tilesam.config import StitchParams
from tilesam.stitch.chunks import Slices, resolve_workers, thread_map, write_unit
from tilesam.stitch.label_arithmetic import (
    U32_MAX,
    consecutive_ids,
    group_sums,
    id_counts,
    one_to_one,
    pair_counts,
    remap,
)
from tilesam.stitch.sections import LinkResult, link_sections
from tilesam.tiling import Tile, TileGrid

__all__ = ["StitchResult", "join_guarded", "overlap_iou", "stitch", "stitch_in_memory", "stitch_tiles"]

ReadTile = Callable[[Tile], np.ndarray]


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


def overlap_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every pair of instances that share pixels, between two labellings of one region.

    `a` and `b` label the same pixels (the overlap of two tile windows), so the
    IoU is that of the two instances' restrictions to this region. Returns
    (ids in a, ids in b, iou) for all pairs with a nonzero intersection.
    """
    ids_a, ids_b, inter = pair_counts(a, b)
    _, row_a, area_a = group_sums(ids_a, inter)
    _, row_b, area_b = group_sums(ids_b, inter)
    both = (ids_a != 0) & (ids_b != 0)
    inter_ab = inter[both]
    union = area_a[row_a[both]] + area_b[row_b[both]] - inter_ab
    return ids_a[both], ids_b[both], inter_ab / union


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
    if window.size and (int(window.min()) < 0 or int(window.max()) > U32_MAX):
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
    ids, _ = id_counts(window)
    inner_ids, inner_counts = id_counts(window[tile.inner_in_window()])
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
    gid, n_objects = consecutive_ids(component, inner)
    per_tile = [gid[offset[i] : offset[i + 1]] for i in range(len(tile_ids))]
    return per_tile, n_objects, int(a.size), merges, rejected


def _tiles_own_chunks(grid: TileGrid, out: zarr.Array) -> bool:
    """Whether every chunk (or shard) of `out` lies inside one tile's inner region in yx."""
    cy, cx = write_unit(out)[-2:]
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
        return remap(values, tile_ids[tile_id].ids, gids[tile_id])

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
    with thread_map(resolve_workers(workers)) as mapper:
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
        overlap_threshold=params.link_overlap_threshold,
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
