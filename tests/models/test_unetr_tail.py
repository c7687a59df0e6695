"""The decoder's full-resolution layers in bands into kept buffers: the maps of the plain forward pass.

The plain layers (``InstanceDecoder.forward`` with gradients on, as in training) are the reference;
torch-em's UNETR is checked against the inference path in ``test_unetr.py``.
"""

import pytest
import torch

from tilesam.models import unetr_tail
from tilesam.models.unetr import InstanceDecoder


def decoder(conv_transpose: bool, upscale: int, seed: int = 0) -> InstanceDecoder:
    torch.manual_seed(seed)
    model = InstanceDecoder(conv_transpose=conv_transpose, upscale=upscale).eval()
    for module in model.modules():  # affine tile norms that are not the identity
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model


def both(model: InstanceDecoder, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        plain = model(embedding).detach()
    with torch.inference_mode():
        return plain, model(embedding)


@pytest.mark.parametrize(
    ("conv_transpose", "upscale", "shape"),
    [(False, 16, (2, 256, 6, 10)), (True, 16, (1, 256, 5, 7)), (False, 4, (2, 256, 16, 12))],
    ids=["bilinear-16x-batch", "conv-transpose-16x", "bilinear-4x"],
)
def test_bands_give_the_maps_of_the_whole_layers(monkeypatch, conv_transpose, upscale, shape):
    # bands of 8 rows (the least): many bands, a short last one, and the top and bottom edges
    monkeypatch.setattr(unetr_tail, "BAND_BYTES", 1)
    model = decoder(conv_transpose, upscale)
    embedding = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
    plain, banded = both(model, embedding)
    assert banded.shape == plain.shape == (shape[0], 3, upscale * shape[2], upscale * shape[3])
    assert plain.std() > 1e-2  # maps that vary, not a constant that would match anything
    torch.testing.assert_close(banded, plain, rtol=0, atol=1e-6)


def test_normalising_keeps_the_spread_of_values_far_from_zero(monkeypatch):
    # a mean 1e5 times the spread: a variance taken as E[x^2] - E[x]^2 would cancel to noise (or below zero)
    monkeypatch.setattr(unetr_tail, "BAND_BYTES", 1)
    x = torch.randn(2, 3, 40, 24, generator=torch.Generator().manual_seed(3)) * 0.01 + 1000
    weight, bias = torch.tensor([0.5, 1.0, 2.0]), torch.tensor([0.0, -1.0, 3.0])
    expected = torch.nn.functional.instance_norm(x.double(), weight=weight.double(), bias=bias.double(), eps=1e-9)
    got = unetr_tail._normalise_(x.clone(), 1e-9, weight, bias)
    # float32 holds 1000 to 6e-5, 0.6 % of the spread: the tolerance is that, scaled by the weight
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=2e-2)
    torch.testing.assert_close(got.std(dim=(-2, -1)), weight.expand(2, 3), rtol=2e-2, atol=0)


def test_buffers_are_kept_for_one_shape_and_replaced_for_another():
    model = decoder(False, 16)
    with torch.inference_mode():
        model(torch.randn(1, 256, 4, 4))
        first = [b.data_ptr() for b in model._full_resolution]
        model(torch.randn(1, 256, 4, 4))
        assert [b.data_ptr() for b in model._full_resolution] == first
        model(torch.randn(2, 256, 4, 4))
        assert model._full_resolution[0].shape == (2, 64, 64, 64)


def test_buffers_made_in_inference_mode_are_replaced_outside_it():
    model = decoder(False, 16)
    embedding = torch.randn(1, 256, 4, 4)
    with torch.inference_mode():
        first = model(embedding)
    with torch.no_grad():  # an inference tensor cannot be written here: new buffers, the same maps
        torch.testing.assert_close(model(embedding), first, rtol=0, atol=0)
        assert not model._full_resolution[0].is_inference()
    with torch.inference_mode():
        torch.testing.assert_close(model(embedding), first, rtol=0, atol=0)


def test_training_runs_the_plain_layers_with_gradients():
    model = decoder(False, 4).train()
    out = model(torch.randn(2, 256, 8, 8))
    out.mean().backward()
    assert model.out_conv.weight.grad is not None
    assert getattr(model, "_full_resolution", None) is None
