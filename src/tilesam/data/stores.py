"""Resumable zarr stores for block jobs.

A block job writes into `<out>.partial` and renames it to `<out>` only when
every tile is done. Snakemake deletes the declared outputs of an interrupted
job but not the partial store, so a rerun picks up at the first missing tile.
Each store records what it was made from and refuses to be reused otherwise: a
partial store made for something else (the user changed a parameter between the
interrupted run and the rerun) is moved aside, named in the log, and the job starts
afresh, so nobody has to clean up by hand and nothing computed is deleted.

Every tile's compute seconds are stored beside its data (array `seconds`), so the
costs of a block are the same whether it ran in one job or was resumed.

One writer at a time: a job holds an exclusive lock on `<out>.lock` while it writes (the system
drops it when the process ends, however it ends), so a job orphaned by a killed snakemake and
the rerun's job never interleave their tiles; the second one stops with a message naming the first.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import zarr

log = logging.getLogger(__name__)


class StoreMismatch(RuntimeError):
    """A store made for another model, grid, image or parameters was about to be reused."""


class StoreLocked(RuntimeError):
    """Another process is writing the store right now."""


_LOCKS: dict[Path, int] = {}  # store -> the open lock file this process holds (dropped at exit)


def lock(out: str | Path) -> None:
    """Take the exclusive write lock of a block store, or raise StoreLocked naming the process that has it."""
    path = Path(str(out) + ".lock")
    if path in _LOCKS:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreLocked(
            f"{out} is being written by another process (pid {holder}), e.g. a job left running by a snakemake "
            f"that was killed: wait for it to end or stop it (kill {holder}), then rerun; nothing was written"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _LOCKS[path] = fd


def unlock(out: str | Path) -> None:
    """Drop the write lock of a block store (the lock file stays: removing it would race a waiting writer)."""
    fd = _LOCKS.pop(Path(str(out) + ".lock"), None)
    if fd is not None:
        os.close(fd)


def differences(root: zarr.Group, kind: str, expected: dict) -> list[str]:
    """Every field in which the store's record differs from `expected` (or why it has none)."""
    found = root.attrs.get("tilesam", {}).get(kind)
    if found is None:
        return [f"not a tilesam {kind} store"]
    return [f"{k}: store has {found.get(k)!r}, wanted {v!r}" for k, v in expected.items() if found.get(k) != v]


def check(path: str | Path, root: zarr.Group, kind: str, expected: dict) -> None:
    """Raise StoreMismatch naming every field in which the store differs from `expected`."""
    if root.attrs.get("tilesam", {}).get(kind) is None:
        raise StoreMismatch(f"{path}: not a tilesam {kind} store")
    diffs = differences(root, kind, expected)
    if diffs:
        raise StoreMismatch(
            f"{path} was made for something else and is not reused ({'; '.join(diffs)}); rerun the step that writes it"
        )


def open_partial(out: str | Path, kind: str, provenance: dict, n_tiles: int) -> zarr.Group:
    """Open `<out>.partial` for writing, resuming it if it exists and matches `provenance`.

    The store has a `done` flag per tile, written after the tile's data and its
    `seconds`, so a killed job never leaves a tile marked done with missing data or
    cost. A partial store made for anything else is moved aside (`set_aside`) and a
    new one started.
    """
    lock(out)
    partial = partial_path(out)
    if partial.exists():
        root = _open_existing(partial)
        diffs = (
            differences(root, kind, provenance) if root is not None else ["no tile flags (a job killed as it started?)"]
        )
        if not diffs and root["done"].shape == (n_tiles,):
            if "seconds" not in root:  # made before tiles' seconds were stored: the done tiles' are unknown
                root.create_array("seconds", shape=(n_tiles,), chunks=(1,), dtype="f8", fill_value=np.nan)
            return root
        set_aside(partial, "; ".join(diffs) or f"it has {root['done'].shape[0]} tiles, wanted {n_tiles}")
    root = zarr.open_group(str(partial), mode="w")
    root.attrs["tilesam"] = {kind: provenance}
    root.create_array("done", shape=(n_tiles,), chunks=(1,), dtype=bool, fill_value=False)
    root.create_array("seconds", shape=(n_tiles,), chunks=(1,), dtype="f8", fill_value=np.nan)
    return root


def _open_existing(path: Path) -> zarr.Group | None:
    """A partial store as a group with its `done` flags, or None if it is not one (a job killed at its start)."""
    try:
        root = zarr.open_group(str(path), mode="r+")
    except Exception:  # not a zarr group at all: the caller sets it aside
        return None
    return root if "done" in root else None


def set_aside(partial: Path, why: str) -> Path:
    """Rename a partial store that cannot be resumed to `<name>.stale-<UTC time>` and log it.

    Renaming (not deleting) keeps what it holds, e.g. hours of embeddings made with the
    previous parameters, until the user decides; the log line says where it went and why.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = partial.with_name(f"{partial.name.removesuffix('.partial')}.stale-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = partial.with_name(f"{partial.name.removesuffix('.partial')}.stale-{stamp}-{n}")
    partial.rename(target)
    log.warning(
        "%s was made for something else (%s): moved aside to %s and recomputing; delete it when not needed",
        partial,
        why,
        target,
    )
    return target


def tile_seconds(root: zarr.Group) -> np.ndarray | None:
    """Seconds of compute per tile as the store recorded them (NaN: unknown), or None for an old store."""
    return root["seconds"][:] if "seconds" in root else None


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def finish(out: str | Path) -> None:
    """Publish a complete partial store under its final name."""
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    partial_path(out).rename(out)
    unlock(out)


def open_done(path: str | Path, kind: str, provenance: dict) -> zarr.Group:
    """Open a finished store for reading after checking it is complete and what we expect."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such store")
    root = zarr.open_group(str(path), mode="r")
    check(path, root, kind, provenance)
    if not root["done"][:].all():
        raise StoreMismatch(f"{path}: incomplete store (an interrupted job?); rerun the step that writes it")
    return root
