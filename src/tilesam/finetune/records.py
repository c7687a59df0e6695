"""What a finetuning run records: each epoch's losses and scores, the state carried between epochs, the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tilesam.finetune.validate import EVAL_MODES

if TYPE_CHECKING:
    import torch


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


@dataclass(frozen=True)
class FinetuneResult:
    """What a finetuning run produced."""

    name: str
    checkpoint: Path
    card: Path
    best_epoch: int
    epochs: list[EpochRecord]
    resumed_from: int  # epochs already done when this call started (0: a fresh run)
