"""The resumable state file of a run, the run's fingerprint, and torn-file-free saving of weights."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tilesam.config import FinetuneConfig
from tilesam.finetune.data import FinetuneError, Sample
from tilesam.finetune.records import EpochRecord, TrainingState


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the weights on the CPU (the best epoch's survive later steps)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def fingerprint(base_sha: str, config: FinetuneConfig, train: Sequence[Sample], val: Sequence[Sample]) -> str:
    """Hash of everything that decides the weights: a state file of other settings is not resumed."""
    payload = {
        "base": base_sha,
        "config": asdict(config),
        "train": [[str(s.image.resolve()), str(s.labels.resolve())] for s in train],
        "val": [[str(s.image.resolve()), str(s.labels.resolve())] for s in val],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def save_atomic(obj: Any, path: Path) -> None:
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


def save_state(
    path: Path,
    fingerprint: str,
    state: TrainingState,
    model: torch.nn.Module,
    decoder: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> None:
    """Everything a run needs to go on after its last epoch: weights, optimizer, schedule, random state, history."""
    save_atomic(
        {
            "fingerprint": fingerprint,
            "epoch": state.epoch,
            "iterations": state.iterations,
            "model": cpu_state(model),
            "decoder": None if decoder is None else cpu_state(decoder),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "history": [asdict(r) for r in state.history],
            "steps": state.steps,
            "best_epoch": state.best_epoch,
            "best_model": state.best_model,
            "best_decoder": state.best_decoder,
        },
        path,
    )


def load_state(
    path: Path,
    fingerprint: str,
    model: torch.nn.Module,
    decoder: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
) -> TrainingState:
    """Restore what `save_state` wrote into the run's objects; a state file of other settings is an error."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved["fingerprint"] != fingerprint:
        raise FinetuneError(
            f"{path} holds a finetuning run with other settings, base model or data; delete it to start "
            "afresh (or pass resume=False / --restart)"
        )
    model.load_state_dict(saved["model"], strict=True)
    if decoder is not None:
        decoder.load_state_dict(saved["decoder"], strict=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    return TrainingState(
        epoch=saved["epoch"],
        iterations=saved["iterations"],
        history=[EpochRecord(**r) for r in saved["history"]],
        steps=list(saved["steps"]),
        best_epoch=saved["best_epoch"],
        best_model=saved["best_model"],
        best_decoder=saved["best_decoder"],
    )
