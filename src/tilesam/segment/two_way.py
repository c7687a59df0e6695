"""SAM's mask decoder for many prompts on one image: the same function, arranged for a CPU.

segment-anything's ``TwoWayTransformer`` projects the 4096 image tokens of every prompt to queries,
keys and values (4096 x 128 each) and back (4096 x 256), although each prompt has only a handful of
tokens (7 for a point or a box). Matrix products associate, so the small side can be projected
instead:

* token-to-image attention: the logits ``q_h . (W_k,h x + b_k,h)`` are ``(W_k,h^T q_h) . x`` plus a
  term constant along the image tokens, which the softmax removes; the output ``P (X W_v,h^T + b)``
  is ``(P X) W_v,h^T + b`` (each row of ``P`` sums to one);
* image-to-token attention: the logits ``(W_q,h x + b_q,h) . k_h`` are ``x . (W_q,h^T k_h)`` plus
  ``b_q,h . k_h``; the output projection ``sum_h P_h V_h W_o,h^T`` is ``P`` against ``V_h W_o,h^T``,
  a few rows per head;
* the first block's image side does not depend on the prompt until its image-to-token attention, so
  its projections are computed once per batch;
* the mask head's 2x2 stride-2 transposed convolutions map each token to its own 2x2 block: matrix
  products on the token layout, with ``LayerNorm2d`` as a layer norm over the channels, and only the
  mask tokens asked for are applied.

The transformer then costs 0.94 GFLOP a prompt instead of 2.80 (torch's FlopCounterMode, 16 prompts a
batch; docs/benchmarks.md), without per-prompt 4096 x 128 intermediates. The
results are SAM's up to float rounding (``tests/segment/test_two_way.py``: against segment-anything's
``MaskDecoder`` on real and random weights), as SAM's own results differ across batch sizes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["mask_logits", "run_transformer"]


def _linear_rows(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` for (1, N, C) image tokens that may be a permuted view (copied contiguous first)."""
    out = x.reshape(-1, x.shape[-1]).contiguous() @ linear.weight.t()
    out.add_(linear.bias)
    return out.view(*x.shape[:-1], out.shape[-1])


def _softmax_over_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim, a handful of prompt tokens: torch's kernel is 4x slower on such short rows."""
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
    return weights.div_(weights.sum(dim=-1, keepdim=True))


def _per_head(linear: nn.Linear, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A projection's weight as (heads, head_dim, in) and bias as (heads, head_dim): SAM's head split."""
    weight = linear.weight
    return weight.view(heads, weight.shape[0] // heads, weight.shape[1]), linear.bias.view(heads, -1)


def _token_to_image(attention: nn.Module, tokens: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
    """SAM's ``Attention(q=tokens, k=keys, v=values)`` for per-prompt image keys/values (B, N, C)."""
    b, t, _ = tokens.shape
    heads = attention.num_heads
    q = attention.q_proj(tokens).view(b, t, heads, -1)
    w_k, _ = _per_head(attention.k_proj, heads)
    w_v, b_v = _per_head(attention.v_proj, heads)
    # the key bias adds q_h . b_k,h to every logit of a row: the softmax removes it
    projected = torch.einsum("bthd,hdc->bhtc", q, w_k).reshape(b, heads * t, -1) / math.sqrt(q.shape[-1])
    weights = torch.softmax(projected @ keys.transpose(1, 2), dim=-1)  # (B, heads * T, N)
    pooled = (weights @ values).view(b, heads, t, -1)  # (B, heads, T, C)
    out = torch.einsum("bhtc,hdc->bthd", pooled, w_v) + b_v
    return attention.out_proj(out.reshape(b, t, -1))


def _image_to_token_logits(attention: nn.Module, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Scaled logits (B, N, heads, T) of SAM's ``Attention(q=image, k=tokens, ...)`` for per-prompt image tokens."""
    b, t, _ = tokens.shape
    heads = attention.num_heads
    k = attention.k_proj(tokens).view(b, t, heads, -1)
    w_q, b_q = _per_head(attention.q_proj, heads)
    scale = 1 / math.sqrt(k.shape[-1])
    g = torch.einsum("bthd,hdc->bcht", k, w_q).reshape(b, -1, heads * t) * scale
    g0 = torch.einsum("bthd,hd->bht", k, b_q).reshape(b, 1, heads * t) * scale
    return torch.baddbmm(g0, image, g).view(b, image.shape[1], heads, t)


def _image_to_token_out(attention: nn.Module, weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``out_proj`` of SAM's image-to-token attention output, from softmaxed weights (B, N, heads, T)."""
    b, n, heads, t = weights.shape
    v = attention.v_proj(tokens).view(b, t, heads, -1)
    w_o = attention.out_proj.weight  # (C, heads * head_dim)
    per_token = torch.einsum("bthd,chd->bhtc", v, w_o.view(w_o.shape[0], heads, -1)).reshape(b, heads * t, -1)
    return torch.baddbmm(attention.out_proj.bias, weights.reshape(b, n, heads * t), per_token)


def _self_attention(block: nn.Module, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """A block's normalised self-attention over the prompt tokens (SAM's first block has no residual)."""
    if block.skip_first_layer_pe:
        return block.norm1(block.self_attn(q=queries, k=queries, v=queries))
    q = queries + tokens
    return block.norm1(queries + block.self_attn(q=q, k=q, v=queries))


def _first_block(block: nn.Module, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
    """The first ``TwoWayAttentionBlock``, its image side computed once for the batch.

    ``image``/``image_pe`` are (1, N, C), ``tokens`` (B, T, C); returns the queries and the image tokens (B, N, C).
    """
    b = tokens.shape[0]
    queries = _self_attention(block, tokens, tokens)
    image_keys = image + image_pe
    t2i = block.cross_attn_token_to_image
    heads = t2i.num_heads
    k = _linear_rows(t2i.k_proj, image_keys)[0]  # (N, D): one projection for the batch
    v = _linear_rows(t2i.v_proj, image)[0]
    q = t2i.q_proj(queries + tokens).view(b, -1, heads, k.shape[-1] // heads)
    logits = torch.einsum("bthd,nhd->bhtn", q, k.view(k.shape[0], heads, -1)) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhtn,nhd->bthd", torch.softmax(logits, dim=-1), v.view(v.shape[0], heads, -1))
    queries = block.norm2(queries + t2i.out_proj(out.reshape(b, out.shape[1], -1)))
    queries = block.norm3(queries + block.mlp(queries))
    i2t = block.cross_attn_image_to_token
    q = _linear_rows(i2t.q_proj, image_keys)[0]
    k = i2t.k_proj(queries + tokens).view(b, -1, heads, q.shape[-1] // heads)
    logits = torch.einsum("nhd,bthd->bnht", q.view(q.shape[0], heads, -1), k) / math.sqrt(k.shape[-1])
    out = _image_to_token_out(i2t, _softmax_over_tokens(logits), queries)
    return queries, block.norm4(out.add_(image))


def _block(block: nn.Module, queries: torch.Tensor, keys: torch.Tensor, tokens: torch.Tensor, image_pe: torch.Tensor):
    """A later ``TwoWayAttentionBlock``, its image tokens (B, N, C) per prompt."""
    queries = _self_attention(block, queries, tokens)
    keys_pe = keys + image_pe  # SAM adds it twice, for both cross attentions
    t2i = block.cross_attn_token_to_image
    queries = block.norm2(queries + _token_to_image(t2i, queries + tokens, keys_pe, keys))
    queries = block.norm3(queries + block.mlp(queries))
    i2t = block.cross_attn_image_to_token
    weights = _softmax_over_tokens(_image_to_token_logits(i2t, keys_pe, queries + tokens))
    return queries, block.norm4(_image_to_token_out(i2t, weights, queries).add_(keys))


def run_transformer(transformer: nn.Module, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
    """``TwoWayTransformer.forward`` for one image (1, C, h, w), its positional encoding and B prompts' tokens.

    Returns the output tokens (B, T, C) and the image tokens (B, h*w, C).
    """
    image = image.flatten(2).permute(0, 2, 1)
    image_pe = image_pe.flatten(2).permute(0, 2, 1).contiguous()
    layers = list(transformer.layers)
    queries, keys = _first_block(layers[0], image, image_pe, tokens)
    for layer in layers[1:]:
        queries, keys = _block(layer, queries, keys, tokens, image_pe)
    final = transformer.final_attn_token_to_image
    attn_out = _token_to_image(final, queries + tokens, keys + image_pe, keys)
    return transformer.norm_final_attn(queries + attn_out), keys


def _as_matrix(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2x2 stride-2 transposed conv as (in, 4 * out) weights and bias, outputs ordered (dy, dx, channel)."""
    weight = conv.weight  # (in, out, 2, 2)
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1), conv.bias.repeat(4)


def _is_sams_upscaling(upscaling: nn.Module) -> bool:
    """SAM's ``output_upscaling``: transposed conv, LayerNorm2d, activation, transposed conv, activation."""
    parts = list(upscaling) if isinstance(upscaling, nn.Sequential) else []
    convs = parts[0::3] if len(parts) == 5 else []
    return (
        len(convs) == 2
        and all(isinstance(c, nn.ConvTranspose2d) and c.kernel_size == c.stride == (2, 2) for c in convs)
        and all(c.padding == (0, 0) and c.output_padding == (0, 0) and c.bias is not None for c in convs)
        and type(parts[1]).__name__ == "LayerNorm2d"
    )


def mask_logits(decoder: nn.Module, mask_tokens: torch.Tensor, image_tokens: torch.Tensor, grid_hw, which: slice):
    """Low-res mask logits (B, M, 4h, 4w) of the mask tokens ``which`` (of ``MaskDecoder.predict_masks``' head)."""
    b, n, c = image_tokens.shape
    h, w = grid_hw
    hyper = torch.stack(
        [mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)][which], dim=1
    )  # (B, M, C / 8)
    upscaling = decoder.output_upscaling
    if not _is_sams_upscaling(upscaling):  # another head: the module itself
        upscaled = upscaling(image_tokens.transpose(1, 2).reshape(b, c, h, w))
        return (hyper @ upscaled.flatten(2)).view(b, -1, *upscaled.shape[-2:])
    first, norm, act1, second, act2 = upscaling
    weight, bias = _as_matrix(first)
    x = torch.addmm(bias, image_tokens.reshape(-1, c), weight).view(-1, first.out_channels)  # a row per pixel
    x = act1(F.layer_norm(x, (first.out_channels,), norm.weight, norm.bias, norm.eps))
    weight, bias = _as_matrix(second)
    x = act2(torch.addmm(bias, x, weight)).view(b, -1, second.out_channels)  # (B, 16 N, C / 8)
    logits = x @ hyper.transpose(1, 2)  # (B, pixels, M); pixels ordered (y, x, dy1, dx1, dy2, dx2)
    m = logits.shape[-1]
    logits = logits.view(b, h, w, 2, 2, 2, 2, m).permute(0, 7, 1, 3, 5, 2, 4, 6)
    return logits.reshape(b, m, 4 * h, 4 * w)
