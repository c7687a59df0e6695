"""What the model jobs share: the model of a workflow record, its instance decoder, and the
provenance their stores carry. A job loads its model once and keeps it for all its tiles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesam.config import Tiling
from tilesam.device import resolve_device

if TYPE_CHECKING:
    from tilesam.embed import Provenance
    from tilesam.tiling import TileGrid


def load_record(record_path: str | Path, device: str = "auto"):
    """The model of a workflow model record (from `fetch_model` or `record_finetuned`), and the record.

    The record says whether the user trusts their own checkpoint file with full unpickling
    (config `trust_pickle`, `tilesam models fetch --trust-pickle`); registry files never need it.
    """
    from tilesam.models import load_model

    record = json.loads(Path(record_path).read_text())
    sam = load_model(record["load"], device=resolve_device(device), trust_pickle=bool(record.get("trust_pickle")))
    return sam, record


def load_instance_decoder(record: dict, device, upscale: int = 16):
    """The instance-segmentation decoder of a workflow model record, and its identity for provenance.

    The state comes with the model (its checkpoint's `decoder_state` or its card's decoder file);
    a model without one is an error naming it. ``upscale``: the SAM model's (`decoder_upscale`).
    """
    from tilesam.models import load_decoder_state
    from tilesam.models.unetr import load_decoder

    state = load_decoder_state(record["load"], trust_pickle=bool(record.get("trust_pickle")))
    if state is None:
        raise ValueError(
            f"model {record['name']} ({record['load']}) has no instance-segmentation decoder, which its method "
            "needs: use amg, or auto (a decoder's methods only where a model has one)"
        )
    decoder = load_decoder(state, source=str(record["load"]), device=device, upscale=upscale)
    return decoder.eval(), {"sha256": state_sha256(state)}  # content, not path: a moved run still resumes


def state_sha256(state: dict) -> str:
    """A digest of a state dict's names, shapes, dtypes and values (the decoder's identity)."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def provenance(model, image: str | Path, tiling: Tiling, block: int, dtype: str) -> tuple[TileGrid, Provenance]:
    """The tile grid of an imported image and the provenance its block stores carry."""
    from tilesam.data import io
    from tilesam.embed import Provenance

    info = io.read_info(image)
    grid = tiling.grid(info.shape)
    encoder = {**model.image_encoder.state_dict(), "pixel_mean": model.pixel_mean, "pixel_std": model.pixel_std}
    prov = Provenance(
        encoder_sha256=state_sha256(encoder),
        img_size=int(model.image_encoder.img_size),
        grid=grid.to_dict(),
        block=block,
        tiles_per_block=tiling.block_size(grid.n_tiles),
        image_signature=info.signature,
        dtype=dtype,
    )
    return grid, prov


def write_json(out: str | Path, obj: Any) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(obj, indent=1))


# --- the workflow's model records -------------------------------------------------------------
def _model_record(
    name: str,
    load: str,
    path: str | Path,
    sha256: str | None,
    architecture: str,
    *,
    checksum: str | None = None,
    decoder: str | Path | None = None,
    trust_pickle: bool = False,
) -> dict:
    """What the model jobs need to load a model and to label their stores with it.

    ``path`` and ``decoder`` are the files the model was (so a table row can name its file),
    ``load`` the model string jobs load, ``checksum`` the ``alg:hex`` its weights are verified with.
    """
    return {
        "name": name,
        "load": load,
        "path": str(path),
        "decoder": str(decoder) if decoder else None,
        "sha256": sha256,
        "checksum": checksum or (f"sha256:{sha256}" if sha256 else None),
        "architecture": architecture,
        "trust_pickle": trust_pickle,
    }


def fetch_model(
    name: str,
    *,
    record: str | Path | None = None,
    offline: bool = False,
    sha256: str | None = None,
    trust_pickle: bool = False,
):
    """Download (checksum-verified, with its decoder) into the cache; optionally write the workflow's record.

    Returns the model's files. ``trust_pickle`` (the user's own files only) goes into the record, so
    every job that loads the model follows the one decision.
    """
    from tilesam import models

    files = models.fetch_files(name, offline=offline or None, sha256=sha256)
    if record:
        info = models.model_info(name, trust_pickle=trust_pickle)
        ref = models.parse(name)
        if ref.card is not None:  # name@version: the record keeps meaning this file when a newer version appears
            load, trust = ref.card.spec, False  # registry files are checked by their hash, never by trust
        else:
            load = str(files.weights.resolve())
            if files.decoder is not None:
                load += models.DECODER_SEPARATOR + str(files.decoder.resolve())
            trust = trust_pickle
        entry = _model_record(
            info["name"],
            load,
            files.weights.resolve(),
            info["sha256"],
            info["architecture"],
            checksum=info["checksum"],
            decoder=files.decoder.resolve() if files.decoder else None,
            trust_pickle=trust,
        )
        # the workflow names the record after the model's id (`best-3fa2c1`): the row of a table -> this file
        write_json(record, {"id": Path(record).stem, **entry})
    return files


def record_finetuned(card: str | Path, out: str | Path) -> None:
    """The workflow's record of a finetuned model, after checking its checkpoint against its card."""
    from tilesam.finetune.card import register_finetuned

    model_card = register_finetuned(card)
    card_file = Path(card).resolve()
    checkpoint = card_file.parent / json.loads(card_file.read_text())["checkpoint"]
    write_json(
        out, _model_record(model_card.name, str(checkpoint), checkpoint, model_card.sha256, model_card.architecture)
    )
