"""``finetune()``: a run from base model and data to checkpoint, card and registered name (resuming where one stopped).

The parts: :mod:`.loop` (optimizer, schedule, epochs), :mod:`.checkpoint` (state file, fingerprint),
:mod:`.instance_decoder` (the decoder a run starts from), :mod:`.records` (what a run records).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tilesam.config import FinetuneConfig
from tilesam.device import resolve_device
from tilesam.finetune.cache import EmbeddingCache
from tilesam.finetune.card import (
    base_identity,
    card_path,
    finished_card,
    register_finetuned,
    state_path,
    write_card,
    write_loss_log,
)
from tilesam.finetune.checkpoint import fingerprint as run_fingerprint
from tilesam.finetune.checkpoint import save_atomic
from tilesam.finetune.data import ImageSet, Paths, Sample, train_val_samples
from tilesam.finetune.instance_decoder import decoder_record, start_decoder
from tilesam.finetune.loop import Trainer, lr_schedule
from tilesam.finetune.records import EpochRecord, FinetuneResult
from tilesam.models import load_model

__all__ = ["EpochRecord", "FinetuneResult", "finetune", "lr_schedule", "start_decoder"]
_save_atomic = save_atomic  # its name before the split (tests import it from here)

log = logging.getLogger(__name__)


def _default_dataset_name(samples: Sequence[Sample]) -> str:
    """The data's folder name (``.../dsb2018/images/*.tif`` -> dsb2018)."""
    parent = Path(os.path.commonpath([str(s.image.resolve().parent) for s in samples]))
    if parent.name.lower() in {"images", "image", "imgs", "raw", "train"} and parent.parent.name:
        parent = parent.parent
    return parent.name or "data"


def _result_from_card(out: Path, card: dict[str, Any], resumed_from: int) -> FinetuneResult:
    epochs = [EpochRecord(**{k: v for k, v in r.items() if k != "score"}) for r in card["epochs"]]
    return FinetuneResult(card["name"], out, card_path(out), card["best_epoch"], epochs, resumed_from)


def finetune(
    base: str | os.PathLike,
    images: Paths,
    labels: Paths,
    out: str | os.PathLike,
    *,
    val_images: Paths | None = None,
    val_labels: Paths | None = None,
    val_fraction: float = 0.0,
    config: FinetuneConfig | None = None,
    name: str | None = None,
    dataset: str | None = None,
    device: str | torch.device | None = None,
    embedding_cache: str | os.PathLike | None = None,
    resume: bool = True,
    keep_state: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
    trust_pickle: bool = False,
) -> FinetuneResult:
    """Finetune ``base`` (registry name or checkpoint path) on images with instance labels.

    images/labels: globs or lists of files, paired by file name. Validation data: val_images/
    val_labels, or else the last ``val_fraction`` of the training images by name (none by default).
    Writes ``out`` (the best epoch's weights, or the last without validation data: a plain SAM state
    dict, or micro-sam's ``{"model_state", "decoder_state"}`` when an instance decoder was trained or
    came with the base),
    ``<out stem>.json`` (the model card), ``.losses.csv`` (loss per step) and ``.losses.png``, and
    registers the model in this process under ``name`` (default ``<base>-ft-<dataset>``).
    An interrupted run resumes from ``<out>.state.pt`` (``resume=False`` starts afresh); a rerun of
    a finished run with the same settings returns its result without training.
    ``on_epoch_end`` is called after each epoch's state is saved (for monitoring, or to stop a run).
    ``trust_pickle``: a base checkpoint file of the user's own that holds Python objects besides
    tensors may be fully unpickled, which runs code from it (config ``trust_pickle``); without it
    such a file is refused with a message naming it. Registry models never need it.
    Settings left to the device (``auto``) are resolved for ``device`` first: the card records those.
    """
    device = resolve_device(device)
    config = (config or FinetuneConfig()).for_device(device)
    out = Path(out)
    train, val = train_val_samples(images, labels, val_images, val_labels, val_fraction)
    base_id = base_identity(base, trust_pickle=trust_pickle)
    fingerprint = run_fingerprint(base_id.sha256, config, train, val)
    dataset = dataset or _default_dataset_name(train)
    name = name or f"{base_id.name}-ft-{dataset}"
    if resume and (card := finished_card(out, fingerprint, name)) is not None:
        log.info("%s is already finetuned with these settings; nothing to do", out)
        register_finetuned(card_path(out))
        return _result_from_card(out, card, resumed_from=len(card["epochs"]) - 1)

    torch.manual_seed(config.seed)
    model = load_model(base, device=device, trust_pickle=trust_pickle)
    decoder, decoder_origin = start_decoder(base, config, model, trust_pickle=trust_pickle)
    cache = EmbeddingCache(model, base_id.sha256, embedding_cache) if config.encoder_frozen else None
    trainer = Trainer(model, config, ImageSet(train), ImageSet(val) if val else None, cache, progress, decoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file = state_path(out)
    if resume and state_file.is_file():
        trainer.load(state_file, fingerprint)
        log.info("resuming %s after epoch %d (%d iterations)", out, trainer.state.epoch, trainer.state.iterations)
    else:
        trainer.start()
    resumed_from = trainer.state.epoch
    trainer.run(state_file, fingerprint, f"finetune {name}", on_epoch_end)

    save_atomic(trainer.final_weights(), out)
    card = write_card(
        card_path(out),
        name=name,
        base=base_id,
        model=model,
        checkpoint=out,
        dataset=dataset,
        config=config,
        train=train,
        val=val,
        state=trainer.state,
        fingerprint=fingerprint,
        decoder=decoder_record(decoder, decoder_origin, config),
    )
    write_loss_log(out, trainer.state)
    if not keep_state:
        state_file.unlink(missing_ok=True)
    register_finetuned(card_path(out))
    return _result_from_card(out, card, resumed_from)
