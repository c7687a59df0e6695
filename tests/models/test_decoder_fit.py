"""The fitted-decoder test helper: its maps hold the image's objects, and its checkpoint is micro-sam's format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.segmentation import find_boundaries

from helpers.decoder_fit import demo_image, fit_decoder
from tilesam.models import load_decoder_state, read_checkpoint
from tilesam.models.unetr import load_decoder


@pytest.fixture(scope="module")
def cache_dir(request):
    """pytest's cache: a rerun loads the fitted decoder instead of training it again (minutes on 2 busy cores)."""
    return request.config.cache.mkdir("decoder_fit")


@pytest.fixture(scope="module")
def fitted(lite_medsam, tmp_path_factory, cache_dir):
    image, labels = demo_image()
    out = tmp_path_factory.mktemp("fit") / "fitted.pt"
    return fit_decoder(lite_medsam, image, labels, out=out, cache_dir=cache_dir), labels


def test_fitted_maps_hold_the_objects(fitted):
    fit, labels = fitted
    maps = fit.maps()
    assert maps.shape == (3, *labels.shape)
    inside = labels > 0
    # every object is foreground on most of its pixels (measured: at least 71 % per object with 2
    # threads, 85 % with 1), the background almost nowhere (0.3 %)
    per_object = [(maps[0][labels == i] > 0.5).mean() for i in range(1, labels.max() + 1)]
    assert min(per_object) > 0.5, per_object
    assert (maps[0][~inside] > 0.5).mean() < 0.1
    # both distance maps are lower at the objects' centres than at their boundaries (where seeds grow from)
    for channel in (1, 2):
        minima = [maps[channel][labels == i].min() for i in range(1, labels.max() + 1)]
        assert np.median(minima) < np.median(maps[channel][find_boundaries(labels, mode="inner")])
    assert np.mean(fit.losses[-20:]) < np.mean(fit.losses[:20])  # measured 0.71 -> 0.20 (first and last 10 steps)


def test_checkpoint_is_micro_sams_format_and_loads(fitted, lite_medsam):
    fit, _ = fitted
    checkpoint = read_checkpoint(fit.checkpoint)
    assert checkpoint.architecture == "lite_medsam_tinyvit"
    assert checkpoint.model_state.keys() == lite_medsam.state_dict().keys()
    state = load_decoder_state(fit.checkpoint)
    decoder = load_decoder(state, source=str(fit.checkpoint), upscale=4)
    for key, value in fit.decoder.state_dict().items():
        assert torch.equal(decoder.state_dict()[key], value), key


def test_the_cache_gives_the_same_decoder(fitted, lite_medsam, cache_dir):
    fit, labels = fitted
    image, _ = demo_image()
    again = fit_decoder(lite_medsam, image, labels, cache_dir=cache_dir)
    assert again.losses == pytest.approx(fit.losses, abs=1e-6)
    for key, value in fit.decoder.state_dict().items():
        assert torch.equal(again.decoder.state_dict()[key], value), key
    assert len(list(cache_dir.glob("*.pt"))) >= 1
