"""The workflow's record of a model (``resources/models/<id>.json``): derived data that every job checks.

``tilesam models fetch --record`` (or ``models record`` for a finetuned model) writes it once; every
model job reads it with :func:`read_checked`. A record never decides anything the config did not:

- its ``load`` (what is loaded) and ``trust_pickle`` (whether the file may be fully unpickled, which
  runs code from it) must be what the config gives for the model, else the job stops;
- the files it names (weights, decoder) must still hold the bytes they held when it was written:
  their xxh128 is in the record and is hashed again by each job (a 375 MB vit_b in about 0.1-0.3 s;
  the load that follows reuses that hash, :func:`tilesam.download.file_hash`);
- what a registry card says (name, architecture, checksums, file locations) must be the card's;
  a ``sha256`` no card gives (a checkpoint file, micro-sam's xxh128-only models) must be the file's,
  as remembered by the cache for its size and mtime and hashed again when they change: the xxh128
  above already proved the content is the record's, so this only catches an edited record.

Not re-derived: a checkpoint file's ``name`` and ``architecture`` (labels; the load reads the
architecture off the weights themselves), and ``encoder_sha256``, the image encoder's identity that
embedding stores carry (`tilesam.models.load.encoder_sha256`): hashed here once, so that a job that
does not run the encoder need not load it; the embed job, which loads it, compares the two
(`tilesam.runtime.load_record`), so no store is ever labelled with an identity that is not its encoder's.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tilesam.download import file_hash, rehash

from .spec import files_of, is_file_spec

__all__ = ["ModelRecord", "RecordError", "check", "expected_load", "finetuned_record", "make_record", "read_checked"]


class RecordError(ValueError):
    """A model record that is unreadable, or disagrees with the config, its card or its files."""


@dataclass(frozen=True)
class ModelRecord:
    """What the model jobs need to load a model and to label their stores with it.

    ``load``: the model string jobs load (``name@version``, or resolved checkpoint path(s) joined by
    ``+``); ``path`` / ``decoder``: the files it was (a table row names its file); ``checksum``: the
    ``alg:hex`` the weights are verified with; ``xxh128``: each file's xxh128 when the record was made;
    ``encoder_sha256``: the image encoder's identity (its weights and input normalisation).
    """

    id: str
    name: str
    load: str
    path: str
    decoder: str | None
    sha256: str | None
    checksum: str | None
    architecture: str
    trust_pickle: bool
    xxh128: dict[str, str]
    encoder_sha256: str

    @property
    def weights_checksum(self) -> str:
        """``xxh128:<hex>`` of the weights file: pass it to ``load_model(..., sha256=)`` so the load re-checks."""
        return f"xxh128:{self.xxh128[self.path]}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, out: str | os.PathLike) -> Path:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=1))
        return out

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelRecord:
        """A record file, every field present and of its type; anything else names the file and the field."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise RecordError(f"model record {path}: cannot be read ({error}); delete it and rerun") from None
        if not isinstance(data, dict):
            raise RecordError(f"model record {path}: not a JSON object; delete it and rerun")
        names = {f.name for f in fields(cls)}
        if missing := names - set(data):
            raise RecordError(
                f"model record {path}: no {', '.join(sorted(missing))} (made by an older tilesam?); "
                "delete it and rerun, the workflow makes it again"
            )
        if unknown := set(data) - names:
            raise RecordError(f"model record {path}: unknown fields {', '.join(sorted(unknown))}")
        _check_types(path, data)
        return cls(**data)


def _check_types(path: Path, data: dict[str, Any]) -> None:
    wrong = [
        key
        for key, ok in (
            ("trust_pickle", isinstance(data["trust_pickle"], bool)),
            ("xxh128", isinstance(data["xxh128"], dict) and all(isinstance(v, str) for v in data["xxh128"].values())),
            *((key, isinstance(data[key], str)) for key in ("id", "name", "load", "path", "architecture")),
            ("encoder_sha256", isinstance(data["encoder_sha256"], str) and _is_sha256(data["encoder_sha256"])),
            *((key, data[key] is None or isinstance(data[key], str)) for key in ("decoder", "sha256", "checksum")),
        )
        if not ok
    ]
    if wrong:
        raise RecordError(f"model record {path}: wrong type of {', '.join(wrong)}; delete it and rerun")
    expected = {data["path"], *([data["decoder"]] if data["decoder"] else [])}
    if set(data["xxh128"]) != expected:
        raise RecordError(f"model record {path}: xxh128 must name exactly its files {sorted(expected)}")


def _is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _encoder_identity(load: str, trust_pickle: bool, offline: bool | None = None, sha256: str | None = None) -> str:
    """The image encoder's identity, loaded the way the jobs load ``load`` (its encoder only, on the CPU)."""
    from .load import encoder_sha256, load_model

    sam = load_model(load, "cpu", offline=offline, sha256=sha256, trust_pickle=trust_pickle, parts=["image_encoder"])
    return encoder_sha256(sam)


def expected_load(spec: str) -> str:
    """What a job loads for a resolved spec: a card's ``name@version``, or the files' resolved paths."""
    if not is_file_spec(spec):
        return _card(spec).spec
    from .fetch import DECODER_SEPARATOR

    return DECODER_SEPARATOR.join(str(path.resolve()) for path in files_of(spec))


def check(record: ModelRecord, spec: str, trust_pickle: bool, *, where: str | os.PathLike = "") -> None:
    """Refuse a record that disagrees with the config (``spec``, ``trust_pickle``), its card or its files.

    ``spec``: the plan's resolved spec of the model (a finetuned model: its checkpoint file);
    ``trust_pickle``: the config's. Registry files are never trusted, whatever the config says.
    ``where``: the record's file, for the messages.
    """
    where = str(where) or f"of {record.id}"
    redo = f"the record is derived data: delete {where} and rerun (it is made again from the config)"
    trust = bool(trust_pickle) and is_file_spec(spec)
    for field, got, want in (("load", record.load, expected_load(spec)), ("trust_pickle", record.trust_pickle, trust)):
        if got != want:
            raise RecordError(
                f"model record {where}: {field} is {got!r}, but the config gives {want!r} ({spec}); {redo}"
            )
    if not is_file_spec(spec):
        _check_card(record, spec, where, redo)
    for path, recorded in record.xxh128.items():
        try:
            actual = file_hash(path, "xxh128", remember=False)
        except OSError as error:
            raise RecordError(f"model record {where}: its file {path} cannot be read ({error}); {redo}") from None
        if actual != recorded:
            raise RecordError(
                f"the checkpoint {path} changed since its record {where} was made (xxh128 {actual}, recorded "
                f"{recorded}): rerun `tilesam models fetch {spec} --record {where}` (in the workflow: delete "
                f"{where} and rerun; results made with the old file are not reused for the new one)"
            )
    if is_file_spec(spec) or _card(spec).sha256 is None:  # a card's sha256 was compared above
        actual = file_hash(record.path, "sha256")  # the content is the record's (above): only an edit differs
        if record.sha256 != actual:
            raise RecordError(
                f"model record {where}: sha256 is {record.sha256}, but {record.path} has {actual}; {redo}"
            )


def _card(spec: str):
    from .registry import lookup

    return lookup(spec)


def _check_card(record: ModelRecord, spec: str, where: str, redo: str) -> None:
    from .fetch import card_locations

    card = _card(spec)
    weights, decoder = card_locations(card)
    want = {
        "name": card.name,
        "architecture": card.architecture,
        "checksum": card.known_hash,
        "path": str(weights.resolve()),
        "decoder": str(decoder.resolve()) if decoder is not None else None,
        "sha256": card.sha256,
        "xxh128 of the weights": card.xxh128,
        "xxh128 of the decoder": card.decoder.xxh128 if card.decoder is not None else None,
    }
    got = {
        **record.to_dict(),
        "xxh128 of the weights": record.xxh128.get(record.path),
        "xxh128 of the decoder": record.xxh128.get(record.decoder or ""),
    }
    for field, value in want.items():
        if got[field] != value and (value is not None or field == "decoder"):
            raise RecordError(
                f"model record {where}: {field} is {got[field]!r}, but the registry's {card.spec} has {value!r}; {redo}"
            )


def read_checked(path: str | os.PathLike, spec: str, trust_pickle: bool) -> ModelRecord:
    """The record at ``path``, checked against the config (see :func:`check`): what a model job calls first."""
    record = ModelRecord.read(path)
    check(record, spec, trust_pickle, where=path)
    return record


def _hashes(*paths: Path | None) -> dict[str, str]:
    return {str(p): file_hash(p, "xxh128", remember=False) for p in paths if p is not None}


def make_record(
    spec: str,
    model_id: str,
    *,
    trust_pickle: bool = False,
    offline: bool | None = None,
    sha256: str | None = None,
) -> ModelRecord:
    """Fetch a model (verified, with its decoder) and describe it: what ``tilesam models fetch --record`` writes.

    ``trust_pickle`` (the config's) is recorded for checkpoint files only; registry files are checked by
    their hash. Checksums are hashed now, never taken from the cache's size/mtime memory.
    """
    from . import fetch_files, model_info, parse

    files = fetch_files(spec, offline=offline, sha256=sha256)
    info = model_info(spec, trust_pickle=trust_pickle)
    weights = files.weights.resolve()
    decoder = files.decoder.resolve() if files.decoder is not None else None
    ref = parse(spec)
    card_sha = ref.card.sha256 if ref.card is not None else None
    sha = card_sha or rehash(weights, "sha256")
    load = expected_load(spec)
    return ModelRecord(
        id=model_id,
        name=info["name"],
        load=load,
        path=str(weights),
        decoder=str(decoder) if decoder is not None else None,
        sha256=sha,
        checksum=(ref.card.known_hash if ref.card is not None else None) or f"sha256:{sha}",
        architecture=info["architecture"],
        trust_pickle=bool(trust_pickle) and ref.card is None,
        xxh128=_hashes(weights, decoder),
        encoder_sha256=_encoder_identity(load, bool(trust_pickle) and ref.card is None, offline, sha256),
    )


def finetuned_record(card_json: str | os.PathLike, model_id: str, *, trust_pickle: bool = False) -> ModelRecord:
    """The record of a finetuned model, after checking its checkpoint against its card (the trainer's)."""
    from tilesam.finetune.card import register_finetuned

    model_card = register_finetuned(card_json)
    card_file = Path(card_json).resolve()
    checkpoint = (card_file.parent / json.loads(card_file.read_text())["checkpoint"]).resolve()
    return ModelRecord(
        id=model_id,
        name=model_card.name,
        load=str(checkpoint),
        path=str(checkpoint),
        decoder=None,
        sha256=model_card.sha256,
        checksum=f"sha256:{model_card.sha256}",
        architecture=model_card.architecture,
        trust_pickle=bool(trust_pickle),
        xxh128=_hashes(checkpoint),
        encoder_sha256=_encoder_identity(str(checkpoint), bool(trust_pickle)),
    )
