"""How the workflow names models: a config entry -> a resolved spec -> an id for file paths.

Ids must never collide: two checkpoints named ``best.pt`` in different runs, or a file
``/x/lite_medsam.pth`` beside the registry's ``lite_medsam``, are different models. A registry
name is its own id; a file's id is its stem plus a short hash of its resolved path
(``best-3fa2c1``): readable, and the same file always gets the same id, so two config entries
for one file are one model.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

__all__ = ["ID_HASH_LENGTH", "is_file_spec", "model_id", "resolve_spec", "weights_file"]

#: Hex digits of the path hash in a file's id: 16 million values, for the handful of files of a run.
ID_HASH_LENGTH = 6


def resolve_spec(spec: str, modality: str = "other") -> str:
    """A registry name (validated), `auto` (picked by modality), or existing checkpoint file(s).

    Files come back as resolved absolute paths (``checkpoint+decoder`` for a pair), so every
    way of writing one file is one spec.
    """
    from tilesam.models import recommend
    from tilesam.models.fetch import DECODER_SEPARATOR, parse

    if spec == "auto":
        return recommend(modality)
    ref = parse(spec, warn=True)  # an unknown name raises with the known names and a suggestion
    if ref.card is not None:
        return spec
    assert ref.path is not None
    for role, path in (("checkpoint", ref.path), ("decoder", ref.decoder)):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"model {spec!r}: no such {role} file {path}")
    resolved = str(ref.path.resolve())
    return resolved + (DECODER_SEPARATOR + str(ref.decoder.resolve()) if ref.decoder is not None else "")


def is_file_spec(spec: str) -> bool:
    """Whether a resolved spec names files (absolute paths) rather than a registry model (never a '/')."""
    return "/" in spec or "\\" in spec


def weights_file(spec: str) -> Path | None:
    """The checkpoint file of a resolved spec (without its decoder), or None for a registry name."""
    from tilesam.models.fetch import DECODER_SEPARATOR

    if not is_file_spec(spec):
        return None
    if Path(spec).is_file():
        return Path(spec)
    weights, sep, _ = spec.rpartition(DECODER_SEPARATOR)
    return Path(weights) if sep else Path(spec)


def model_id(spec: str) -> str:
    """A unique name usable in file paths: the registry name, or ``<stem>-<hash of the resolved path>``.

    The stem keeps letters, digits, ``.``, ``_`` and ``-`` (anything else becomes ``_``), so the id
    is one safe path component; the hash covers the whole spec, decoder included.
    """
    weights = weights_file(spec)
    if weights is None:
        return spec
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", weights.stem) or "model"
    digest = hashlib.sha1(spec.encode()).hexdigest()[:ID_HASH_LENGTH]
    return f"{stem}-{digest}"
