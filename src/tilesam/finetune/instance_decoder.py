"""The instance decoder a run starts from (the base model's or a fresh one), and what the card says about it."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch

from tilesam.config import FinetuneConfig
from tilesam.finetune.cache import model_device
from tilesam.models import load_decoder_state
from tilesam.models.unetr import InstanceDecoder, decoder_upscale, load_decoder

if TYPE_CHECKING:
    from segment_anything.modeling import Sam


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


def decoder_record(
    decoder: InstanceDecoder | None, origin: str | None, config: FinetuneConfig
) -> dict[str, Any] | None:
    """What the model card says about the checkpoint's instance decoder (None: it has none)."""
    if decoder is None:
        return None
    variant = "transposed-conv" if decoder.conv_transpose else "bilinear"
    return {"variant": variant, "origin": origin, "trained": config.trains_decoder}
