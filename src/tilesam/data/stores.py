"""Resumable zarr stores for block jobs.

A block job writes into `<out>.partial` and renames it to `<out>` only when
every tile is done. Snakemake deletes the declared outputs of an interrupted
job but not the partial store, so a rerun picks up at the first missing tile.
Each store records what it was made from and refuses to be reused otherwise.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import zarr


class StoreMismatch(RuntimeError):
    """A store made for another model, grid, image or parameters was about to be reused."""


def check(path: str | Path, root: zarr.Group, kind: str, expected: dict) -> None:
    """Raise StoreMismatch naming every field in which the store differs from `expected`."""
    found = root.attrs.get("tilesam", {}).get(kind)
    if found is None:
        raise StoreMismatch(f"{path}: not a tilesam {kind} store")
    diffs = [f"{k}: store has {found.get(k)!r}, wanted {v!r}" for k, v in expected.items() if found.get(k) != v]
    if diffs:
        raise StoreMismatch(
            f"{path} was made for something else and is not reused ({'; '.join(diffs)}); delete it to recompute"
        )


def open_partial(out: str | Path, kind: str, provenance: dict, n_tiles: int) -> zarr.Group:
    """Open `<out>.partial` for writing, resuming it if it exists and matches `provenance`.

    The store has a `done` flag per tile, written after the tile's data, so a
    killed job never leaves a tile marked done with missing data.
    """
    partial = partial_path(out)
    if partial.exists():
        root = zarr.open_group(str(partial), mode="a")
        check(partial, root, kind, provenance)
        return root
    root = zarr.open_group(str(partial), mode="w")
    root.attrs["tilesam"] = {kind: provenance}
    root.create_array("done", shape=(n_tiles,), chunks=(1,), dtype=bool, fill_value=False)
    return root


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def finish(out: str | Path) -> None:
    """Publish a complete partial store under its final name."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    partial_path(out).rename(out)


def open_done(path: str | Path, kind: str, provenance: dict) -> zarr.Group:
    """Open a finished store for reading after checking it is complete and what we expect."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such store")
    root = zarr.open_group(str(path), mode="r")
    check(path, root, kind, provenance)
    if not root["done"][:].all():
        raise StoreMismatch(f"{path}: incomplete store (an interrupted job?); rerun the step that writes it")
    return root
