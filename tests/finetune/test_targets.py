"""Decoder training targets and loss against torch-em's PerObjectDistanceTransform and DiceBasedDistanceLoss."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from tilesam.data.synthetic import demo_specs, make_labels
from tilesam.finetune.targets import batch_targets, decoder_loss, instance_targets

# a real dsb2018 image with 50 nuclei, several of them touching
DSB_NAME = "0a849e0eb15faa8a6d7329c3dd66aabe9a294cccb52ed30a90c8ca99092ae732"


@pytest.fixture(scope="module")
def torch_em_targets():
    label = pytest.importorskip(
        "torch_em.transform.label", reason="torch-em (a test dependency: pip install -e '.[test]') is the oracle"
    )
    return label.PerObjectDistanceTransform(
        distances=True, boundary_distances=True, directed_distances=False, foreground=True
    )


@pytest.fixture(scope="module")
def torch_em_loss():
    loss = pytest.importorskip("torch_em.loss", reason="torch-em (a test dependency) is the oracle")
    return loss.DiceBasedDistanceLoss(mask_distances_in_bg=True)


@pytest.fixture(scope="module")
def dsb_labels(shared_dir) -> np.ndarray:
    return tifffile.imread(shared_dir / "data" / "dsb2018" / "labels" / f"{DSB_NAME}.tif")


def odd_labels() -> np.ndarray:
    """Non-consecutive ids, a C shape whose centroid is outside it, one id in two parts, touching objects."""
    labels = np.zeros((48, 56), np.uint16)
    labels[5:25, 5:25] = 7
    labels[10:20, 10:25] = 0  # a C open to the right: centroid in the hole
    labels[30:40, 5:12] = 3
    labels[30:40, 30:36] = 3  # the same id twice, apart
    labels[30:44, 12:20] = 900  # touches the first part of 3
    labels[2, 50] = 12  # a single pixel
    return labels


def test_real_labels_equal_torch_em(torch_em_targets, dsb_labels):
    expected = torch_em_targets(dsb_labels)
    got = instance_targets(dsb_labels)
    assert got.dtype == np.float32 and got.shape == (3, *dsb_labels.shape)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("labels", [make_labels(demo_specs()["nuclei_small"]), odd_labels()], ids=["synthetic", "odd"])
def test_synthetic_and_odd_labels_equal_torch_em(torch_em_targets, labels):
    np.testing.assert_allclose(instance_targets(labels), torch_em_targets(labels), rtol=0, atol=1e-5)


def test_target_values_mean_what_the_decoder_learns():
    labels = np.zeros((40, 40), np.int32)
    labels[10:21, 10:21] = 5  # an 11 x 11 square centred on (15, 15)
    fg, centre, boundary = instance_targets(labels)
    inside = labels > 0
    np.testing.assert_array_equal(fg, inside)
    assert (centre[~inside] == 1).all() and (boundary[~inside] == 1).all()
    assert centre[15, 15] == 0 and boundary[15, 15] == 0  # centre and most interior point
    assert centre[10, 10] == pytest.approx(1, abs=1e-6)  # the corner is farthest from the centre
    assert boundary[10, 15] == pytest.approx(1, abs=1e-6)  # on the boundary
    assert 0 < boundary[13, 15] < boundary[11, 15] < 1  # grows towards the boundary


def test_a_c_shape_takes_its_most_interior_point_as_centre():
    fg, centre, boundary = instance_targets(odd_labels()[:26, :26])
    assert fg[14, 13] == 0  # the rounded centroid (14.5, 13.0) is in the hole
    y, x = np.unravel_index(np.argmin(np.where(fg > 0, centre, 2)), centre.shape)
    assert fg[y, x] == 1 and centre[y, x] == 0 and boundary[y, x] == 0  # the centre moved to the interior maximum


def test_bad_labels_are_refused():
    with pytest.raises(ValueError, match=r"2D label image.*\(2, 4, 4\)"):
        instance_targets(np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="integers.*float32"):
        instance_targets(np.zeros((4, 4), np.float32))


def test_loss_equals_torch_em(torch_em_loss, dsb_labels):
    target = batch_targets([dsb_labels, dsb_labels[::-1]])
    pred = torch.rand(target.shape, generator=torch.Generator().manual_seed(0))
    expected = torch_em_loss(pred, target)
    got = decoder_loss(pred, target)
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    assert got.item() > 0.5  # random maps are far from the targets


def test_loss_is_zero_at_the_targets_and_ignores_background_distances():
    target = batch_targets([odd_labels()])
    assert decoder_loss(target.clone(), target).item() == pytest.approx(0, abs=1e-6)
    pred = target.clone()
    pred[:, 1:][target[:, 0:1].expand(-1, 2, -1, -1) == 0] = 0.3  # background distances are masked out
    assert decoder_loss(pred, target).item() == pytest.approx(0, abs=1e-6)
    pred = target.clone().requires_grad_(True)
    wrong = pred * 0.5
    loss = decoder_loss(wrong, target)
    loss.backward()
    assert loss.item() > 0.1 and pred.grad.abs().sum() > 0


def test_loss_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(1, 3, 8, 8\) and \(1, 3, 8, 9\)"):
        decoder_loss(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
