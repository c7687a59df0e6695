"""Tile grids: how a 2D image or a 3D volume is cut into tiles with a halo.

Every pixel belongs to exactly one tile's *inner* region; the model sees the
tile's *window* (inner region grown by the halo, clipped to the image). A 3D
volume is tiled per z-slice because SAM is a 2D model. Tiles are numbered
z-major, then row, then column; a *block* is a run of consecutive tile ids and
is the unit of one Snakemake job.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

YX = tuple[int, int]


@dataclass(frozen=True)
class Tile:
    """One tile: where its inner region and its window lie in the image."""

    id: int
    z: int | None  # section index for volumes, None for 2D images
    row: int
    col: int
    inner: tuple[YX, YX]  # ((y0, y1), (x0, x1)) in image coordinates
    window: tuple[YX, YX]  # inner grown by the halo, clipped to the image

    @property
    def window_shape(self) -> YX:
        (y0, y1), (x0, x1) = self.window
        return (y1 - y0, x1 - x0)

    def window_slices(self) -> tuple[slice, ...]:
        """Index of the window in the image array (z first for volumes)."""
        (y0, y1), (x0, x1) = self.window
        yx = (slice(y0, y1), slice(x0, x1))
        return yx if self.z is None else (self.z, *yx)

    def inner_slices(self) -> tuple[slice, ...]:
        (y0, y1), (x0, x1) = self.inner
        yx = (slice(y0, y1), slice(x0, x1))
        return yx if self.z is None else (self.z, *yx)

    def inner_in_window(self) -> tuple[slice, slice]:
        """Index of the inner region inside the window array."""
        (y0, y1), (x0, x1) = self.inner
        (wy, _), (wx, _) = self.window
        return (slice(y0 - wy, y1 - wy), slice(x0 - wx, x1 - wx))


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of tiles over the spatial shape of an image.

    `shape` is (Y, X) for a 2D image and (Z, Y, X) for a volume; channels are
    not part of it.
    """

    shape: tuple[int, ...]
    tile_shape: YX
    halo: YX

    def __post_init__(self) -> None:
        if len(self.shape) not in (2, 3):
            raise ValueError(f"a tile grid needs a 2D or 3D shape, got {self.shape}")
        if any(s <= 0 for s in self.shape):
            raise ValueError(f"image shape {self.shape} has an empty axis")
        if len(self.tile_shape) != 2 or any(t <= 0 for t in self.tile_shape):
            raise ValueError(f"tile_shape must be two positive ints, got {self.tile_shape}")
        if len(self.halo) != 2 or any(h < 0 for h in self.halo):
            raise ValueError(f"halo must be two ints >= 0, got {self.halo}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "tile_shape", tuple(int(t) for t in self.tile_shape))
        object.__setattr__(self, "halo", tuple(int(h) for h in self.halo))

    @property
    def is_volume(self) -> bool:
        return len(self.shape) == 3

    @property
    def n_sections(self) -> int:
        return self.shape[0] if self.is_volume else 1

    @property
    def grid_shape(self) -> YX:
        """Tiles per column and per row of one section."""
        ny = math.ceil(self.shape[-2] / self.tile_shape[0])
        nx = math.ceil(self.shape[-1] / self.tile_shape[1])
        return (ny, nx)

    @property
    def n_tiles(self) -> int:
        ny, nx = self.grid_shape
        return self.n_sections * ny * nx

    def tile(self, tile_id: int) -> Tile:
        if not 0 <= tile_id < self.n_tiles:
            raise IndexError(f"tile {tile_id} is outside a grid of {self.n_tiles} tiles")
        ny, nx = self.grid_shape
        z, rest = divmod(tile_id, ny * nx)
        row, col = divmod(rest, nx)
        (ty, tx), (hy, hx) = self.tile_shape, self.halo
        height, width = self.shape[-2:]
        y0, x0 = row * ty, col * tx
        y1, x1 = min(y0 + ty, height), min(x0 + tx, width)
        window = ((max(y0 - hy, 0), min(y1 + hy, height)), (max(x0 - hx, 0), min(x1 + hx, width)))
        return Tile(
            id=tile_id,
            z=z if self.is_volume else None,
            row=row,
            col=col,
            inner=((y0, y1), (x0, x1)),
            window=window,
        )

    def tiles(self) -> list[Tile]:
        return [self.tile(i) for i in range(self.n_tiles)]

    def tile_id(self, z: int | None, row: int, col: int) -> int:
        ny, nx = self.grid_shape
        return (z or 0) * ny * nx + row * nx + col

    def neighbours(self, tile: Tile) -> list[Tile]:
        """Tiles of the same section whose windows overlap this one's, diagonals included.

        Only neighbours with a larger id are returned, so that each pair is
        visited once when iterating over all tiles.
        """
        ny, nx = self.grid_shape
        out = []
        for dr, dc in ((0, 1), (1, -1), (1, 0), (1, 1)):
            r, c = tile.row + dr, tile.col + dc
            if 0 <= r < ny and 0 <= c < nx:
                out.append(self.tile(self.tile_id(tile.z, r, c)))
        return out

    def n_blocks(self, tiles_per_block: int) -> int:
        return math.ceil(self.n_tiles / tiles_per_block)

    def block(self, block: int, tiles_per_block: int) -> list[Tile]:
        """The tiles of one block: ids block*tiles_per_block, ... (fewer in the last block)."""
        if not 0 <= block < self.n_blocks(tiles_per_block):
            raise IndexError(f"block {block} is outside 0..{self.n_blocks(tiles_per_block) - 1}")
        start = block * tiles_per_block
        return [self.tile(i) for i in range(start, min(start + tiles_per_block, self.n_tiles))]

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "tile_shape": list(self.tile_shape), "halo": list(self.halo)}

    @classmethod
    def from_dict(cls, d: dict) -> TileGrid:
        return cls(tuple(d["shape"]), tuple(d["tile_shape"]), tuple(d["halo"]))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> TileGrid:
        return cls.from_dict(json.loads(Path(path).read_text()))
