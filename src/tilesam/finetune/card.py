"""What a finished run leaves beside its checkpoint (model card, loss log and plot), and registering it by its card."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesam.config import FinetuneConfig
from tilesam.download import ChecksumError, file_sha256
from tilesam.finetune.data import FinetuneError, Sample
from tilesam.finetune.records import EpochRecord, TrainingState
from tilesam.finetune.validate import EVAL_MODES
from tilesam.models import ModelCard, model_info, register
from tilesam.models.fetch import decoder_path, local_checkpoint, model_path
from tilesam.models.registry import DecoderRef

if TYPE_CHECKING:
    from segment_anything.modeling import Sam

CARD_VERSION = "v1"


def card_path(checkpoint: str | os.PathLike) -> Path:
    """The model card beside a checkpoint: ``model.pth`` -> ``model.json``."""
    return Path(checkpoint).with_suffix(".json")


def state_path(checkpoint: str | os.PathLike) -> Path:
    """The training-state file of a run: ``<out>.state.pt``."""
    return Path(f"{checkpoint}.state.pt")


def _write_losses(path: Path, steps: list[dict[str, float]]) -> None:
    """The loss of every optimizer step as a csv."""
    import pandas as pd

    columns = ["iteration", "epoch", "loss", "mask_loss", "iou_loss", "decoder_loss", "lr"]
    pd.DataFrame(steps, columns=columns).to_csv(path, index=False)


def _plot_losses(path: Path, steps: list[dict[str, float]], history: list[EpochRecord]) -> None:
    """Training loss per step and per epoch, and validation IoU per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([s["iteration"] for s in steps], [s["loss"] for s in steps], alpha=0.3, label="loss per step")
    trained = [r for r in history if r.train_loss is not None]
    ax.plot([r.iterations for r in trained], [r.train_loss for r in trained], "o-", label="loss per epoch")
    ax.set_xlabel("iteration")
    decoder = any(s.get("decoder_loss") is not None for s in steps)
    ax.set_ylabel("training loss (Dice + IoU MSE" + (" + decoder)" if decoder else ")"))
    validated = [r for r in history if r.val]
    if validated:
        twin = ax.twinx()
        for mode in EVAL_MODES:
            twin.plot(
                [r.iterations for r in validated],
                [r.val[f"{mode}_iou"] for r in validated],
                "s--",
                label=f"val {mode} IoU",
            )
        twin.set_ylabel("validation IoU per object")
        twin.legend(loc="center right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_loss_log(checkpoint: Path, state: TrainingState) -> None:
    """``<stem>.losses.csv`` (the loss of each step) and ``<stem>.losses.png`` beside the checkpoint."""
    stem_path = checkpoint.with_suffix("")
    _write_losses(Path(f"{stem_path}.losses.csv"), state.steps)
    _plot_losses(Path(f"{stem_path}.losses.png"), state.steps, state.history)


@dataclass(frozen=True)
class BaseModel:
    """The base model's identity, for the card and the fingerprint."""

    spec: str  # registry name@version, or the checkpoint's absolute path
    name: str  # the short name the finetuned model's default name starts with
    sha256: str
    architecture: str


def base_identity(base: str | os.PathLike, *, trust_pickle: bool = False) -> BaseModel:
    """The identity of a registered model or a checkpoint file; an unknown sha256 is an error.

    ``trust_pickle``: a checkpoint file of the user's own may be fully unpickled (see `load_model`).
    """
    info = model_info(base, trust_pickle=trust_pickle)
    if info["sha256"] is None:
        raise FinetuneError(
            f"base model {base}: its sha256 is unknown, so the finetuned model's provenance would be unknown"
        )
    if local_checkpoint(base) is not None:
        return BaseModel(info["path"], Path(info["path"]).stem, info["sha256"], info["architecture"])
    return BaseModel(f"{info['name']}@{info['version']}", info["name"], info["sha256"], info["architecture"])


def trained_on(base: BaseModel, dataset: str) -> list[str]:
    """The datasets a finetuned model has learnt from: its base model's (from its card) and its own.

    Benchmarks mark a model scored on one of them `in_domain`, so a win there is not read as generalisation.
    """
    if Path(base.spec).is_file():  # a checkpoint: a tilesam card beside it, if any, says what it learnt from
        card = card_path(base.spec)
        inherited = json.loads(card.read_text()).get("trained_on", []) if card.is_file() else []
    else:
        from tilesam.models.registry import resolve

        inherited = list(getattr(resolve(base.spec), "trained_on", ()))
    return list(dict.fromkeys([*inherited, dataset]))


def arithmetic(model: Sam) -> dict[str, Any]:
    """What besides the settings decides the weights' last bits: CPU float sums depend on the thread count
    and on the kernels torch picks for the CPU (measured: 1 and 2 threads give different weights after 8
    steps, the same count gives the same bits), so a rerun that must match uses the same of both."""
    import torch

    return {
        "device": str(next(model.parameters()).device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def write_card(
    path: Path,
    *,
    name: str,
    base: BaseModel,
    model: Sam,
    checkpoint: Path,
    dataset: str,
    config: FinetuneConfig,
    train: Sequence[Sample],
    val: Sequence[Sample],
    state: TrainingState,
    fingerprint: str,
    decoder: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model card: the finetuned model's registry record plus its provenance and training history.

    ``decoder``: the instance decoder in the checkpoint (its variant, origin ``base`` or ``fresh``,
    whether it was trained), None when the checkpoint has none.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        tilesam_version = version("tilesam")
    except PackageNotFoundError:
        tilesam_version = "unknown"
    card = {
        "name": name,
        "version": CARD_VERSION,
        "architecture": base.architecture,
        "checkpoint": checkpoint.name,
        "sha256": file_sha256(checkpoint, remember=False),
        "base": base.spec,
        "base_sha256": base.sha256,
        "dataset": dataset,
        "trained_on": trained_on(base, dataset),
        "image_size": int(model.image_encoder.img_size),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "train_images": [str(s.image.resolve()) for s in train],
        "train_labels": [str(s.labels.resolve()) for s in train],
        "val_images": [str(s.image.resolve()) for s in val],
        "val_labels": [str(s.labels.resolve()) for s in val],
        "iterations": state.iterations,
        "seed": config.seed,
        "trained_parts": list(config.train_parts),
        "decoder": decoder,
        "config": asdict(config),
        "epochs": [asdict(r) | {"score": r.score} for r in state.history],
        "best_epoch": state.best_epoch,
        "fingerprint": fingerprint,
        "made_by": f"tilesam {tilesam_version}",
        "arithmetic": arithmetic(model),
    }
    path.write_text(json.dumps(card, indent=1))
    return card


def finished_card(out: Path, fingerprint: str, name: str) -> dict[str, Any] | None:
    """The card of a finished run with these exact settings and name, if its checkpoint is intact."""
    card_file = card_path(out)
    if not (out.is_file() and card_file.is_file()):
        return None
    card = json.loads(card_file.read_text())
    if card.get("fingerprint") != fingerprint or card.get("name") != name:
        return None
    return card if file_sha256(out, remember=False) == card.get("sha256") else None


def _link_into_cache(target: Path, checkpoint: Path) -> None:
    """Put the checkpoint where the registry looks for a card's file (a symlink; a copy where links fail)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == checkpoint.resolve():
            return
        target.unlink()
    try:
        target.symlink_to(checkpoint.resolve())
    except OSError:
        shutil.copy2(checkpoint, target)


def register_finetuned(card_json: str | os.PathLike) -> ModelCard:
    """Register a finetuned model by its card, so its name loads with ``load_model(name)`` in this process.

    The card's checkpoint (beside the card) is checked against the card's sha256 and linked into
    the model cache under the card's name; a model of the same name registered before is replaced.
    A checkpoint with an instance decoder (the card's ``decoder``) is also the card's decoder file,
    so ``load_decoder_state(name)`` and AIS find it by name.
    The registry lives in memory: each process that wants the name calls this once.
    """
    card_file = Path(card_json).resolve()
    card = json.loads(card_file.read_text())
    checkpoint = (card_file.parent / card["checkpoint"]).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{card_file}: its checkpoint {checkpoint} does not exist")
    actual = file_sha256(checkpoint)
    if actual != card["sha256"]:
        raise ChecksumError(f"{checkpoint}: sha256 {actual} differs from the card's {card['sha256']} ({card_file})")
    model_card = ModelCard(
        name=card["name"],
        architecture=card["architecture"],
        version=card["version"],
        url=checkpoint.as_uri(),
        sha256=actual,
        source=f"finetuned by tilesam from {card['base']} on {card['dataset']}; card {card_file}",
        size=checkpoint.stat().st_size,
        pixel_mean=tuple(card["pixel_mean"]),
        pixel_std=tuple(card["pixel_std"]),
        image_size=int(card["image_size"]),
    )
    if "trained_on" in {f.name for f in fields(ModelCard)}:  # the registry's field, where it has one
        model_card = replace(model_card, trained_on=tuple(card.get("trained_on", [card["dataset"]])))
    if card.get("decoder") is not None:  # micro-sam's format: the checkpoint is its own decoder file
        decoder = DecoderRef(url=checkpoint.as_uri(), sha256=actual, size=model_card.size)
        model_card = replace(model_card, decoder=decoder)
        target = decoder_path(model_card)
        assert target is not None
        _link_into_cache(target, checkpoint)
    _link_into_cache(model_path(model_card), checkpoint)
    return register(model_card, replace=True)
