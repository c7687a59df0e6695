"""micro-sam's instance-segmentation decoder, run on stored image embeddings.

micro-sam's automatic instance segmentation (AIS) predicts three maps per image (foreground,
centre distance, boundary distance) with the convolutional decoder of torch-em's ``UNETR``
(``backbone="sam", out_channels=3, use_sam_stats=True, final_activation="Sigmoid",
use_skip_connection=False, resize_input=True``). Without skip connections that decoder sees only the
SAM image embedding (B x 256 x h x w, 64 x 64 for 1024-pixel models), which is what tilesam stores per
tile: AIS never re-encodes.

Decision (issue 15): tilesam does not depend on torch-em at runtime. Measured in the project venv,
torch-em adds 30 packages / 218 MB / 23 s to the install and 3.4 s to every job's import
(tensorboard, bioimageio). This module is a compatible re-implementation; ``tests/models/test_unetr.py``
proves it equal to torch-em's UNETR (torch-em is a test dependency only).

Compatibility facts (torch-em 0.10, micro-sam 1.8):

- Parameter names are torch-em's UNETR state-dict keys minus those starting with ``encoder``: micro-sam's
  decoder-state format (a separate ``*_decoder.pt`` file or a checkpoint's ``decoder_state``).
- Two variants: upsampling by 2x2 transposed convolutions, or bilinear x2 followed by a 1x1 convolution.
  micro-sam picks transposed convolutions iff any key under ``decoder.samplers`` contains ``.block.``.
- Layers: features [512, 256, 128, 64]; ``base`` (two 3x3 convs 256->512) on the embedding; skip tensors
  from a chain of x2 "deconv" blocks on the same embedding (256->512->256->128->64); a three-level decoder
  that upsamples and concatenates a centre crop of each skip tensor -- torch-em crops the skip tensors in
  channels as well as space, so only the middle channels of each are used; a final x2 upsampling, a head
  block on the concatenation with the last skip, a 1x1 conv to 3 channels, sigmoid. Two-conv blocks use
  InstanceNorm without affine parameters (nothing in the state); the deconv blocks use BatchNorm, which
  micro-sam runs in training mode (batch statistics of one tile) also at inference: ``_TileNorm``.
- Output is 16x the embedding (1024 x 1024 for 64 x 64; tilesam: ``upscale``, the model input over the embedding side, 4 for LiteMedSAM) and is post-processed like SAM's masks
  (``Sam.postprocess_masks`` / torch-em's ``UNETR.postprocess_masks``): resized to the padded model input,
  cropped to the resized image (``input_size``), resized bilinearly to ``original_size``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tilesam.models.unetr_tail import decode_tail

__all__ = [
    "DecoderError",
    "InstanceDecoder",
    "decode_maps",
    "decoder_upscale",
    "is_conv_transpose_state",
    "load_decoder",
]

FEATURES = (512, 256, 128, 64)
"""Decoder widths, coarsest first (torch-em: initial_features 64, gain 2, depth 3)."""
EMBED_DIM = 256
"""Channels of a SAM image embedding (the neck's output width, every SAM architecture)."""
OUT_CHANNELS = 3
"""foreground, centre distance, boundary distance."""


class DecoderError(ValueError):
    """A decoder state that does not fit the instance decoder (names the source and the fault)."""


class _DoubleConv(nn.Module):
    """InstanceNorm -> 3x3 conv -> ReLU, twice (torch-em's ``ConvBlock2d``; keys ``block.1`` and ``block.4``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.InstanceNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.InstanceNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _BilinearUp(nn.Module):
    """Bilinear x2 (or no resize, past the decoder's ``upscale``), then a 1x1 conv (key ``conv``)."""

    def __init__(self, in_channels: int, out_channels: int, doubles: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        self.doubles = doubles

    def forward(self, x: Tensor) -> Tensor:
        if not self.doubles:
            return self.conv(x)
        # A 1x1 conv and bilinear resizing commute (bilinear weights sum to one, so the bias passes
        # through): narrowing before resizing does the conv on a quarter of the pixels and resizes
        # fewer channels; widening resizes first, as torch-em does.
        if self.conv.out_channels <= self.conv.in_channels:
            return F.interpolate(self.conv(x), scale_factor=2, mode="bilinear", align_corners=False)
        return self.conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))


class _TransposedUp(nn.Module):
    """A 2x2 stride-2 transposed conv (key ``block``): the conv-transpose variant."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        # A 2x2 stride-2 transposed conv writes each input pixel to its own 2x2 output block: a 1x1
        # conv to 4x the channels and a pixel shuffle are the same sums, and much faster on a CPU
        # than torch's transposed-conv kernel (which copies its output several times).
        weight, bias = self.block.weight, self.block.bias  # (in, out, 2, 2), (out,)
        out_channels = weight.shape[1]
        kernel = weight.permute(1, 2, 3, 0).reshape(4 * out_channels, weight.shape[0], 1, 1)
        return F.pixel_shuffle(F.conv2d(x, kernel, bias.repeat_interleave(4)), 2)


def _up(in_channels: int, out_channels: int, conv_transpose: bool, doubles: bool = True) -> nn.Module:
    if conv_transpose:
        return _TransposedUp(in_channels, out_channels)
    return _BilinearUp(in_channels, out_channels, doubles)


class _Conv3x3(nn.Module):
    """A padded 3x3 conv under the key ``block`` (torch-em's ``SingleConv2DBlock``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


class _TileNorm(nn.BatchNorm2d):
    """BatchNorm that, at inference, normalises each tile by its own statistics (keys of ``BatchNorm2d``).

    micro-sam 1.8 never puts its decoder in eval mode, so at inference its BatchNorm layers use the
    statistics of the batch being decoded, one tile (its default); the running statistics are never
    used. Normalising per tile gives micro-sam's maps for any batching (measured against micro-sam
    1.8.14: maps equal to 0.0 and ARI 1.000, against 0.92 with the running statistics; see
    ``benchmarks/vs_microsam.py --ais-equality``). Training is plain BatchNorm, as micro-sam's.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)


class _UpBlock(nn.Module):
    """x2 upsampling -> 3x3 conv -> BatchNorm -> ReLU (torch-em's ``Deconv2DBlock``): makes the skip tensors."""

    def __init__(self, in_channels: int, out_channels: int, conv_transpose: bool, doubles: bool = True) -> None:
        super().__init__()
        self.block = nn.Sequential(
            _up(in_channels, out_channels, conv_transpose, doubles),
            _Conv3x3(out_channels),
            _TileNorm(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x)


def _centre_crop(skip: Tensor, like: Tensor) -> Tensor:
    """The centre of ``skip`` in channels and space, shaped like ``like`` (torch-em's decoder crop)."""
    index = [slice(None)]
    for have, want in zip(skip.shape[1:], like.shape[1:]):
        start = (have - want) // 2
        index.append(slice(start, start + want))
    return skip[tuple(index)]


class _Levels(nn.Module):
    """The three decoder levels: upsample, concatenate the cropped skip tensor, two convs (key ``decoder``)."""

    def __init__(self, conv_transpose: bool, doubles: tuple[bool, ...]) -> None:
        super().__init__()
        pairs = list(zip(FEATURES[:-1], FEATURES[1:]))
        self.blocks = nn.ModuleList([_DoubleConv(cin, cout) for cin, cout in pairs])
        self.samplers = nn.ModuleList([_up(cin, cout, conv_transpose, d) for (cin, cout), d in zip(pairs, doubles)])

    def forward(self, x: Tensor, skips: list[Tensor]) -> Tensor:
        for block, sampler, skip in zip(self.blocks, self.samplers, skips):
            x = sampler(x)
            x = block(torch.cat([x, _centre_crop(skip, x)], dim=1))
        return x


class InstanceDecoder(nn.Module):
    """micro-sam's AIS decoder (torch-em UNETR without its encoder): embedding -> three sigmoid maps.

    ``forward(embedding [B, embed_dim, h, w]) -> [B, 3, upscale h, upscale w]`` (foreground, centre
    distance, boundary distance), all tiles of a batch in one pass. Build it with :func:`load_decoder`
    to get the variant right and the weights loaded strictly; a fresh one (random init) is for training.

    ``upscale`` is the model's input side over its embedding side (:func:`decoder_upscale`): 16 for
    every 1024-pixel SAM, where this is micro-sam's decoder exactly. A model whose embedding token
    covers fewer pixels (LiteMedSAM: 64 tokens for 256 pixels, 4) gets its maps at its own input
    resolution: the first upsamplings of both paths only apply their 1x1 convs (same layers, same state
    keys), so the wide layers (512 and 256 channels) run at the embedding's resolution and only the
    narrow ones (128, 64) at 2x and 4x, as in any U-Net (``benchmarks/decoder_speed.py``: at upscale 4,
    forward 1.85 s against 7.65 s when the first steps doubled, commit 5d95dd1; a 32 x 32-crop training
    step 2.32 s against 5.84 s; 2 threads, side by side on a busy machine). Only the bilinear variant
    (the one tilesam trains) has that form.
    """

    def __init__(self, *, conv_transpose: bool = False, embed_dim: int = EMBED_DIM, upscale: int = 16) -> None:
        super().__init__()
        if upscale not in (2, 4, 8, 16):
            raise ValueError(f"InstanceDecoder: upscale must be 2, 4, 8 or 16, got {upscale}")
        if conv_transpose and upscale != 16:
            raise ValueError(f"InstanceDecoder: the transposed-conv variant always upscales 16x, not {upscale}")
        self.conv_transpose = conv_transpose
        self.embed_dim = embed_dim
        self.upscale = upscale
        # per step of both paths (coarsest first): does it double? The last log2(upscale) do, so that the
        # wide layers stay at the embedding's resolution (all four at 16: micro-sam's decoder)
        steps = upscale.bit_length() - 1  # log2(upscale)
        doubles = tuple(k >= 4 - steps for k in range(4))
        f0, f1, f2, f3 = FEATURES
        self.deconv1 = _UpBlock(embed_dim, f0, conv_transpose, doubles[0])
        self.deconv2 = _UpBlock(f0, f1, conv_transpose, doubles[1])
        self.deconv3 = _UpBlock(f1, f2, conv_transpose, doubles[2])
        self.deconv4 = _UpBlock(f2, f3, conv_transpose, doubles[3])
        self.base = _DoubleConv(embed_dim, f0)
        self.decoder = _Levels(conv_transpose, doubles[:3])
        self.deconv_out = _up(f3, f3, conv_transpose, doubles[3])
        self.decoder_head = _DoubleConv(2 * f3, f3)
        self.out_conv = nn.Conv2d(f3, OUT_CHANNELS, kernel_size=1)

    def forward(self, embedding: Tensor) -> Tensor:
        if embedding.ndim != 4 or embedding.shape[1] != self.embed_dim:
            raise ValueError(
                f"InstanceDecoder expects image embeddings [B, {self.embed_dim}, h, w], got {tuple(embedding.shape)}"
            )
        z9 = self.deconv1(embedding)  # 2x, 512 channels (scales at upscale 16; at 4: 1x, 1x, 2x, 4x)
        z6 = self.deconv2(z9)  # 4x, 256
        z3 = self.deconv3(z6)  # 8x, 128
        x = self.decoder(self.base(embedding), [z9, z6, z3])  # 8x, 64
        if not self.training and not torch.is_grad_enabled():  # inference: the same sums, in bands, into kept buffers
            return decode_tail(self, z3, x)
        z0 = self.deconv4(z3)  # 16x, 64
        x = self.deconv_out(x)  # 16x, 64
        x = self.decoder_head(torch.cat([x, z0], dim=1))
        return torch.sigmoid(self.out_conv(x))


def decoder_upscale(sam: nn.Module) -> int:
    """A SAM model's input side over its embedding side: the instance decoder's output scale."""
    return int(sam.image_encoder.img_size // sam.prompt_encoder.image_embedding_size[0])


def is_conv_transpose_state(decoder_state: Mapping[str, object]) -> bool:
    """micro-sam's rule: the transposed-conv variant iff a ``decoder.samplers`` key contains ``.block.``."""
    return any(".block." in k for k in decoder_state if k.startswith("decoder.samplers"))


def _shape(value: object) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, Tensor) else None


def load_decoder(
    decoder_state: Mapping[str, Tensor],
    *,
    source: str = "decoder state",
    device: str | torch.device = "cpu",
    embed_dim: int = EMBED_DIM,
    upscale: int = 16,
) -> InstanceDecoder:
    """An :class:`InstanceDecoder` (eval mode, on ``device``) with ``decoder_state`` loaded strictly.

    The variant is inferred as micro-sam does; ``upscale`` comes from the SAM model it decodes
    (:func:`decoder_upscale`). Missing or unexpected keys, non-tensor values and shape
    mismatches (e.g. the decoder of another embedding width) raise :class:`DecoderError` naming ``source``.
    """
    if not isinstance(decoder_state, Mapping):
        raise DecoderError(
            f"{source}: a decoder state must be a mapping of names to tensors, not {type(decoder_state).__name__}"
        )
    if "decoder_state" in decoder_state or "model_state" in decoder_state:
        raise DecoderError(
            f"{source}: this is a training checkpoint ({sorted(decoder_state)[:4]}), not a decoder state; "
            "pass its 'decoder_state'"
        )
    conv_transpose = is_conv_transpose_state(decoder_state)
    if conv_transpose and upscale != 16:
        raise DecoderError(
            f"{source}: a transposed-conv decoder upscales 16x, but this model's embedding needs {upscale}x "
            "(its input side / embedding side); train a bilinear decoder for it"
        )
    decoder = InstanceDecoder(conv_transpose=conv_transpose, embed_dim=embed_dim, upscale=upscale)
    expected = decoder.state_dict()
    missing = sorted(expected.keys() - decoder_state.keys())
    unexpected = sorted(decoder_state.keys() - expected.keys())
    mismatched = [
        f"{k} {_shape(v)} vs {tuple(expected[k].shape)}"
        for k, v in decoder_state.items()
        if k in expected and _shape(v) != tuple(expected[k].shape)
    ]
    if missing or unexpected or mismatched:
        variant = "transposed-conv" if decoder.conv_transpose else "bilinear"
        encoder = [k for k in unexpected if k.startswith("encoder")]
        hint = f" ({len(encoder)} keys start with 'encoder': pass only the decoder's keys)" if encoder else ""
        raise DecoderError(
            f"{source} does not fit micro-sam's instance decoder ({variant} variant, {embed_dim}-channel embedding): "
            f"{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}{hint}, "
            f"{len(mismatched)} shape mismatches {mismatched[:4]}"
        )
    decoder.load_state_dict(dict(decoder_state), strict=True)
    return decoder.to(device).eval()


def _check_size(name: str, size: tuple[int, int]) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"decode_maps: {name} must be two positive integers (height, width), got {size!r}")
    return int(size[0]), int(size[1])


def postprocess_maps(
    maps: Tensor, input_size: tuple[int, int], original_size: tuple[int, int], *, model_size: int | None = None
) -> Tensor:
    """Maps at the padded model input -> maps of the original image, as SAM post-processes masks.

    Resized to ``model_size`` squared (the encoder's input side; default: the maps' own size, so a
    no-op for 1024-pixel models), cropped to ``input_size`` (the resized image before padding), then
    resized bilinearly (align_corners False) to ``original_size``.
    """
    input_size, original_size = _check_size("input_size", input_size), _check_size("original_size", original_size)
    side = model_size or maps.shape[-1]
    if tuple(maps.shape[-2:]) != (side, side):
        maps = F.interpolate(maps, (side, side), mode="bilinear", align_corners=False)
    if input_size[0] > side or input_size[1] > side:
        raise ValueError(f"decode_maps: input_size {input_size} exceeds the model input {side} x {side}")
    maps = maps[..., : input_size[0], : input_size[1]]
    return F.interpolate(maps, original_size, mode="bilinear", align_corners=False)


@torch.inference_mode()
def decode_maps(
    decoder: InstanceDecoder,
    embeddings: Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    *,
    model_size: int | None = None,
    batch_size: int = 4,
) -> np.ndarray:
    """float32 [B, 3, H, W] maps of ``original_size`` (H, W) for B tiles' embeddings, as micro-sam's AIS computes them.

    ``input_size`` is the tile resized so its longest side is the model's input side (SAM's
    ``ResizeLongestSide.get_preprocess_shape``), ``model_size`` that side (default 16 x the embedding
    side: right for the 1024-pixel SAM models; pass 256 for LiteMedSAM). Tiles go through the decoder
    ``batch_size`` at a time (each costs about 2 GB at 1024 x 1024, 0.8 GB of it buffers kept for the next call).
    """
    if embeddings.ndim != 4:
        raise ValueError(f"decode_maps: embeddings must be [B, C, h, w], got {tuple(embeddings.shape)}")
    if batch_size < 1:
        raise ValueError(f"decode_maps: batch_size must be >= 1, got {batch_size}")
    device = next(decoder.parameters()).device
    out = np.empty((embeddings.shape[0], OUT_CHANNELS, *_check_size("original_size", original_size)), np.float32)
    for start in range(0, embeddings.shape[0], batch_size):
        chunk = embeddings[start : start + batch_size].to(device=device, dtype=torch.float32)
        maps = postprocess_maps(decoder(chunk), input_size, original_size, model_size=model_size)
        out[start : start + len(chunk)] = maps.float().cpu().numpy()
    return out
