"""The finetuning job: a base model and labelled images -> a checkpoint and its card (tilesam.finetune).

One `tilesam` subcommand, listed in `tilesam.jobs.JOBS`; the finetuned model is then used like any other.
"""

from __future__ import annotations

import logging
from typing import Annotated

from tilesam import config as schema
from tilesam.config import FinetuneConfig
from tilesam.relay import Cli, Device, In, Out, Param, Wildcard

log = logging.getLogger("tilesam")


def finetune(
    *,
    model: Annotated[str, Param("spec", "base model: registry name, name@version or checkpoint path")],
    images: Annotated[list[str], In(help="training images: files (2D gray or RGB, or TIFF volumes: by section)")],
    labels: Annotated[list[str], In(help="instance labels, paired with images by file name")],
    val_images: Annotated[
        list[str] | None, In(help="validation images (default: --val-fraction of the training ones)")
    ] = None,
    val_labels: Annotated[list[str] | None, In()] = None,
    val_fraction: Annotated[float | None, Param(help="without --val-images: validate on the last F by name")] = None,
    out: Annotated[str, Out("checkpoint", "checkpoint to write (a plain SAM state dict); the card goes beside it")],
    name: Annotated[str | None, Param(help="model name (default <base>-ft-<dataset>)")] = None,
    dataset: Annotated[
        str | None, Wildcard(help="dataset name in the default model name (default: the images' folder)")
    ] = None,
    embedding_cache: Annotated[str | None, Cli("folder keeping image embeddings between runs (frozen encoder)")] = None,
    restart: Annotated[bool, Cli("ignore the state of an interrupted run")] = False,
    no_progress: Annotated[bool, Param(help="no progress bar")] = False,
    trust_pickle: Annotated[
        bool, Param(help="the base, a checkpoint file of your own, may be fully unpickled (runs code from it)")
    ] = False,
    params: FinetuneConfig,
    device: Device = "auto",
):
    """Finetune a model on images with instance labels (resumable); writes the checkpoint and its card."""
    from tilesam.device import resolve_device
    from tilesam.finetune.trainer import finetune as run

    if val_fraction is None:
        val_fraction = schema.defaults("finetune")["val_fraction"]
    result = run(
        model,
        images,
        labels,
        out,
        val_images=val_images or None,
        val_labels=val_labels or None,
        val_fraction=0.0 if val_images else val_fraction,
        config=params,
        name=name,
        dataset=dataset,
        device=resolve_device(device),
        embedding_cache=embedding_cache,
        resume=not restart,
        progress=not no_progress,
        trust_pickle=trust_pickle,
    )
    log.info(
        "finetuned %s: %s (card %s, best epoch %d)", result.name, result.checkpoint, result.card, result.best_epoch
    )
    return result
