"""Finetuning test helpers: the two real dsb2018 images, tiny settings, a run, and comparing weights."""

from __future__ import annotations

from pathlib import Path

import torch

from tilesam.config import FinetuneConfig
from tilesam.finetune.trainer import FinetuneResult, finetune

# Two small 256x256 fluorescence images with few nuclei; tiny settings keep each run to seconds.
NAMES = (
    "0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5",
    "0ed3555a4bd48046d3b63d8baf03a5aa97e523aa483aaa07459e7afa39fb96c6",
)
# The SAM parts only (the schema's default also trains an instance decoder, the decoder tests add it).
TINY = FinetuneConfig(
    train_parts=("mask_decoder", "prompt_encoder"),
    decoder_steps=1,
    iterations=2,
    iterations_per_epoch=1,
    objects_per_image=2,
    sub_iterations=2,
    augment_variants=1,
    lr=1e-4,
    prompt_encoder_lr_factor=10.0,
    seed=3,
)


def run(
    data, out: Path, embeddings: Path, config: FinetuneConfig = TINY, base: str = "lite_medsam", **kwargs
) -> FinetuneResult:
    """Finetune ``base`` (LiteMedSAM) on ``data`` (images, labels) with the shared embedding cache."""
    return finetune(base, *data, out, config=config, embedding_cache=embeddings, progress=False, **kwargs)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"
