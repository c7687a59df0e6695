"""SAM's ViT attention through torch's fused kernel, with the relative-position bias a few heads at a time.

segment-anything's `Attention` builds the whole attention matrix, adds the decomposed
relative-position terms to it and softmaxes it: in vit_b's four global blocks that is 12 heads x
4096 x 4096 floats (805 MB) several times over. Here the same arithmetic goes through
`F.scaled_dot_product_attention` with the bias as its mask, and the bias is built only for as many
heads as fit in `BIAS_BYTES`, so the large matrices are never all held at once. On a CPU, one
thread, a vit_b tile encodes 1.2x as fast in 43 % of the memory at batch 1, 2x as fast in 19 % at
batch 4 (`benchmarks/encoder_speed.py --attention fused segment-anything`; docs/benchmarks.md).
Outputs and gradients differ from segment-anything's by float rounding (~5e-6), so finetuning runs
through it as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

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
    return (along_h[..., :, None] + along_w[..., None, :]).view(batch, heads, tokens, tokens).to(q.dtype)


def fuse_attention(encoder: torch.nn.Module, fused: bool = True) -> torch.nn.Module:
    """Switch `encoder`'s ViT attention to :class:`FusedAttention` (or back, `fused=False`), in place."""
    for module in encoder.modules():
        if isinstance(module, Attention):
            module.__class__ = FusedAttention if fused else Attention
    return encoder
