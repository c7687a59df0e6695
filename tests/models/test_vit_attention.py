"""FusedAttention against segment-anything's Attention: same outputs and gradients, up to float rounding."""

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention, ImageEncoderViT, PatchEmbed

from tilesam.models import vit_attention
from tilesam.models.load import build_sam
from tilesam.models.vit_attention import ContiguousPatchEmbed, FusedAttention, fuse_attention


def _pair(rel_pos: bool, size: int) -> tuple[Attention, FusedAttention]:
    torch.manual_seed(0)
    reference = Attention(64, num_heads=4, qkv_bias=True, use_rel_pos=rel_pos, input_size=(size, size))
    if rel_pos:  # segment-anything starts them at zero, which would hide a wrong bias
        torch.nn.init.normal_(reference.rel_pos_h)
        torch.nn.init.normal_(reference.rel_pos_w)
    fused = Attention(64, num_heads=4, qkv_bias=True, use_rel_pos=rel_pos, input_size=(size, size))
    fused.load_state_dict(reference.state_dict())
    return reference, fuse_attention(fused)


def _outputs_and_grads(module: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.square().sum().backward()
    return [out.detach(), x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("bias_bytes", [1, 2**30], ids=["one-head-a-call", "all-heads-a-call"])
@pytest.mark.parametrize("rel_pos, batch, size", [(True, 3, 5), (True, 1, 12), (False, 2, 6)])
def test_fused_attention_matches_segment_anything(monkeypatch, bias_bytes, rel_pos, batch, size):
    monkeypatch.setattr(vit_attention, "BIAS_BYTES", bias_bytes)
    reference, fused = _pair(rel_pos, size)
    x = torch.randn(batch, size, size, 64, generator=torch.Generator().manual_seed(1))
    for want, got in zip(_outputs_and_grads(reference, x), _outputs_and_grads(fused, x), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_small_encoder_with_windows_and_global_blocks_gives_the_same_embedding():
    torch.manual_seed(0)
    encoder = ImageEncoderViT(
        img_size=128,
        patch_size=16,
        embed_dim=64,
        depth=3,
        num_heads=4,
        out_chans=32,
        use_rel_pos=True,
        window_size=3,
        global_attn_indexes=(1,),
    ).eval()
    for block in encoder.blocks:
        torch.nn.init.normal_(block.attn.rel_pos_h)
        torch.nn.init.normal_(block.attn.rel_pos_w)
    x = torch.randn(2, 3, 128, 128)
    with torch.inference_mode():
        want = encoder(x)
        got = fuse_attention(encoder)(x)
        back = fuse_attention(encoder, fused=False)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(back, want)


def test_built_vit_encoders_use_the_fused_attention_with_unchanged_weights():
    sam = build_sam("vit_b")
    kinds = {type(block.attn) for block in sam.image_encoder.blocks}
    assert kinds == {FusedAttention} and type(sam.image_encoder.patch_embed) is ContiguousPatchEmbed
    fuse_attention(sam.image_encoder, fused=False)
    assert {type(block.attn) for block in sam.image_encoder.blocks} == {Attention}
    assert type(sam.image_encoder.patch_embed) is PatchEmbed
