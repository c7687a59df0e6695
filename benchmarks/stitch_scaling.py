"""How stitching scales: wall time and peak memory for square images of growing size.

Per-tile results are never stored: each tile window is generated on the fly from
a deterministic function of position (a lattice of discs with radii and offsets
hashed from the lattice cell), relabelled with ids local to the tile, exactly
as a segmenter would hand them over. So no full image is ever in memory, and
the stitch writes into a zarr array on disk (chunks = tile shape).

Each size runs in its own child process, which reports its wall time and its
own peak RSS (getrusage). Every disc lies wholly inside the image, so the
stitch must find exactly one object per non-empty lattice cell; that is checked.

    /tmp/venv/bin/python benchmarks/stitch_scaling.py [--sizes 5000 10000 20000]
        [--tile 1024] [--halo 64] [--workers 2] [--spacing 40]

Writes benchmarks/out/stitch_scaling.csv and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parent / "out"
SEED = 20240607


@dataclass(frozen=True)
class Lattice:
    """Discs, one per lattice cell (some cells empty), never touching and never crossing the cell."""

    spacing: int = 40
    r_min: int = 8
    r_max: int = 17
    empty_per_mille: int = 100
    seed: int = SEED

    def cells(self, iy: np.ndarray, ix: np.ndarray) -> tuple[np.ndarray, ...]:
        """Centre (y, x), radius and presence of the discs of cells (iy, ix) (broadcast)."""
        h = _mix(iy.astype(np.uint64) * np.uint64(1 << 32) + ix.astype(np.uint64) + np.uint64(self.seed))
        radius = (self.r_min + h % np.uint64(self.r_max - self.r_min + 1)).astype(np.int64)
        room = self.spacing // 2 - 1 - radius  # jitter that keeps the disc inside its cell
        dy = ((h >> np.uint64(16)) % np.uint64(1 << 16)).astype(np.int64) % (2 * room + 1) - room
        dx = ((h >> np.uint64(32)) % np.uint64(1 << 16)).astype(np.int64) % (2 * room + 1) - room
        present = (h >> np.uint64(48)) % np.uint64(1000) >= self.empty_per_mille
        half = self.spacing // 2
        return iy * self.spacing + half + dy, ix * self.spacing + half + dx, radius, present

    def window(self, y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        """Labels of the window y0:y1, x0:x1, with ids local to the window (1.. by cell).

        Each disc is painted into its own bounding box: a short loop over the
        window's cells beats full-window arithmetic by an order of magnitude.
        """
        (y0, y1), (x0, x1) = y, x
        iy = np.arange(y0 // self.spacing, (y1 - 1) // self.spacing + 1)
        ix = np.arange(x0 // self.spacing, (x1 - 1) // self.spacing + 1)
        cy, cx, radius, present = self.cells(iy[:, None], ix[None, :])
        labels = np.zeros((y1 - y0, x1 - x0), np.uint32)
        for r, c in zip(*np.nonzero(present)):
            ry, rx, rad = int(cy[r, c]) - y0, int(cx[r, c]) - x0, int(radius[r, c])
            top, left = max(ry - rad, 0), max(rx - rad, 0)
            bottom, right = min(ry + rad + 1, y1 - y0), min(rx + rad + 1, x1 - x0)
            if top >= bottom or left >= right:
                continue
            dy = np.arange(top, bottom)[:, None] - ry
            dx = np.arange(left, right)[None, :] - rx
            box = labels[top:bottom, left:right]
            box[dy * dy + dx * dx <= rad * rad] = r * ix.size + c + 1
        return labels

    def n_objects(self, size: int) -> int:
        n = size // self.spacing
        iy, ix = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        return int(np.count_nonzero(self.cells(iy, ix)[3]))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a well-spread hash of uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class Measurement:
    size: int
    tile: int
    halo: int
    workers: int
    n_tiles: int
    n_objects: int
    expected_objects: int
    n_matches: int
    seconds: float
    peak_mb: float
    baseline_mb: float
    ms_per_megapixel: float


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_one(size: int, tile: int, halo: int, workers: int, spacing: int) -> Measurement:
    """Stitch one synthetic size here (meant to run in a fresh child process)."""
    from tilesam.data import ome
    from tilesam.stitch.tiles import stitch_tiles
    from tilesam.tiling import TileGrid

    lattice = Lattice(spacing=spacing)
    if size % spacing:
        raise SystemExit(f"size {size} must be a multiple of the lattice spacing {spacing}")
    grid = TileGrid((size, size), (tile, tile), (halo, halo))
    baseline = _peak_mb()
    with tempfile.TemporaryDirectory(prefix="stitch_scaling_") as tmp:
        out = ome.create(Path(tmp) / "labels.zarr", grid.shape, np.uint32, grid.tile_shape)
        start = time.perf_counter()
        result = stitch_tiles(grid, lambda t: lattice.window(*t.window), out, workers=workers)
        seconds = time.perf_counter() - start
    expected = lattice.n_objects(size)
    return Measurement(
        size=size,
        tile=tile,
        halo=halo,
        workers=workers,
        n_tiles=grid.n_tiles,
        n_objects=result.n_objects,
        expected_objects=expected,
        n_matches=result.n_matches,
        seconds=round(seconds, 2),
        peak_mb=round(_peak_mb(), 1),
        baseline_mb=round(baseline, 1),
        ms_per_megapixel=round(seconds / (size * size / 1e6) * 1e3, 2),
    )


def _in_child(size: int, args: argparse.Namespace) -> Measurement:
    command = [
        sys.executable,
        __file__,
        "--one",
        str(size),
        "--tile",
        str(args.tile),
        "--halo",
        str(args.halo),
    ]
    command += ["--workers", str(args.workers), "--spacing", str(args.spacing)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"size {size} failed:\n{done.stderr}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000])
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--halo", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--spacing", type=int, default=40)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child mode: one size, JSON out
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(asdict(run_one(args.one, args.tile, args.halo, args.workers, args.spacing))))
        return

    rows = []
    print(f"{'size':>7} {'tiles':>6} {'objects':>9} {'ok':>3} {'seconds':>8} {'peak MB':>8} {'ms/Mpx':>8}")
    for size in args.sizes:
        m = _in_child(size, args)
        ok = "yes" if m.n_objects == m.expected_objects else "NO"
        print(
            f"{m.size:>7} {m.n_tiles:>6} {m.n_objects:>9} {ok:>3} {m.seconds:>8.1f} {m.peak_mb:>8.0f} "
            f"{m.ms_per_megapixel:>8.1f}",
            flush=True,
        )
        rows.append(asdict(m))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / "stitch_scaling.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
