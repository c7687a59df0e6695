"""The instance decoder's full-resolution layers at inference: in bands of rows, into buffers kept between calls.

At 16x (1024 x 1024 maps from a 64 x 64 embedding) each of the decoder's last layers makes a
256-512 MB tensor. Fresh for every tile, each costs a page fault per 4 kB page on first touch (the
C allocator maps such blocks from the system and unmaps them when freed). Here those layers write
into three full-resolution buffers that the decoder keeps while its input shape stays the same, and
their convolutions and upsamplings run on bands of rows whose temporaries (at most ``BAND_BYTES`` on
a CPU) the allocator serves again from freed memory; the normalisations run in place. The sums are
those of ``InstanceDecoder.forward``: a convolution's output row sums the same products whether its
input is the whole map or a band around it (equal within float rounding, ``tests/models/test_unetr_tail.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BAND_BYTES", "decode_tail"]

BAND_BYTES = 16 * 2**20
"""A band's largest temporary on a CPU: under glibc's largest mmap threshold (32 MB), so that freed
bands are reused from the heap instead of mapped afresh. On a GPU (whose allocator caches) 16x more."""


def _bands(rows: int, row_bytes: int, device: torch.device) -> Iterator[tuple[int, int]]:
    budget = BAND_BYTES if device.type == "cpu" else 16 * BAND_BYTES
    step = max(8, budget // max(row_bytes, 1) - 2)
    for r0 in range(0, rows, step):
        yield r0, min(r0 + step, rows)


def _upsample_rows(sampler: nn.Module, x: Tensor, out: Tensor) -> None:
    """``out = sampler(x)`` band by band: a 1x1 conv and a x2 resize (bilinear: one input row of halo)."""
    factor = out.shape[-2] // x.shape[-2]
    halo = 1 if getattr(sampler, "doubles", False) else 0  # a 2x2 transposed conv or a 1x1 conv: none
    rows = x.shape[-2]
    for r0, r1 in _bands(rows, out[:, :, :factor].numel() * out.element_size(), x.device):
        lo, hi = max(r0 - halo, 0), min(r1 + halo, rows)
        y = sampler(x[..., lo:hi, :])
        start = factor * (r0 - lo)
        out[..., factor * r0 : factor * r1, :].copy_(y[..., start : start + factor * (r1 - r0), :])


def _conv3x3_rows(conv: nn.Conv2d, sources: tuple[Tensor, ...], out: Tensor, then: Callable | None = None) -> None:
    """``out = then(conv(cat(sources)))`` band by band (zero padding, as ``conv``'s); ``then`` is row-wise."""
    rows = sources[0].shape[-2]
    row_bytes = sum(s[:, :, :1].numel() for s in sources) * sources[0].element_size()
    for r0, r1 in _bands(rows, row_bytes, out.device):
        lo, hi = max(r0 - 1, 0), min(r1 + 1, rows)
        band = [s[..., lo:hi, :] for s in sources]
        band = torch.cat(band, dim=1) if len(band) > 1 else band[0]
        if r0 == 0 or r1 == rows:  # the map's own top or bottom edge: zero rows, as conv's padding
            band = F.pad(band, (0, 0, int(r0 == 0), int(r1 == rows)))
        y = F.conv2d(band, conv.weight, conv.bias, padding=(0, 1))
        out[..., r0:r1, :] = then(y) if then is not None else y


def _row_sums(x: Tensor, square: bool = False) -> Tensor:
    """Sum (of squares) of each (tile, channel) of ``x``: rows in float32, their sums in float64, band by band."""
    total = x.new_zeros(x.shape[:-2], dtype=torch.float64)
    for r0, r1 in _bands(x.shape[-2], x[..., :1, :].numel() * x.element_size(), x.device):
        band = x[..., r0:r1, :]
        total += (band * band if square else band).sum(dim=-1).sum(dim=-1, dtype=torch.float64)
    return total


def _normalise_(x: Tensor, eps: float, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    """Instance normalisation in place: each (tile, channel) to mean 0 and variance 1, then the affine part.

    Centred first, then the variance of the centred values (no cancellation however far the mean is
    from zero), summed band by band without a full-size temporary.
    """
    n = x.shape[-2] * x.shape[-1]
    x.sub_((_row_sums(x) / n).float()[..., None, None])
    scale = (_row_sums(x, square=True) / n + eps).rsqrt().float()
    if weight is not None:
        scale = scale * weight
    x.mul_(scale[..., None, None])
    return x.add_(bias[:, None, None]) if bias is not None else x


def _buffers(decoder: nn.Module, like: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The decoder's three full-resolution buffers for ``shape``: kept while calls share shape, device, dtype
    and inference mode (a tensor made in ``torch.inference_mode`` cannot be written outside it)."""
    kept = getattr(decoder, "_full_resolution", None)
    same = kept is not None and (kept[0].shape, kept[0].device, kept[0].dtype) == (shape, like.device, like.dtype)
    if not same or kept[0].is_inference() != torch.is_inference_mode_enabled():
        decoder._full_resolution = None  # freed before the new ones are made
        kept = tuple(like.new_empty(shape) for _ in range(3))
        decoder._full_resolution = kept
    return kept


def decode_tail(decoder: nn.Module, z3: Tensor, x8: Tensor) -> Tensor:
    """The maps (B, 3, 2h, 2w) from the third skip tensor ``z3`` and the decoder levels' output ``x8`` (h x w).

    deconv4 (the last skip tensor), deconv_out, decoder_head, out_conv and the sigmoid of an
    :class:`~tilesam.models.unetr.InstanceDecoder` in eval mode; the buffers stay with ``decoder``.
    """
    batch, channels, height, width = x8.shape
    up, skip, head = _buffers(decoder, x8, (batch, channels, 2 * height, 2 * width))
    sampler, conv, tile_norm, _ = decoder.deconv4.block
    _upsample_rows(sampler, z3, up)
    _conv3x3_rows(conv.block, (up,), skip)
    _normalise_(skip, tile_norm.eps, tile_norm.weight, tile_norm.bias).relu_()  # z0
    _upsample_rows(decoder.deconv_out, x8, up)
    norm1, conv1, _, norm2, conv2, _ = decoder.decoder_head.block
    _normalise_(up, norm1.eps)  # the norm of the concatenation, channel by channel
    _normalise_(skip, norm1.eps)
    _conv3x3_rows(conv1, (up, skip), head, then=torch.relu_)
    _normalise_(head, norm2.eps)
    maps = x8.new_empty((batch, decoder.out_conv.out_channels, 2 * height, 2 * width))
    _conv3x3_rows(conv2, (head,), maps, then=lambda y: torch.sigmoid(decoder.out_conv(y.relu_())))
    return maps
