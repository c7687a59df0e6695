"""The instance decoder against torch-em's UNETR, built the way micro-sam builds it, and its strict loading.

The oracle is micro-sam's ``DecoderAdapter`` path: torch-em's UNETR submodules run on a precomputed
embedding, then ``UNETR.postprocess_masks``. The SAM image encoder is a small segment_anything
``ImageEncoderViT`` (64-pixel input, 4 x 4 embedding of 256 channels): the decoder sees only the
embedding, and the small size keeps each forward to about a second on 2 cores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT

from tilesam.models.unetr import (
    DecoderError,
    InstanceDecoder,
    decode_maps,
    is_conv_transpose_state,
    load_decoder,
    postprocess_maps,
)

IMG_SIZE = 64  # encoder input: a 4 x 4 embedding, decoder output 64 x 64
INPUT_SIZE = (64, 48)  # an 80 x 60 tile resized so its longest side is 64
ORIGINAL_SIZE = (80, 60)


@pytest.fixture(scope="module")
def torch_em_unetr():
    return pytest.importorskip(
        "torch_em.model.unetr", reason="torch-em (a test dependency: pip install -e '.[test]') is the oracle"
    ).UNETR


def micro_sam_unetr(unetr_class, conv_transpose: bool, seed: int) -> torch.nn.Module:
    """torch-em's UNETR as micro-sam's ``get_unetr`` builds it, random weights and random BatchNorm statistics.

    In training mode, as micro-sam 1.8 runs it (it never calls ``eval()``): its BatchNorm layers use
    the statistics of the decoded tile, not the running ones.
    """
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=IMG_SIZE, patch_size=16, embed_dim=32, depth=1, num_heads=1, out_chans=256, global_attn_indexes=()
    )
    unetr = unetr_class(
        backbone="sam",
        encoder=encoder,
        out_channels=3,
        use_sam_stats=True,
        final_activation="Sigmoid",
        use_skip_connection=False,
        resize_input=True,
        use_conv_transpose=conv_transpose,
    )
    for module in unetr.modules():  # running statistics that would change the maps if they were used
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return unetr.train()


@torch.no_grad()
def adapter_maps(unetr, embedding: torch.Tensor, input_size, original_size) -> np.ndarray:
    """micro-sam's ``DecoderAdapter.forward``: the UNETR decoder on a stored embedding, then torch-em's resizing."""
    z9 = unetr.deconv1(embedding)
    z6 = unetr.deconv2(z9)
    z3 = unetr.deconv3(z6)
    z0 = unetr.deconv4(z3)
    x = unetr.decoder(unetr.base(embedding), encoder_inputs=[z9, z6, z3])
    x = unetr.decoder_head(torch.cat([unetr.deconv_out(x), z0], dim=1))
    x = unetr.final_activation(unetr.out_conv(x))
    return unetr.postprocess_masks(x, input_size, original_size).numpy()


def decoder_state(unetr) -> dict[str, torch.Tensor]:
    """micro-sam's decoder-state format: every UNETR key that does not start with ``encoder``."""
    return {k: v for k, v in unetr.state_dict().items() if not k.startswith("encoder")}


@pytest.mark.parametrize("conv_transpose", [True, False], ids=["conv_transpose", "bilinear"])
def test_equals_torch_em_unetr_on_an_embedding(torch_em_unetr, tmp_path, conv_transpose):
    unetr = micro_sam_unetr(torch_em_unetr, conv_transpose, seed=1)
    path = tmp_path / "decoder.pt"
    torch.save(decoder_state(unetr), path)
    state = torch.load(path, map_location="cpu", weights_only=True)

    decoder = load_decoder(state, source=str(path))
    assert decoder.conv_transpose is conv_transpose and is_conv_transpose_state(state) is conv_transpose
    assert set(decoder.state_dict()) == set(state)
    assert not decoder.training

    embeddings = torch.randn(2, 256, 4, 4, generator=torch.Generator().manual_seed(2))
    expected = np.concatenate([adapter_maps(unetr, e[None], INPUT_SIZE, ORIGINAL_SIZE) for e in embeddings])
    got = decode_maps(decoder, embeddings, INPUT_SIZE, ORIGINAL_SIZE)  # two tiles in one batch
    assert got.dtype == np.float32 and got.shape == (2, 3, *ORIGINAL_SIZE)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got.std() > 1e-3  # not a constant map that would match anything
    with torch.no_grad():  # the running statistics would give other maps: they are not what micro-sam uses
        unetr.eval()
        assert np.abs(adapter_maps(unetr, embeddings[:1], INPUT_SIZE, ORIGINAL_SIZE) - got[:1]).max() > 1e-2


def test_model_size_resizes_first_like_torch_em(torch_em_unetr):
    """A 256-pixel model (LiteMedSAM) gives 1024-pixel maps from a 64 x 64 embedding: resized to 256 first."""
    unetr = micro_sam_unetr(torch_em_unetr, False, seed=3)  # its encoder's input side is 64
    maps = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(4))  # 2x the encoder's 64 pixels
    expected = unetr.postprocess_masks(maps, (64, 40), (90, 57)).numpy()
    got = postprocess_maps(maps, (64, 40), (90, 57), model_size=IMG_SIZE).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert got.shape == (2, 3, 90, 57)


def test_batches_give_the_maps_of_single_tiles():
    torch.manual_seed(5)
    decoder = InstanceDecoder(conv_transpose=True).eval()
    embeddings = torch.randn(3, 256, 2, 2)
    whole = decode_maps(decoder, embeddings, (32, 25), (32, 25), batch_size=3)
    one_by_one = decode_maps(decoder, embeddings, (32, 25), (32, 25), batch_size=2)
    np.testing.assert_allclose(whole, one_by_one, rtol=0, atol=1e-5)
    assert not np.allclose(whole[0], whole[1])  # different tiles, different maps
    assert ((whole >= 0) & (whole <= 1)).all()


def test_forward_is_16x_the_embedding_and_rejects_other_widths():
    decoder = InstanceDecoder().eval()
    with torch.no_grad():
        assert decoder(torch.zeros(1, 256, 2, 3)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match=r"\[B, 256, h, w\].*\(1, 128, 4, 4\)"):
        decoder(torch.zeros(1, 128, 4, 4))


def test_upscale_4_is_the_same_layers_ending_at_a_quarter_of_the_size(lite_medsam):
    """LiteMedSAM (64 tokens for 256 pixels): maps at its input resolution from micro-sam's state keys."""
    from tilesam.models.unetr import decoder_upscale

    assert decoder_upscale(lite_medsam) == 4
    torch.manual_seed(2)
    full = InstanceDecoder().eval()
    quarter = load_decoder(full.state_dict(), upscale=4)
    with torch.no_grad():
        embedding = torch.randn(1, 256, 4, 4)
        assert quarter(embedding).shape == (1, 3, 16, 16) and full(embedding).shape == (1, 3, 64, 64)
        assert not torch.allclose(quarter(embedding), F.interpolate(full(embedding), 16, mode="area"), atol=1e-2)
    with pytest.raises(DecoderError, match=r"t\.pt: a transposed-conv decoder upscales 16x.*needs 4x"):
        load_decoder(_state(conv_transpose=True), source="t.pt", upscale=4)
    with pytest.raises(ValueError, match="upscale must be 2, 4, 8 or 16"):
        InstanceDecoder(upscale=3)


def _state(conv_transpose: bool = False, embed_dim: int = 256) -> dict[str, torch.Tensor]:
    return InstanceDecoder(conv_transpose=conv_transpose, embed_dim=embed_dim).state_dict()


def test_missing_and_unexpected_keys_name_the_source():
    state = _state()
    del state["out_conv.weight"]
    state["encoder.neck.0.weight"] = torch.zeros(1)
    with pytest.raises(DecoderError, match=r"vit_b_lm_decoder\.pt.*1 missing keys \['out_conv.weight'\]") as info:
        load_decoder(state, source="vit_b_lm_decoder.pt")
    assert "1 unexpected keys ['encoder.neck.0.weight']" in str(info.value)
    assert "start with 'encoder'" in str(info.value)


def test_a_decoder_of_another_embedding_width_is_a_shape_mismatch():
    with pytest.raises(DecoderError, match=r"my\.pt.*shape mismatches.*\(512, 128, 3, 3\) vs \(512, 256, 3, 3\)"):
        load_decoder(_state(embed_dim=128), source="my.pt")


def test_upsampler_keys_decide_the_variant_and_mixed_states_fail():
    assert load_decoder(_state(conv_transpose=True)).conv_transpose
    assert not load_decoder(_state(conv_transpose=False)).conv_transpose
    mixed = _state(conv_transpose=True)
    mixed.update({k: v for k, v in _state(conv_transpose=False).items() if k.startswith("deconv1.block.0")})
    with pytest.raises(
        DecoderError, match=r"mixed\.pt.*transposed-conv variant.*unexpected keys \['deconv1.block.0.conv"
    ):
        load_decoder(mixed, source="mixed.pt")


def test_a_training_checkpoint_or_non_mapping_is_refused_by_name():
    with pytest.raises(DecoderError, match=r"ckpt\.pt: this is a training checkpoint.*pass its 'decoder_state'"):
        load_decoder({"model_state": {}, "decoder_state": _state()}, source="ckpt.pt")
    with pytest.raises(DecoderError, match=r"x\.pt: a decoder state must be a mapping.*list"):
        load_decoder([], source="x.pt")
    state = _state()
    state["base.block.1.bias"] = np.zeros(512)
    with pytest.raises(DecoderError, match=r"y\.pt.*base\.block\.1\.bias None vs \(512,\)"):
        load_decoder(state, source="y.pt")
