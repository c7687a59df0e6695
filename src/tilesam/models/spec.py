"""How the workflow names models: a config entry -> a resolved spec -> an id for file paths.

Ids must never collide: two checkpoints named ``best.pt`` in different runs, or a file
``/x/lite_medsam.pth`` beside the registry's ``lite_medsam``, are different models, and a
checkpoint overwritten at the same path is a new model. A registry name is its own id; a file's
id is its stem plus a short hash of its resolved path and its content's fingerprint
(``best-3fa2c1``, see :func:`content_fingerprint`): readable, and the same file always gets the
same id, so two config entries for one file are one model.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = [
    "FINGERPRINT_BYTES",
    "ID_HASH_LENGTH",
    "content_fingerprint",
    "files_of",
    "is_file_spec",
    "model_id",
    "resolve_spec",
    "weights_file",
]

#: Hex digits of the path hash in a file's id: 16 million values, for the handful of files of a run.
ID_HASH_LENGTH = 6
#: Bytes read from each end of a checkpoint for its fingerprint.
FINGERPRINT_BYTES = 2**20


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


def files_of(spec: str) -> list[Path]:
    """The files of a resolved spec: its checkpoint, then its decoder file if it names one; none for a registry name."""
    from tilesam.models.fetch import DECODER_SEPARATOR

    weights = weights_file(spec)
    if weights is None:
        return []
    if weights != Path(spec):
        return [weights, Path(spec.rpartition(DECODER_SEPARATOR)[2])]
    return [weights]


def content_fingerprint(path: str | Path) -> str:
    """A digest of a file's size and its first and last :data:`FINGERPRINT_BYTES`: what its model id covers.

    Planning computes ids at every start, so hashing a 2.5 GB vit_h in full (seconds) is out, and a
    cache keyed by size and mtime would trust a file restored with its old mtime. This reads 2 MB
    (milliseconds) and never depends on the mtime (a ``touch`` or a copy keeps the id). It sees every
    change of size, of the head, and, for the zip files ``torch.save`` writes, of any tensor: the
    zip's member list at the end holds each member's CRC-32. What it can miss, a same-size change in
    the middle of a legacy (non-zip) file, is caught where it matters: the workflow's model record
    holds the full xxh128 of the file, which every job checks before loading
    (:func:`tilesam.models.record.check`), and the fetch rule takes the file as an input, so a
    changed mtime remakes the record.
    """
    path = Path(path)
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(str(size).encode() + b"\0")
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read(FINGERPRINT_BYTES))
    return digest.hexdigest()


def model_id(spec: str) -> str:
    """A unique name usable in file paths: the registry name, or ``<stem>-<hash of path and content>``.

    The stem keeps letters, digits, ``.``, ``_`` and ``-`` (anything else becomes ``_``), so the id
    is one safe path component; the hash covers the whole spec, decoder included, and each of its
    files' :func:`content_fingerprint`: a file overwritten in place gets a new id.
    """
    files = files_of(spec)
    if not files:
        return spec
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", files[0].stem) or "model"
    digest = hashlib.sha1(spec.encode())
    for path in files:
        try:
            digest.update(b"\0" + content_fingerprint(path).encode())
        except OSError as error:
            raise FileNotFoundError(f"model {spec!r}: cannot read {path} ({error.strerror or error})") from None
    return f"{stem}-{digest.hexdigest()[:ID_HASH_LENGTH]}"
