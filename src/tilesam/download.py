"""Verified downloads: a file lands in place only when its sha256 is the expected one.

Shared by model checkpoints (:mod:`tilesam.models.fetch`) and public datasets
(:mod:`tilesam.data.public_datasets`); nothing here knows what the file is for.

- The cache is ``$TILESAM_CACHEDIR`` or pooch's platform cache folder for ``tilesam``.
- A download goes to a per-process ``.part`` file (pooch, 3 retries on HTTP/connection errors),
  is hashed, and only a matching file is renamed into place; a mismatch deletes it and raises
  :class:`ChecksumError` naming the file, url, expected and actual hash.
- Offline (``offline=True`` or ``TILESAM_OFFLINE=1``) nothing touches the network: a missing file
  raises :class:`OfflineError` saying which path to put it at and where it comes from.
- Hashing a 2.5 GB vit_h at every load costs seconds, so a verified hash is remembered in
  ``<cache>/checksums/`` together with the file's size and mtime; the file is re-hashed whenever
  either changes. (An in-place edit that keeps both is not detected; ``file_sha256(path,
  remember=False)`` always hashes.)
- Files whose checksum the project does not know are not fetched trust-on-first-use: the caller
  must supply one, else :class:`UnknownChecksumError` explains how.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    "file_sha256",
    "is_offline",
]

RETRIES = 3


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the expected one."""


class DownloadError(RuntimeError):
    """The download itself failed (HTTP error, no connection) after all retries."""


class OfflineError(RuntimeError):
    """Offline mode and the file is not in the cache."""


class UnknownChecksumError(RuntimeError):
    """The file's sha256 is not known and the caller gave none."""


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


def file_sha256(path: str | os.PathLike, *, remember: bool = True) -> str:
    """sha256 of a file; with ``remember``, reuse the last result while size and mtime are unchanged."""
    path = Path(path)
    stat = path.stat()
    record = _record_path(path)
    if remember and record.is_file():
        try:
            saved = json.loads(record.read_text())
            if saved["size"] == stat.st_size and saved["mtime_ns"] == stat.st_mtime_ns:
                return str(saved["sha256"])
        except (ValueError, KeyError, OSError):
            pass  # an unreadable record is just re-hashed
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    if remember:
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            entry = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
            record.write_text(json.dumps(entry))
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return sha


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
    """``target`` if it holds sha256 ``expected``, else a fresh download (from ``source`` or ``url``).

    Offline, a missing or wrong file is an error that says where to put which file
    (``hint`` adds to it); a wrong file is then left in place.
    """
    if target.is_file():
        actual = file_sha256(target)
        if actual == expected:
            return target
        if is_offline(offline):
            raise ChecksumError(
                f"cached file {target} ({what}) has sha256 {actual}, expected {expected}; offline mode, "
                f"so it was left in place: replace it with the file from {url}"
            )
        target.unlink()  # corrupt, partial or stale: download again
    elif is_offline(offline):
        raise OfflineError(
            f"{what}: {target} is not in the cache and tilesam is offline (TILESAM_OFFLINE / offline=True). "
            f"Download {url} on a connected machine (sha256 {expected}) and put it at {target}{hint}"
        )
    return download_file(source or url, target, expected, what=what, progress=progress)


def download_file(url: str, target: Path, expected: str, *, what: str, progress: bool = True) -> Path:
    """Download ``url`` to ``target`` with pooch; only a file with sha256 ``expected`` lands there.

    ``what`` names the file in errors.
    """
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
        actual = file_sha256(part, remember=False)
        if actual != expected:
            raise ChecksumError(
                f"download of {what} from {url} failed verification: sha256 expected {expected}, "
                f"actual {actual}; the file was deleted"
            )
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    file_sha256(target)  # remember the verified hash (size/mtime of the final file)
    return target
