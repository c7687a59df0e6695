"""The training loop: optimizer and learning-rate schedule, epochs of steps, decoder-only updates, best epoch."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam
from tqdm import tqdm

from tilesam.config import TRAINABLE_PARTS, FinetuneConfig
from tilesam.finetune.cache import EmbeddingCache, model_device
from tilesam.finetune.checkpoint import cpu_state, load_state, save_state
from tilesam.finetune.data import FinetuneError, ImageSet
from tilesam.finetune.loss import view_loss
from tilesam.finetune.records import EpochRecord, TrainingState
from tilesam.finetune.validate import EVAL_MODES, validate_prompts
from tilesam.finetune.views import View, ViewPool
from tilesam.models.unetr import InstanceDecoder

log = logging.getLogger(__name__)


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


def param_groups(model: Sam, config: FinetuneConfig, decoder: InstanceDecoder | None) -> list[dict[str, Any]]:
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


class Trainer:
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
        if config.auto_keys:
            raise ValueError(f"settings {config.auto_keys} are auto: resolve them with FinetuneConfig.for_device")
        self.model, self.config, self.train, self.val, self.cache = model, config, train, val, cache
        self.decoder = decoder  # trained when config.trains_decoder, else carried through to the output
        self.device = model_device(model)
        groups = param_groups(model, config, decoder)
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
        objects = (self.model, self.decoder, self.optimizer, self.scheduler, self.scaler)
        save_state(path, fingerprint, self.state, *objects)

    def load(self, path: Path, fingerprint: str) -> None:
        objects = (self.model, self.decoder, self.optimizer, self.scheduler, self.scaler)
        self.state = load_state(path, fingerprint, *objects)

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
            best_model=cpu_state(self.model),
            best_decoder=None if self.decoder is None else cpu_state(self.decoder),
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
            self.state.best_model = cpu_state(self.model)
            self.state.best_decoder = None if self.decoder is None else cpu_state(self.decoder)

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
