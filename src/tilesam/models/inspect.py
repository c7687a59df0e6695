"""What planning may know about a model without loading it: its card, and whether it has a decoder.

Planning runs at every ``snakemake`` start, on every model of the config, so it reads at most a
checkpoint's zip member list and the first :data:`PICKLE_LIMIT` bytes of its pickle, never the
whole file: a crafted 1.5 MB ``.pth`` whose ``data.pkl`` inflates to 1.5 GB costs milliseconds here
(and is refused), not gigabytes. No torch, nothing unpickled.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

from .card import ModelCard
from .spec import is_file_spec

__all__ = ["PICKLE_LIMIT", "CheckpointInspectionError", "card_of", "has_decoder"]

#: The most pickle bytes read to find a key. A SAM training checkpoint's pickle holds only names and
#: tensor references (vit_h's state dict: about 0.1 MB); its tensors are separate zip members.
PICKLE_LIMIT = 16 * 2**20
_CHUNK = 2**20
_DECODER_KEY = b"decoder_state"


class CheckpointInspectionError(ValueError):
    """A checkpoint file that cannot be inspected within the bounds planning allows."""


def card_of(spec: str) -> ModelCard | None:
    """The registry card of a resolved spec (see :func:`~tilesam.models.spec.resolve_spec`), None for files."""
    if is_file_spec(spec):
        return None
    from .registry import resolve

    return resolve(spec)


def has_decoder(spec: str) -> bool:
    """Whether a resolved spec comes with an instance-segmentation decoder, read in bounded time and memory.

    A card says so (its decoder file); a ``checkpoint+decoder`` pair of files has one; a checkpoint
    file has one when its pickle holds the key ``decoder_state`` (a training checkpoint: ``torch.save``
    writes dict keys as plain strings, in ``<name>/data.pkl`` of the zip, or first in a legacy file).
    A zip whose pickle is larger than :data:`PICKLE_LIMIT` without that key is an error, since the
    answer is unknown.
    """
    if not is_file_spec(spec):
        card = card_of(spec)
        return card is not None and card.decoder is not None
    from .fetch import DECODER_SEPARATOR

    weights, sep, decoder = spec.rpartition(DECODER_SEPARATOR)
    if sep and not Path(spec).is_file() and Path(weights).is_file() and Path(decoder).is_file():
        return True
    return _pickle_has_key(Path(spec), _DECODER_KEY)


def _pickle_has_key(path: Path, key: bytes) -> bool:
    try:
        if not zipfile.is_zipfile(path):  # a legacy torch file: its pickle comes first
            with path.open("rb") as f:
                return _contains(f, key, PICKLE_LIMIT)[0]
        with zipfile.ZipFile(path) as archive:  # reads the member list (central directory) only
            pickles = [info for info in archive.infolist() if info.filename.endswith("data.pkl")]
            for info in pickles:
                with archive.open(info) as member:
                    found, complete = _contains(member, key, PICKLE_LIMIT)
                if found:
                    return True
                if not complete:
                    raise CheckpointInspectionError(
                        f"checkpoint {path}: its pickle {info.filename} is {info.file_size} bytes "
                        f"({info.compress_size} in the file), more than the {PICKLE_LIMIT} tilesam reads to plan; "
                        "a SAM checkpoint's pickle holds only names (its tensors are separate members): "
                        "is this file a PyTorch checkpoint of a SAM model?"
                    )
            return False
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:
        if isinstance(error, CheckpointInspectionError):
            raise
        raise CheckpointInspectionError(
            f"checkpoint {path}: cannot be read ({type(error).__name__}: {error})"
        ) from None


def _contains(stream: BinaryIO, key: bytes, limit: int) -> tuple[bool, bool]:
    """(whether ``key`` is in the first ``limit`` bytes of ``stream``, whether the stream ended within them)."""
    tail = b""
    left = limit
    while left > 0:
        chunk = stream.read(min(_CHUNK, left))
        if not chunk:
            return False, True
        if key in tail + chunk:
            return True, True
        tail = chunk[-(len(key) - 1) :]
        left -= len(chunk)
    return False, not stream.read(1)
