"""TinyViT image encoder for SAM: MobileSAM (``vit_t``) and LiteMedSAM.

tilesam's own implementation of the TinyViT-5M encoder used by MobileSAM and LiteMedSAM. Parameter
and buffer names match the published checkpoints, which can therefore be loaded strictly:

- ``patch_embed.seq.{0,2}``: a two-convolution stem (``c`` = conv, ``bn`` = batch norm);
- ``layers.0``: MBConv blocks (``conv1/conv2/conv3``) then a ``downsample`` patch merging;
- ``layers.1..3``: windowed-attention blocks (``attn``, ``local_conv``, ``mlp``), each stage but the
  last ending in a ``downsample``;
- ``neck``: the SAM neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to 256 channels;
- ``norm_head``/``head``: MobileSAM's unused ImageNet classifier, present only so that its
  checkpoint loads strictly (``num_classes``).

The two variants differ only in the stem: MobileSAM downsamples 1024 -> 256 with two stride-2 3x3
convolutions, LiteMedSAM keeps its 256-pixel input with two 1x1 convolutions. Both then run the
stages at 256, 128, 64 and 64 pixels (the last merge keeps the resolution), so the output is the
SAM embedding of shape (B, 256, 64, 64).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tilesam.sam_modules import modeling

LayerNorm2d = modeling().common.LayerNorm2d

__all__ = ["TinyViT", "tiny_vit_5m_mobile_sam", "tiny_vit_5m_lite_medsam"]


class ConvBN(nn.Sequential):
    """Bias-free convolution followed by batch norm (keys ``c`` and ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)


class Stem(nn.Module):
    """Patch embedding: two ConvBN with a GELU between; 3x3 stride 2 each, or 1x1 stride 1."""

    def __init__(self, dim: int, downsample: bool) -> None:
        super().__init__()
        kernel, stride = (3, 2) if downsample else (1, 1)
        self.stride = stride * stride  # total downsampling of the stem
        self.seq = nn.Sequential(ConvBN(3, dim // 2, kernel, stride), nn.GELU(), ConvBN(dim // 2, dim, kernel, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, 3x3 depthwise, 1x1 project, residual, GELU."""

    def __init__(self, dim: int, expand: float) -> None:
        super().__init__()
        hidden = int(dim * expand)
        self.conv1 = ConvBN(dim, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """1x1 conv, 3x3 depthwise conv (strided), 1x1 conv; returns tokens (B, H'*W', C')."""

    def __init__(self, dim: int, out_dim: int, resolution: int, stride: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv1 = ConvBN(dim, out_dim)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:  # tokens from an attention stage
            x = _tokens_to_map(x, self.resolution)
        x = self.conv3(F.gelu(self.conv2(F.gelu(self.conv1(x)))))
        return x.flatten(2).transpose(1, 2)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside one window, with a learned bias per |dy|, |dx| offset.

    ``qkv`` packs, per head, that head's query, key and value (the checkpoints' layout). The bias
    table has one entry per offset (|dy|, |dx|), indexed ``|dy| * window + |dx|``.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        # a real tensor also when the model is built on the meta device (models.load): it is no weight
        # of the checkpoint, so loading would never fill it
        steps = torch.arange(window, device="cpu")
        ys, xs = torch.meshgrid(steps, steps, indexing="ij")
        ys, xs = ys.flatten(), xs.flatten()
        offsets = (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()
        self.register_buffer("attention_bias_idxs", offsets, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4)  # each (B, heads, N, head_dim)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """Pre-norm two-layer MLP."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), depthwise 3x3 ConvBN (no residual), MLP (residual).

    The map is zero-padded bottom/right to whole windows; padded tokens take part in attention as
    the reference does (no mask), and are cropped afterwards.
    """

    def __init__(self, dim: int, resolution: int, num_heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        r, w = self.resolution, self.window
        pad = (w - r % w) % w
        grid = F.pad(x.view(b, r, r, c), (0, 0, 0, pad, 0, pad))
        n = (r + pad) // w
        windows = grid.view(b, n, w, n, w, c).transpose(2, 3).reshape(b * n * n, w * w, c)
        out = self.attn(windows).view(b, n, n, w, w, c).transpose(2, 3).reshape(b, r + pad, r + pad, c)
        return out[:, :r, :r].reshape(b, r * r, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._windowed_attention(x)
        x = self.local_conv(_tokens_to_map(x, self.resolution)).flatten(2).transpose(1, 2)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv blocks on the feature map, then patch merging to tokens."""

    def __init__(self, dim: int, depth: int, expand: float, downsample: PatchMerging) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x)


class AttentionStage(nn.Module):
    """Stages 1-3: TinyViT blocks on tokens, then patch merging (all stages but the last)."""

    def __init__(self, blocks: Sequence[TinyViTBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def _tokens_to_map(x: torch.Tensor, resolution: int) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).reshape(b, c, resolution, resolution)


class TinyViT(nn.Module):
    """TinyViT encoder returning SAM image embeddings (B, 256, H/16, W/16 for a 1024 input).

    ``img_size`` is the square input side that SAM's predictor resizes and pads to (SamPredictor and
    SamAutomaticMaskGenerator read ``image_encoder.img_size``).
    """

    def __init__(
        self,
        img_size: int,
        stem_downsample: bool,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        merge_strides: Sequence[int] = (2, 2, 1),
        mlp_ratio: float = 4.0,
        mbconv_expand: float = 4.0,
        out_chans: int = 256,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if not len(embed_dims) == len(depths) == len(num_heads) == len(window_sizes) == len(merge_strides) + 1:
            raise ValueError("embed_dims, depths, num_heads, window_sizes need one entry per stage")
        self.img_size = img_size
        self.patch_embed = Stem(embed_dims[0], stem_downsample)
        resolution = img_size // self.patch_embed.stride
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
            merge = None
            if i < len(merge_strides):
                merge = PatchMerging(dim, embed_dims[i + 1], resolution, merge_strides[i])
            if i == 0:
                assert merge is not None
                self.layers.append(ConvStage(dim, depth, mbconv_expand, merge))
            else:
                blocks = [TinyViTBlock(dim, resolution, num_heads[i], window_sizes[i], mlp_ratio) for _ in range(depth)]
                self.layers.append(AttentionStage(blocks, merge))
            if i < len(merge_strides):
                resolution = (resolution - 1) // merge_strides[i] + 1  # 3x3 conv, padding 1
        self.out_resolution = resolution
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        if num_classes is not None:  # MobileSAM keeps TinyViT's (unused) ImageNet classifier
            self.norm_head = nn.LayerNorm(embed_dims[-1])
            self.head = nn.Linear(embed_dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"TinyViT expects a (B, 3, {self.img_size}, {self.img_size}) input, got {tuple(x.shape)}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.neck(_tokens_to_map(x, self.out_resolution))


def tiny_vit_5m_mobile_sam() -> TinyViT:
    """MobileSAM's encoder: 1024-pixel input, stride-4 stem, ImageNet head kept for strict loading."""
    return TinyViT(img_size=1024, stem_downsample=True, num_classes=1000)


def tiny_vit_5m_lite_medsam() -> TinyViT:
    """LiteMedSAM's encoder: 256-pixel input, 1x1 stem (no stem downsampling), no classifier."""
    return TinyViT(img_size=256, stem_downsample=False)
