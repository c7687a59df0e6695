"""What the model jobs share: the model of a workflow record, its instance decoder, and the
provenance their stores carry. A job loads its model once and keeps it for all its tiles.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesam.config import Tiling
from tilesam.device import resolve_device

if TYPE_CHECKING:
    from tilesam.embed import Provenance
    from tilesam.tiling import TileGrid


#: the SAM parts a job runs (`load_model(parts=)`); the others stay shapes, without memory
ENCODER = ("image_encoder",)
PROMPTED = ("prompt_encoder", "mask_decoder")
#: per segmentation method: AMG and APG decode prompts; AIS runs only its instance decoder (SAM's shapes)
METHOD_PARTS: dict[str, tuple[str, ...]] = {"amg": PROMPTED, "apg": PROMPTED, "ais": ()}


def keep_freed_memory() -> bool:
    """Let the C allocator keep freed memory for the next tensor (glibc; elsewhere a no-op, False).

    By default glibc maps every block above its threshold (at most 32 MB) freshly from the system and
    unmaps it when freed, so each large tensor pays a page fault per 4 kB page on first touch. Served
    from a heap that is not trimmed, one CPU thread runs the vit_b encoder about 1.1x and the instance
    decoder 1.25x as fast; the price is fragmentation: a segment job's resident memory grew from 3.1
    to 5.6 GB over its windows (APG, vit_b, 1152-pixel windows), so only the jobs whose allocations
    repeat tile by tile use it: embed jobs (`jobs.embed`) and AIS segment jobs (`jobs.segment`).
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    trim_threshold, mmap_threshold, limit = -1, -3, 2**31 - 1  # glibc's M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    return bool(mallopt(mmap_threshold, limit)) and bool(mallopt(trim_threshold, limit))


def load_record(
    record_path: str | Path, spec: str, trust_pickle: bool, device: str = "auto", *, parts: tuple[str, ...]
):
    """The model of a workflow model record (only its ``parts``), and the record, checked against the config first.

    ``spec`` and ``trust_pickle`` are the config's (the plan's resolved spec; a finetuned model: its
    checkpoint): a record is derived data and never decides what is loaded or unpickled, and its
    files must hold the bytes they held when it was made (`tilesam.models.record.check`). A job that
    loads the image encoder checks the record's ``encoder_sha256`` against it (the identity the
    other jobs take from the record).
    """
    from tilesam.models import load_model
    from tilesam.models.record import RecordError, read_checked

    record = read_checked(record_path, spec, trust_pickle)
    sam = load_model(
        record.load,
        device=resolve_device(device),
        trust_pickle=record.trust_pickle,
        sha256=record.weights_checksum,
        parts=parts,
    )
    if "image_encoder" in parts:
        from tilesam.models.load import encoder_sha256

        if (actual := encoder_sha256(sam)) != record.encoder_sha256:
            raise RecordError(
                f"model record {record_path}: encoder_sha256 is {record.encoder_sha256}, but {record.load}'s image "
                f"encoder has {actual}; the record is derived data: delete {record_path} and rerun"
            )
    return sam, record


def load_instance_decoder(record, device, upscale: int = 16):
    """The instance-segmentation decoder of a (checked) model record, and its identity for provenance.

    The state comes with the model (its checkpoint's `decoder_state` or its card's decoder file);
    a model without one is an error naming it. ``upscale``: the SAM model's (`decoder_upscale`).
    """
    from tilesam.models import load_decoder_state
    from tilesam.models.load import state_sha256
    from tilesam.models.unetr import load_decoder

    state = load_decoder_state(record.load, trust_pickle=record.trust_pickle, sha256=record.weights_checksum)
    if state is None:
        raise ValueError(
            f"model {record.id} ({record.load}) has no instance-segmentation decoder, which its method "
            "needs: use amg, or auto (a decoder's methods only where a model has one)"
        )
    decoder = load_decoder(state, source=str(record.load), device=device, upscale=upscale)
    return decoder.eval(), {"sha256": state_sha256(state)}  # content, not path: a moved run still resumes


def provenance(model, record, image: str | Path, tiling: Tiling, block: int, dtype: str) -> tuple[TileGrid, Provenance]:
    """The tile grid of an imported image and the provenance its block stores carry.

    The encoder's identity is the record's (checked by the job that loads the encoder), so a job
    that does not run the encoder need not load it.
    """
    from tilesam.data import io
    from tilesam.embed import Provenance

    info = io.read_info(image)
    grid = tiling.grid(info.shape)
    prov = Provenance(
        encoder_sha256=record.encoder_sha256,
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
def fetch_model(
    name: str,
    *,
    record: str | Path | None = None,
    offline: bool = False,
    sha256: str | None = None,
    trust_pickle: bool = False,
):
    """Download (checksum-verified, with its decoder) into the cache; optionally write the workflow's record.

    Returns the model's files. The record is named after the model's id (`best-3fa2c1`: a table's row ->
    this file) and holds each file's hash, which every job checks (`load_record`).
    """
    from tilesam import models
    from tilesam.models.record import make_record

    files = models.fetch_files(name, offline=offline or None, sha256=sha256)
    if record:
        make_record(name, Path(record).stem, trust_pickle=trust_pickle, offline=offline or None, sha256=sha256).write(
            record
        )
    return files


def record_finetuned(card: str | Path, out: str | Path, trust_pickle: bool = False) -> None:
    """The workflow's record of a finetuned model, after checking its checkpoint against its card."""
    from tilesam.models.record import finetuned_record

    finetuned_record(card, Path(out).stem, trust_pickle=trust_pickle).write(out)
