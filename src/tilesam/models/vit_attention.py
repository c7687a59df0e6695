"""SAM's ViT attention through torch's fused kernel, with the relative-position bias a few heads at a time.

segment-anything's `Attention` builds the whole attention matrix, adds the decomposed
relative-position terms to it and softmaxes it: in vit_b's four global blocks that is 12 heads x
4096 x 4096 floats (805 MB) several times over. Here the same arithmetic goes through
`F.scaled_dot_product_attention` with the bias as its mask, and the bias is built only for as many
heads as fit in `BIAS_BYTES`, so the large matrices are never all held at once. On a CPU, one
thread, with the patch embedding below, a vit_b tile encodes 1.7x as fast in a third of the memory
(`benchmarks/encoder_speed.py --attention fused segment-anything`; docs/benchmarks.md).
Outputs and gradients differ from segment-anything's by float rounding (~5e-6), so finetuning runs
through it as well. The patch embedding's output is made contiguous too (`ContiguousPatchEmbed`).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, PatchEmbed, get_rel_pos

#: at most this many bytes of bias per kernel call (one global vit_b head of one tile: 67 MB)
BIAS_BYTES = 128 * 2**20


class FusedAttention(Attention):
    """segment-anything's `Attention` (same weights, same state dict) computed with the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        tokens = height * width
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [batch, heads, tokens, head_dim]
        if not self.use_rel_pos:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            rel_h = get_rel_pos(height, height, self.rel_pos_h)
            rel_w = get_rel_pos(width, width, self.rel_pos_w)
            per_head = batch * tokens * tokens * q.element_size()
            step = max(1, min(self.num_heads, BIAS_BYTES // per_head))
            out = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[:, h : h + step],
                        k[:, h : h + step],
                        v[:, h : h + step],
                        attn_mask=_bias(q[:, h : h + step], rel_h, rel_w, height, width),
                    )
                    for h in range(0, self.num_heads, step)
                ],
                dim=1,
            )
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def _bias(q: torch.Tensor, rel_h: torch.Tensor, rel_w: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The decomposed relative-position term of SAM's attention logits for the heads in `q`."""
    batch, heads, tokens, dim = q.shape
    grid = q.reshape(batch, heads, height, width, dim)
    # einsum returns permuted views; a sum of those would follow their strides and the reshape would
    # copy the whole bias once more, so the (small) terms are made contiguous first
    along_h = torch.einsum("bnhwc,hkc->bnhwk", grid, rel_h).contiguous()
    along_w = torch.einsum("bnhwc,wkc->bnhwk", grid, rel_w).contiguous()
    if torch.is_grad_enabled() and (q.requires_grad or rel_h.requires_grad) or q.device.type != "cpu":
        bias = along_h[..., :, None] + along_w[..., None, :]
    else:  # CPU inference: into a reused tensor
        bias = torch.add(along_h[..., :, None], along_w[..., None, :], out=_scratch((*along_h.shape, width), q.dtype))
    return bias.view(batch, heads, tokens, tokens).to(q.dtype)


_SCRATCH = threading.local()


def _scratch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A per-thread tensor for the bias, one per shape (vit_b: a global and a windowed one, 180 MB).

    A fresh 134 MB tensor per call spends more time in page faults than in the sum (47 against 18 ms
    on one CPU thread), and an encoder makes 24 of them.
    """
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    if (shape, dtype) not in buffers:
        buffers[shape, dtype] = torch.empty(shape, dtype=dtype)
    return buffers[shape, dtype]


class ContiguousPatchEmbed(PatchEmbed):
    """segment-anything's `PatchEmbed` with its output in memory order.

    Its output is the convolution's (B, C, H, W) permuted to (B, H, W, C): a strided view. Every
    residual sum of every block follows that layout, so each of them and each copy in the blocks
    walks memory across the channels: one CPU thread encodes a vit_b tile 15 % faster from a
    contiguous start (7.7 against 9.0 s).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).contiguous()


def fuse_attention(encoder: torch.nn.Module, fused: bool = True) -> torch.nn.Module:
    """Switch `encoder`'s ViT attention to :class:`FusedAttention` and its patch embedding to
    :class:`ContiguousPatchEmbed` (or both back, `fused=False`), in place."""
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = FusedAttention if fused else Attention
        elif isinstance(module, PatchEmbed):
            module.__class__ = ContiguousPatchEmbed if fused else PatchEmbed
    return encoder
