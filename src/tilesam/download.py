"""Verified downloads: a file lands in place only when its checksum is the expected one.

Shared by model checkpoints (:mod:`tilesam.models.fetch`) and public datasets
(:mod:`tilesam.data.public_datasets`); nothing here knows what the file is for.

- An expected checksum is pooch's ``known_hash`` notation: ``"xxh128:<hex>"``, ``"sha256:<hex>"``,
  ``"md5:<hex>"``, or bare hex for sha256 (what datasets and older cards give). Files are hashed
  with :func:`pooch.file_hash` (xxh128 needs the ``xxhash`` package).
- The cache is ``$TILESAM_CACHEDIR`` or pooch's platform cache folder for ``tilesam``.
- A download goes to a per-process ``.part`` file (pooch, 3 retries on HTTP/connection errors),
  is hashed, and only a matching file is renamed into place; a mismatch deletes it and raises
  :class:`ChecksumError` naming the file, url, expected and actual hash. (The hash is not handed
  to pooch's own ``known_hash`` check because pooch 1.9 retries a mismatch like a network error:
  a wrong 2.5 GB file would be downloaded four times before the error.)
- Offline (``offline=True`` or ``TILESAM_OFFLINE=1``) nothing touches the network: a missing file
  raises :class:`OfflineError` saying which path to put it at and where it comes from.
- Hashing a 2.5 GB vit_h with sha256 at every cache check costs seconds, so a verified hash is
  remembered in ``<cache>/checksums/`` together with the file's size and mtime; the file is
  re-hashed whenever either changes. Such a record says nothing about the content (anyone who can
  write the cache can swap a file of the same size and mtime, or the record), so it never decides
  whether a file may be unpickled: :func:`verify_fresh` hashes in this process.
- Files whose checksum the project does not know are not fetched trust-on-first-use: the caller
  must supply one, else :class:`UnknownChecksumError` explains how.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pooch

__all__ = [
    "RETRIES",
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "UnknownChecksumError",
    "cache_dir",
    "download_file",
    "fetch_verified",
    "file_hash",
    "file_sha256",
    "hashed_in_process",
    "is_offline",
    "parse_hash",
    "rehash",
    "verify_fresh",
]

RETRIES = 3
_HEX_LENGTHS = {"sha256": 64, "xxh128": 32, "md5": 32}


class ChecksumError(RuntimeError):
    """A file's checksum differs from the expected one."""


class DownloadError(RuntimeError):
    """The download itself failed (HTTP error, no connection) after all retries."""


class OfflineError(RuntimeError):
    """Offline mode and the file is not in the cache."""


class UnknownChecksumError(RuntimeError):
    """The file's checksum is not known and the caller gave none."""


def parse_hash(known_hash: str) -> tuple[str, str]:
    """``(algorithm, hex)`` of a pooch-style ``[alg:]hex`` checksum; bare hex is sha256.

    Raises ValueError for an unknown algorithm or hex of the wrong length, so a typo in a
    registry entry or on the command line fails here and not as a mismatch after a download.
    """
    alg, sep, digest = known_hash.strip().lower().rpartition(":")
    alg = alg if sep else "sha256"
    if alg not in _HEX_LENGTHS:
        raise ValueError(f"checksum {known_hash!r}: unknown algorithm {alg!r}; known: {', '.join(_HEX_LENGTHS)}")
    if not re.fullmatch(f"[0-9a-f]{{{_HEX_LENGTHS[alg]}}}", digest):
        raise ValueError(f"checksum {known_hash!r}: a {alg} checksum is {_HEX_LENGTHS[alg]} hex digits")
    return alg, digest


def cache_dir() -> Path:
    """``$TILESAM_CACHEDIR`` if set, else the platform cache folder (``pooch.os_cache('tilesam')``)."""
    env = os.environ.get("TILESAM_CACHEDIR")
    return Path(env).expanduser() if env else Path(pooch.os_cache("tilesam"))


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``TILESAM_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return offline
    return os.environ.get("TILESAM_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _record_path(path: Path) -> Path:
    key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()
    return cache_dir() / "checksums" / f"{key}.json"


# Hashes computed by this process: resolved path -> ((size, mtime, ctime, inode), {algorithm: hex}).
# ctime is set by the kernel on every write, rename or utime and cannot be set back by a user.
_IN_PROCESS: dict[str, tuple[tuple[int, int, int, int], dict[str, str]]] = {}


def _identity(stat: os.stat_result) -> tuple[int, int, int, int]:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def _remembered(path: Path, stat: os.stat_result, alg: str) -> str | None:
    try:
        saved = json.loads(_record_path(path).read_text())
        if saved["size"] == stat.st_size and saved["mtime_ns"] == stat.st_mtime_ns:
            value = saved.get("hashes", {}).get(alg) or (saved.get("sha256") if alg == "sha256" else None)
            return str(value) if value else None
    except (ValueError, KeyError, OSError, AttributeError):
        pass  # a missing or unreadable record is just re-hashed
    return None


def _remember(path: Path, stat: os.stat_result, alg: str, digest: str) -> None:
    record = _record_path(path)
    try:
        try:
            saved = json.loads(record.read_text())
            same = saved["size"] == stat.st_size and saved["mtime_ns"] == stat.st_mtime_ns
            hashes = dict(saved.get("hashes", {})) if same else {}
        except (ValueError, KeyError, OSError, AttributeError):
            hashes = {}
        hashes[alg] = digest
        record.parent.mkdir(parents=True, exist_ok=True)
        entry = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hashes": hashes}
        record.write_text(json.dumps(entry))
    except OSError:
        pass  # a read-only cache only costs a re-hash next time


def file_hash(path: str | os.PathLike, algorithm: str = "sha256", *, remember: bool = True) -> str:
    """A file's checksum (hex); with ``remember``, reuse the last result while the file is unchanged.

    Reused with ``remember``: a hash this process computed while size, mtime, ctime and inode are the
    same (:func:`hashed_in_process`: a load right after a check costs nothing), else the cache's
    record while size and mtime are. ``remember=False`` always hashes. The hash itself is pooch's
    (:func:`pooch.file_hash`), the same code that checks micro-sam's xxh128 checksums.
    """
    path = Path(path)
    stat = path.stat()
    if remember and (known := _in_process(path, stat, algorithm)) is not None:
        return known
    if remember and (saved := _remembered(path, stat, algorithm)) is not None:
        return saved
    digest = pooch.file_hash(str(path), alg=algorithm)
    if _identity(path.stat()) == _identity(stat):  # not changed while it was read
        _note(path, stat, algorithm, digest)
    if remember:
        _remember(path, stat, algorithm, digest)
    return digest


def rehash(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """A file's checksum hashed now (never a remembered one), then remembered for :func:`file_hash`.

    For checksums written into records: a remembered value could belong to a file swapped at the
    same size and mtime.
    """
    path = Path(path)
    stat = path.stat()
    digest = file_hash(path, algorithm, remember=False)
    if _identity(path.stat()) == _identity(stat):
        _remember(path, stat, algorithm, digest)
    return digest


def _in_process(path: Path, stat: os.stat_result, algorithm: str) -> str | None:
    entry = _IN_PROCESS.get(str(path.resolve()))
    return entry[1].get(algorithm) if entry is not None and entry[0] == _identity(stat) else None


def _note(path: Path, stat: os.stat_result, algorithm: str, digest: str) -> None:
    """Keep a hash this process computed, for the file as it is now (``stat``)."""
    key = str(path.resolve())
    identity, hashes = _IN_PROCESS.get(key, (None, {}))
    kept = hashes if identity == _identity(stat) else {}
    _IN_PROCESS[key] = (_identity(stat), {**kept, algorithm: digest})


def file_sha256(path: str | os.PathLike, *, remember: bool = True) -> str:
    """sha256 of a file (see :func:`file_hash`)."""
    return file_hash(path, "sha256", remember=remember)


def hashed_in_process(path: str | os.PathLike, known_hash: str) -> bool:
    """Whether this process hashed ``path`` to ``known_hash`` and the file is unchanged since (size, m/ctime, inode)."""
    alg, digest = parse_hash(known_hash)
    path = Path(path)
    entry = _IN_PROCESS.get(str(path.resolve()))
    return entry is not None and entry[0] == _identity(path.stat()) and entry[1].get(alg) == digest


def verify_fresh(path: str | os.PathLike, known_hash: str, *, what: str) -> Path:
    """``path`` if this process hashed it to ``known_hash``, re-hashing it now unless it already did.

    The check to make before unpickling a file: a remembered record (size and mtime) could belong to
    a swapped file. xxh128 keeps it cheap: a 419 MB file (vit_b's size) hashed in 0.13-0.33 s with
    xxh128 and 0.73-1.33 s with sha256 (``pooch.file_hash``, file in the page cache, the 2 shared
    cores of the development machine, lower figures when they were quiet): about 4x faster. A
    second check of an unchanged file in the same process costs nothing (0.1 ms).
    """
    path = Path(path)
    if hashed_in_process(path, known_hash):
        return path
    alg, digest = parse_hash(known_hash)
    actual = file_hash(path, alg, remember=False)
    if actual != digest:
        raise ChecksumError(
            f"{what}: {path} has {alg} {actual}, expected {digest}; the file is not the published one "
            f"(replaced or corrupt) and was not loaded. Delete it; the next fetch downloads it again"
        )
    return path


def fetch_verified(
    url: str,
    target: Path,
    expected: str,
    *,
    what: str,
    offline: bool | None = None,
    progress: bool = True,
    source: str | None = None,
    hint: str = "",
) -> Path:
    """``target`` if it holds checksum ``expected`` (``[alg:]hex``), else a fresh download (from ``source`` or ``url``).

    Offline, a missing or wrong file is an error that says where to put which file
    (``hint`` adds to it); a wrong file is then left in place.
    """
    alg, digest = parse_hash(expected)
    if target.is_file():
        actual = file_hash(target, alg)
        if actual == digest:
            return target
        if is_offline(offline):
            raise ChecksumError(
                f"cached file {target} ({what}) has {alg} {actual}, expected {digest}; offline mode, "
                f"so it was left in place: replace it with the file from {url}"
            )
        target.unlink()  # corrupt, partial or stale: download again
    elif is_offline(offline):
        raise OfflineError(
            f"{what}: {target} is not in the cache and tilesam is offline (TILESAM_OFFLINE / offline=True). "
            f"Download {url} on a connected machine ({alg} {digest}) and put it at {target}{hint}"
        )
    return download_file(source or url, target, expected, what=what, progress=progress)


def download_file(url: str, target: Path, expected: str, *, what: str, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` with pooch; only a file with checksum ``expected`` lands there.

    ``what`` names the file in errors.
    """
    alg, digest = parse_hash(expected)
    part_name = f"{target.name}.{os.getpid()}.part"  # per process: parallel jobs may fetch at once
    part = target.parent / part_name
    part.unlink(missing_ok=True)  # pooch would otherwise take a leftover as already downloaded
    fetcher = pooch.create(
        path=target.parent,
        base_url="",
        registry={part_name: None},
        urls={part_name: url},
        retry_if_failed=RETRIES,
    )
    try:
        try:
            fetcher.fetch(part_name, downloader=pooch.HTTPDownloader(progressbar=progress))
        except Exception as error:  # requests' errors, OSError, ...: all mean "could not download"
            raise DownloadError(f"could not download {what} from {url} ({1 + RETRIES} attempts): {error}") from error
        actual = file_hash(part, alg, remember=False)
        if actual != digest:
            raise ChecksumError(
                f"download of {what} from {url} failed verification: {alg} expected {digest}, "
                f"actual {actual}; the file was deleted"
            )
        part.replace(target)  # the .part is this process's own: the hash above is the target's
    finally:
        part.unlink(missing_ok=True)
    stat = target.stat()  # after the rename, which changes the ctime
    _note(target, stat, alg, digest)
    _remember(target, stat, alg, digest)
    return target
