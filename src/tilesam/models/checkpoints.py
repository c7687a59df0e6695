"""Reading a checkpoint file: its state dict, its architecture, safely.

Files are read with ``torch.load(weights_only=True)``, which runs no code from the file; full
unpickling only where `tilesam.models.load` says the file may be trusted (``trust_pickle``, or a
registry file just hashed against its card). Error messages never pass on torch's advice to disable
``weights_only``.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

_VIT_WIDTHS = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}
_SAM_PREFIX = "sam."


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or fits no known architecture."""


@dataclass(frozen=True)
class Checkpoint:
    """The contents of a checkpoint file, normalised to a SAM state dict."""

    path: Path
    architecture: str
    model_state: dict[str, torch.Tensor]
    decoder_state: dict[str, Any] | None


def _unpickling_reason(error: BaseException) -> str:
    """What torch's weights-only unpickler objected to, without its advice to turn the check off."""
    text = str(error)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please|\n\n|$)", text, re.S)
    if found:
        return " ".join(found.group(1).split())
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return " ".join(x for x in sentences if "weights_only" not in x and "trusted source" not in x).strip()[:200]


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` with ``weights_only=True``; full unpickling only with ``trust_pickle``."""
    # zip-format checkpoints are memory-mapped: loading then copies once, not twice (vit_h is 2.5 GB)
    mmap = zipfile.is_zipfile(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        reason = _unpickling_reason(error)
        if not trust_pickle:
            if "Unsupported global" in str(error):
                raise CheckpointError(
                    f"checkpoint {path} holds Python objects besides tensors ({reason}); loading it would run "
                    "code from the file, so tilesam did not load it. If it is your own file and you trust its "
                    "origin, set trust_pickle: true in the config (or --trust-pickle, trust_pickle=True); or "
                    "save its tensors again as a plain state dict"
                ) from None
            raise CheckpointError(
                f"could not read checkpoint {path}: not a PyTorch file that loads without running code "
                f"(truncated or corrupt, or a plain pickle?) [{reason}]"
            ) from None
    except Exception as error:  # torch reports corrupt files as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(
            f"could not read checkpoint {path}: not a readable PyTorch file (truncated or corrupt?) "
            f"[{type(error).__name__}: {_unpickling_reason(error)}]"
        ) from None
    try:  # trusted: the user's word, or bytes this process verified against the registry
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as error:
        raise CheckpointError(
            f"could not read checkpoint {path}: not a readable PyTorch file (truncated or corrupt?) "
            f"[{type(error).__name__}: {str(error)[:200]}]"
        ) from None


def _state_dict(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if isinstance(obj, Mapping) and "model_state" in obj:
        model_state, decoder_state = obj["model_state"], obj.get("decoder_state")
    else:
        model_state, decoder_state = obj, None
    if not isinstance(model_state, Mapping) or not all(isinstance(v, torch.Tensor) for v in model_state.values()):
        keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"checkpoint {path} is neither a SAM state dict nor a training checkpoint with 'model_state' "
            f"(found: {keys})"
        )
    state = {(k[len(_SAM_PREFIX) :] if k.startswith(_SAM_PREFIX) else k): v for k, v in model_state.items()}
    return state, (dict(decoder_state) if decoder_state is not None else None)


def detect_architecture(state: Mapping[str, torch.Tensor], source: str | os.PathLike = "state dict") -> str:
    """Architecture read off a SAM state dict's image encoder.

    ViT patch-embedding width 768/1024/1280 -> vit_b/l/h. A TinyViT layout (``patch_embed.seq``)
    -> vit_t when its stem convolutions are 3x3 (MobileSAM, stride-4 stem for 1024 input), or
    lite_medsam_tinyvit when they are 1x1 (LiteMedSAM, 256 input); the prompt encoder and decoder
    have identical shapes in both, so the stem is what tells them apart.
    """
    vit = state.get("image_encoder.patch_embed.proj.weight")
    if vit is not None and vit.shape[0] in _VIT_WIDTHS:
        return _VIT_WIDTHS[vit.shape[0]]
    stem = state.get("image_encoder.patch_embed.seq.0.c.weight")
    if stem is not None and stem.ndim == 4:
        if stem.shape[-1] == 3:
            return "vit_t"
        if stem.shape[-1] == 1:
            return "lite_medsam_tinyvit"
    found = [k for k in state if "patch_embed" in k][:4] or list(state)[:4]
    raise CheckpointError(
        f"checkpoint {source} fits no known architecture (vit_h, vit_l, vit_b, vit_t, lite_medsam_tinyvit): "
        f"no recognisable image_encoder.patch_embed (keys seen: {found})"
    )


def read_checkpoint(path: str | os.PathLike, *, trust_pickle: bool = False) -> Checkpoint:
    """Read a checkpoint file into a :class:`Checkpoint` (state dict, architecture, decoder state)."""
    path = Path(path)
    state, decoder_state = _state_dict(_torch_load(path, trust_pickle), path)
    return Checkpoint(path, detect_architecture(state, path), state, decoder_state)


#: ImageEncoderViT's settings as segment_anything's builders set them: width, depth, heads, global-attention blocks
