"""Training: the optimizer and learning-rate schedule, epochs of steps, the resumable state file, and ``finetune()``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import TRAINABLE_PARTS, FinetuneConfig
from tilesam.device import resolve_device
from tilesam.finetune.cache import EmbeddingCache, model_device
from tilesam.finetune.card import (
    base_identity,
    card_path,
    finished_card,
    register_finetuned,
    state_path,
    write_card,
    write_loss_log,
)
from tilesam.finetune.data import FinetuneError, ImageSet, Paths, Sample, train_val_samples
from tilesam.finetune.loss import view_loss
from tilesam.finetune.validate import EVAL_MODES, validate_prompts
from tilesam.finetune.views import View, ViewPool
from tilesam.models import load_decoder_state, load_model
from tilesam.models.unetr import InstanceDecoder, decoder_upscale, load_decoder

log = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    """One epoch's losses (training means) and validation scores; epoch 0 is the base model."""

    epoch: int
    iterations: int  # optimizer steps done after this epoch
    train_loss: float | None = None
    mask_loss: float | None = None
    iou_loss: float | None = None
    decoder_loss: float | None = None  # the instance decoder's loss (None: not trained)
    lr: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def score(self) -> float | None:
        """Model selection score: mean of the box and point IoU on the validation set."""
        if not self.val:
            return None
        return float(np.mean([self.val[f"{m}_iou"] for m in EVAL_MODES]))


@dataclass(frozen=True)
class FinetuneResult:
    """What a finetuning run produced."""

    name: str
    checkpoint: Path
    card: Path
    best_epoch: int
    epochs: list[EpochRecord]
    resumed_from: int  # epochs already done when this call started (0: a fresh run)


def lr_schedule(config: FinetuneConfig) -> Callable[[int], float]:
    """LR factor per step: linear warmup, then cosine decay to min_lr_factor."""
    warmup = max(1, round(config.warmup_fraction * config.iterations))
    decay = max(1, config.iterations - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: Sam, config: FinetuneConfig, decoder: InstanceDecoder | None) -> list[dict[str, Any]]:
    """Freeze all but the trained parts; one optimizer group per trained part, with its learning rate.

    ``decoder`` is the instance decoder (part ``decoder``), which is not a part of the SAM model.
    """
    groups = []
    factors = {"prompt_encoder": config.prompt_encoder_lr_factor, "decoder": config.decoder_lr_factor}
    for part in TRAINABLE_PARTS:
        trained = part in config.train_parts
        module = decoder if part == "decoder" else getattr(model, part)
        if module is None:
            if trained:
                raise FinetuneError("train_parts has 'decoder' but no instance decoder was given")
            continue
        params = list(module.parameters())
        for p in params:
            p.requires_grad_(trained)
        if trained:
            groups.append({"params": params, "lr": config.lr * factors.get(part, 1.0), "name": part})
    return groups


def start_decoder(
    base: str | os.PathLike, config: FinetuneConfig, model: Sam, *, trust_pickle: bool = False
) -> tuple[InstanceDecoder | None, str | None]:
    """The instance decoder a run starts from, and its origin: the base model's (``base``), or a fresh one.

    A fresh one (``fresh``; only when ``decoder`` is trained) is micro-sam's default for a new UNETR,
    the bilinear variant, initialised from the run's seed without touching the global random state,
    so the rest of the run draws the same numbers with and without it. A base without a decoder
    that does not train one gives (None, None). ``model`` is the loaded base: its device, and its
    input over embedding side, the decoder's ``upscale`` (16 for micro-sam's models, 4 for LiteMedSAM).
    ``trust_pickle`` as for `finetune`.
    """
    device, upscale = model_device(model), decoder_upscale(model)
    state = load_decoder_state(base, trust_pickle=trust_pickle)
    if state is not None:
        return load_decoder(state, source=f"the decoder of {base}", device=device, upscale=upscale), "base"
    if not config.trains_decoder:
        return None, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        decoder = InstanceDecoder(conv_transpose=False, upscale=upscale)
    return decoder.to(device), "fresh"


def _decoder_record(
    decoder: InstanceDecoder | None, origin: str | None, config: FinetuneConfig
) -> dict[str, Any] | None:
    """What the model card says about the checkpoint's instance decoder (None: it has none)."""
    if decoder is None:
        return None
    variant = "transposed-conv" if decoder.conv_transpose else "bilinear"
    return {"variant": variant, "origin": origin, "trained": config.trains_decoder}


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (the best epoch's survive later steps)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _fingerprint(base_sha: str, config: FinetuneConfig, train: Sequence[Sample], val: Sequence[Sample]) -> str:
    """Hash of everything that decides the weights: a state file of other settings is not resumed."""
    payload = {
        "base": base_sha,
        "config": asdict(config),
        "train": [[str(s.image.resolve()), str(s.labels.resolve())] for s in train],
        "val": [[str(s.image.resolve()), str(s.labels.resolve())] for s in val],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _default_dataset_name(samples: Sequence[Sample]) -> str:
    """The data's folder name (``.../dsb2018/images/*.tif`` -> dsb2018)."""
    parent = Path(os.path.commonpath([str(s.image.resolve().parent) for s in samples]))
    if parent.name.lower() in {"images", "image", "imgs", "raw", "train"} and parent.parent.name:
        parent = parent.parent
    return parent.name or "data"


def _save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file, so an interrupted save never leaves a torn file.

    The temporary file has the final file's name (in a folder of its own): torch.save names the
    archive inside after the file, so a name with the process id in it made every run's
    checkpoint bytes, and its sha256, differ even when the weights were bitwise the same.
    """
    folder = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    folder.mkdir(exist_ok=True)
    tmp = folder / path.name
    try:
        torch.save(obj, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
        folder.rmdir()


@dataclass
class TrainingState:
    """What a run carries from epoch to epoch (and through its state file)."""

    epoch: int = 0
    iterations: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    best_decoder: dict[str, torch.Tensor] | None = None  # the instance decoder at best_epoch (None: none)


class _Trainer:
    """One finetuning run: model, optimizer and schedule, data, epochs, state file."""

    def __init__(
        self,
        model: Sam,
        config: FinetuneConfig,
        train: ImageSet,
        val: ImageSet | None,
        cache: EmbeddingCache | None,
        progress: bool,
        decoder: InstanceDecoder | None = None,
    ) -> None:
        self.model, self.config, self.train, self.val, self.cache = model, config, train, val, cache
        self.decoder = decoder  # trained when config.trains_decoder, else carried through to the output
        self.device = model_device(model)
        groups = _param_groups(model, config, decoder)
        # clipped separately: a fresh decoder's large gradients must not shrink the SAM parts' steps
        self.clip_sets = [
            params
            for params in (
                [p for g in groups if g["name"] != "decoder" for p in g["params"]],
                [p for g in groups if g["name"] == "decoder" for p in g["params"]],
            )
            if params
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_factor = lr_schedule(config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        fp16 = self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.pool = ViewPool(train, config, model.image_encoder.img_size)
        self.order = self.pool.trainable()
        self.per_epoch = config.iterations_per_epoch or max(1, math.ceil(len(self.order) / config.images_per_batch))
        self.n_epochs = math.ceil(config.iterations / self.per_epoch)
        self.progress = progress
        self.state = TrainingState()

    # state file
    def save(self, path: Path, fingerprint: str) -> None:
        s = self.state
        _save_atomic(
            {
                "fingerprint": fingerprint,
                "epoch": s.epoch,
                "iterations": s.iterations,
                "model": _cpu_state(self.model),
                "decoder": None if self.decoder is None else _cpu_state(self.decoder),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": [asdict(r) for r in s.history],
                "steps": s.steps,
                "best_epoch": s.best_epoch,
                "best_model": s.best_model,
                "best_decoder": s.best_decoder,
            },
            path,
        )

    def load(self, path: Path, fingerprint: str) -> None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise FinetuneError(
                f"{path} holds a finetuning run with other settings, base model or data; delete it to start "
                "afresh (or pass resume=False / --restart)"
            )
        self.model.load_state_dict(saved["model"], strict=True)
        if self.decoder is not None:
            self.decoder.load_state_dict(saved["decoder"], strict=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = TrainingState(
            epoch=saved["epoch"],
            iterations=saved["iterations"],
            history=[EpochRecord(**r) for r in saved["history"]],
            steps=list(saved["steps"]),
            best_epoch=saved["best_epoch"],
            best_model=saved["best_model"],
            best_decoder=saved["best_decoder"],
        )

    # epochs
    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        cache = self.cache if self.config.encoder_frozen else None
        result = validate_prompts(
            self.model, self.val, cache, EVAL_MODES, self.config.val_max_objects, self.config.seed
        )
        return result.summary()

    def start(self) -> None:
        """Epoch 0: the base model's validation scores (the bar finetuning has to beat)."""
        started = time.perf_counter()
        record = EpochRecord(epoch=0, iterations=0, val=self.validate())
        record.seconds = time.perf_counter() - started
        self.state = TrainingState(
            history=[record],
            best_epoch=0,
            best_model=_cpu_state(self.model),
            best_decoder=None if self.decoder is None else _cpu_state(self.decoder),
        )

    def _backward(self, n_views: int) -> Callable[[torch.Tensor], None]:
        """Backpropagates a part of one view's loss, scaled for the mean over the step's views."""
        return lambda loss: self.scaler.scale(loss / n_views).backward()

    def _decoder_update(self, views: list[View], rng: np.random.Generator) -> list[float]:
        """One update of the instance decoder alone (``decoder_steps``): its losses on the views."""
        self.optimizer.zero_grad(set_to_none=True)  # the SAM parts get no gradient, so AdamW leaves them
        losses = []
        for view in views:
            parts = view_loss(
                self.model,
                self.train,
                view,
                self.cache,
                rng,
                self.config,
                decoder=self.decoder,
                backward=self._backward(len(views)),
                prompted=False,
            )
            if parts is not None:
                losses.append(parts.decoder)
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.clip_sets[-1], self.config.grad_clip)  # the decoder's set
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return losses

    def _step(
        self, views: list[View], rng: np.random.Generator, decoder_views: Sequence[list[View]] = ()
    ) -> dict[str, float] | None:
        """One optimizer step on ``views``, then one decoder-only update per entry of ``decoder_views``."""
        decoder = self.decoder if self.config.trains_decoder else None
        if decoder is not None:
            decoder.train()  # BatchNorm of the skip path: batch statistics, running ones updated (micro-sam)
        backward = self._backward(len(views))  # the loss is the mean over the views (the pool's all have objects)
        self.optimizer.zero_grad(set_to_none=True)
        parts = [
            view_loss(self.model, self.train, v, self.cache, rng, self.config, decoder=decoder, backward=backward)
            for v in views
        ]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        loss = torch.stack([p.total for p in parts]).mean()
        self.scaler.unscale_(self.optimizer)
        for params in self.clip_sets:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        decoder_losses = [p.decoder for p in parts if p.decoder is not None]
        for extra in decoder_views:  # at this step's learning rate
            decoder_losses += self._decoder_update(extra, rng)
        lr = self.config.lr * self.lr_factor(self.scheduler.last_epoch)  # the base rate of this step
        self.scheduler.step()
        if decoder is not None:
            decoder.eval()
        return {
            "loss": float(loss.detach()),
            "mask_loss": float(np.mean([p.mask for p in parts])) if self.config.trains_sam else None,
            "iou_loss": float(np.mean([p.iou for p in parts])) if self.config.trains_sam else None,
            "decoder_loss": float(np.mean(decoder_losses)) if decoder is not None else None,
            "lr": lr,
        }

    def run_epoch(self, bar: tqdm) -> EpochRecord:
        started = time.perf_counter()
        epoch = self.state.epoch + 1
        rng = np.random.default_rng([self.config.seed, epoch])
        n_steps = min(self.per_epoch, self.config.iterations - self.state.iterations)
        queue: list[int] = []
        rows = []

        def batch() -> list[View]:
            views = []
            for _ in range(self.config.images_per_batch):
                if not queue:
                    queue.extend(self.order[i] for i in rng.permutation(len(self.order)))
                views.append(self.pool.draw(queue.pop(), rng))
            return views

        for _ in range(n_steps):
            views = batch()
            row = self._step(views, rng, [batch() for _ in range(self.config.decoder_steps - 1)])
            self.state.iterations += 1
            bar.update(1)
            if row is not None:
                row.update(iteration=self.state.iterations, epoch=epoch)
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
        self.state.steps.extend(rows)
        record = EpochRecord(epoch=epoch, iterations=self.state.iterations, val=self.validate())
        if rows:
            record.train_loss = float(np.mean([r["loss"] for r in rows]))
            if self.config.trains_sam:  # else only the instance decoder's loss was computed
                record.mask_loss = float(np.mean([r["mask_loss"] for r in rows]))
                record.iou_loss = float(np.mean([r["iou_loss"] for r in rows]))
            if self.config.trains_decoder:
                record.decoder_loss = float(np.mean([r["decoder_loss"] for r in rows]))
            record.lr = rows[-1]["lr"]
        record.seconds = time.perf_counter() - started
        self._keep_best(record)
        self.state.epoch = epoch
        self.state.history.append(record)
        return record

    def _keep_best(self, record: EpochRecord) -> None:
        best = self.state.history[self.state.best_epoch].score if self.state.history else None
        if record.score is None or best is None or record.score > best:
            self.state.best_epoch = record.epoch
            self.state.best_model = _cpu_state(self.model)
            self.state.best_decoder = None if self.decoder is None else _cpu_state(self.decoder)

    def run(
        self, state_file: Path, fingerprint: str, desc: str, on_epoch_end: Callable[[EpochRecord], None] | None
    ) -> None:
        """The remaining epochs, the state saved after each (then ``on_epoch_end`` sees the record)."""
        with tqdm(
            total=self.config.iterations, initial=self.state.iterations, desc=desc, disable=not self.progress
        ) as bar:
            while self.state.epoch < self.n_epochs:
                record = self.run_epoch(bar)
                self.save(state_file, fingerprint)
                log.info("epoch %d: loss %s, validation %s", record.epoch, record.train_loss, record.val)
                if on_epoch_end is not None:
                    on_epoch_end(record)

    def final_weights(self) -> dict[str, Any]:
        """The best epoch's plain SAM state, or micro-sam's ``{"model_state", "decoder_state"}`` with a decoder."""
        assert self.state.best_model is not None
        if self.state.best_decoder is None:
            return self.state.best_model
        return {"model_state": self.state.best_model, "decoder_state": self.state.best_decoder}


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
    """
    config = config or FinetuneConfig()
    out = Path(out)
    train, val = train_val_samples(images, labels, val_images, val_labels, val_fraction)
    base_id = base_identity(base, trust_pickle=trust_pickle)
    fingerprint = _fingerprint(base_id.sha256, config, train, val)
    dataset = dataset or _default_dataset_name(train)
    name = name or f"{base_id.name}-ft-{dataset}"
    if resume and (card := finished_card(out, fingerprint, name)) is not None:
        log.info("%s is already finetuned with these settings; nothing to do", out)
        register_finetuned(card_path(out))
        return _result_from_card(out, card, resumed_from=len(card["epochs"]) - 1)

    torch.manual_seed(config.seed)
    model = load_model(base, device=resolve_device(device), trust_pickle=trust_pickle)
    decoder, decoder_origin = start_decoder(base, config, model, trust_pickle=trust_pickle)
    cache = EmbeddingCache(model, base_id.sha256, embedding_cache) if config.encoder_frozen else None
    trainer = _Trainer(model, config, ImageSet(train), ImageSet(val) if val else None, cache, progress, decoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file = state_path(out)
    if resume and state_file.is_file():
        trainer.load(state_file, fingerprint)
        log.info("resuming %s after epoch %d (%d iterations)", out, trainer.state.epoch, trainer.state.iterations)
    else:
        trainer.start()
    resumed_from = trainer.state.epoch
    trainer.run(state_file, fingerprint, f"finetune {name}", on_epoch_end)

    _save_atomic(trainer.final_weights(), out)
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
        decoder=_decoder_record(decoder, decoder_origin, config),
    )
    write_loss_log(out, trainer.state)
    if not keep_state:
        state_file.unlink(missing_ok=True)
    register_finetuned(card_path(out))
    return _result_from_card(out, card, resumed_from)
