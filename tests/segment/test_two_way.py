"""tilesam.segment.two_way against segment-anything's MaskDecoder: the same function, up to float rounding."""

from __future__ import annotations

import copy

import pytest
import torch

from tilesam.models.load import _construct
from tilesam.segment import two_way


@pytest.fixture(scope="module")
def random_vit_b():
    """A vit_b whose mask decoder weights are random and far from their initialisation (seed 0)."""
    torch.manual_seed(0)
    sam = _construct("vit_b", None, None, None, meta_encoder=True).eval()
    with torch.no_grad():
        for p in sam.mask_decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return sam


def _prompts(sam, kind: str, n: int = 5):
    torch.manual_seed(1)
    side = sam.image_encoder.img_size
    if kind == "boxes":
        corner = torch.rand(n, 2) * side * 0.7
        boxes = torch.cat([corner, corner + 8 + torch.rand(n, 2) * side * 0.3], dim=1)
        return sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    points = torch.rand(n, 3, 2) * side  # three points each, positive and negative
    labels = torch.tensor([[1, 0, 1]] * n)
    return sam.prompt_encoder(points=(points, labels), boxes=None, masks=None)


def _reference(sam, embedding, sparse, dense):
    """segment-anything's transformer outputs and all four mask logits, one prompt's image per prompt."""
    decoder = sam.mask_decoder
    n = sparse.shape[0]
    tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((tokens.unsqueeze(0).expand(n, -1, -1), sparse), dim=1)
    pe = sam.prompt_encoder.get_dense_pe()
    hs, keys = decoder.transformer(embedding.expand(n, -1, -1, -1) + dense, pe.expand(n, -1, -1, -1), tokens)
    masks, _ = decoder.predict_masks(embedding, pe, sparse, dense)
    return tokens, hs, keys, masks


@pytest.mark.parametrize("kind", ["points", "boxes"])
@pytest.mark.parametrize("which_model", ["random vit_b", "lite_medsam"])
@torch.inference_mode()
def test_transformer_and_mask_head_equal_sams(request, which_model, kind):
    sam = request.getfixturevalue("random_vit_b" if which_model == "random vit_b" else "lite_medsam")
    torch.manual_seed(2)
    grid = sam.prompt_encoder.image_embedding_size
    embedding = torch.randn(1, 256, *grid)
    sparse, dense = _prompts(sam, kind)
    tokens, hs_ref, keys_ref, masks_ref = _reference(sam, embedding, sparse, dense)
    hs, keys = two_way.run_transformer(
        sam.mask_decoder.transformer, embedding + dense[:1], sam.prompt_encoder.get_dense_pe(), tokens
    )
    torch.testing.assert_close(hs, hs_ref, rtol=0, atol=2e-5)
    torch.testing.assert_close(keys, keys_ref, rtol=0, atol=2e-5)
    mask_tokens = hs[:, 1 : 1 + sam.mask_decoder.num_mask_tokens]
    for which in (slice(0, 1), slice(1, None), slice(None)):
        logits = two_way.mask_logits(sam.mask_decoder, mask_tokens, keys, grid, which)
        torch.testing.assert_close(logits, masks_ref[:, which], rtol=0, atol=2e-5)
    assert masks_ref.abs().max() > 0.1 and hs_ref.std() > 0.1  # outputs far from zero: the check has teeth


@torch.inference_mode()
def test_another_upscaling_head_runs_as_its_module(random_vit_b):
    """A head that is not SAM's transposed-conv stack is applied as the module it is."""
    decoder = random_vit_b.mask_decoder
    torch.manual_seed(3)
    image_tokens = torch.randn(2, 64 * 64, 256)
    mask_tokens = torch.randn(2, decoder.num_mask_tokens, 256)
    sams = two_way.mask_logits(decoder, mask_tokens, image_tokens, (64, 64), slice(None))
    original = decoder.output_upscaling
    other_head = copy.deepcopy(original)
    other_head[1].__class__ = type("OtherNorm", (type(original[1]),), {})  # same function, not SAM's class
    assert two_way._is_sams_upscaling(original) and not two_way._is_sams_upscaling(other_head)
    try:
        decoder.output_upscaling = other_head
        other = two_way.mask_logits(decoder, mask_tokens, image_tokens, (64, 64), slice(None))
    finally:
        decoder.output_upscaling = original
    torch.testing.assert_close(other, sams, rtol=0, atol=2e-5)
