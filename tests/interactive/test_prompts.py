"""Prompted evaluation: click placement, painting, the prompting loop, and the real model on real nuclei."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tilesam.interactive.prompts import (
    PADDING_LABEL,
    ObjectMasks,
    bounding_box,
    corrective_points,
    farthest_from_boundary,
    ground_truth_objects,
    iter_object_masks,
    prompt_objects,
)
from tilesam.metrics import segmentation_scores


def disk(shape, cy, cx, r) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def region(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask)


# --- clicks --------------------------------------------------------------------------------


def test_farthest_from_boundary_is_the_middle_of_the_region():
    mask = np.zeros((20, 30), dtype=bool)
    mask[3:10, 12:19] = True  # 7x7: a unique centre
    assert farthest_from_boundary(region(mask), mask.shape, np.random.default_rng(0)) == (6, 15)
    assert farthest_from_boundary(region(np.zeros((4, 4), bool)), (4, 4), np.random.default_rng(0)) is None


def test_window_border_counts_as_boundary():
    mask = np.zeros((5, 20), dtype=bool)
    mask[:, :5] = True  # touches the top, bottom and left border
    assert farthest_from_boundary(region(mask), mask.shape, np.random.default_rng(0)) == (2, 2)


def test_ties_are_broken_by_the_seed_reproducibly():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:6, 3:7] = True  # 4x4: four tied centre pixels
    picks = {seed: farthest_from_boundary(region(mask), mask.shape, np.random.default_rng(seed)) for seed in range(12)}
    assert set(picks.values()) <= {(3, 4), (3, 5), (4, 4), (4, 5)}
    assert len(set(picks.values())) > 1
    for seed, pick in picks.items():
        assert farthest_from_boundary(region(mask), mask.shape, np.random.default_rng(seed)) == pick


def test_corrective_points_lie_in_the_error_regions():
    shape = (40, 40)
    true = disk(shape, 20, 18, 8)
    pred = disk(shape, 20, 24, 8)  # misses the left of the object, spills over on the right
    for seed in range(5):
        positive, negative = corrective_points(true, pred, np.random.default_rng(seed))
        assert true[positive] and not pred[positive]
        assert pred[negative] and not true[negative]
        assert positive[1] < 18 < 24 < negative[1]


def test_corrective_points_go_to_the_thickest_error_blob():
    shape = (30, 30)
    true = np.zeros(shape, dtype=bool)
    true[5:25, 5:25] = True
    pred = true.copy()
    pred[5:25, 5] = False  # a one-pixel strip missed
    pred[15:25, 15:25] = False  # and a 10x10 corner missed
    pred[0:3, 0:3] = True  # a little excess outside
    positive, negative = corrective_points(true, pred, np.random.default_rng(0))
    assert 15 <= positive[0] < 25 and 15 <= positive[1] < 25
    assert negative == (1, 1)


def test_no_error_no_click():
    true = disk((20, 20), 10, 10, 5)
    assert corrective_points(true, true, np.random.default_rng(0)) == (None, None)
    positive, negative = corrective_points(true, np.zeros_like(true), np.random.default_rng(0))
    assert positive == (10, 10) and negative is None


def test_bounding_box_has_exclusive_ends():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    np.testing.assert_array_equal(bounding_box(region(mask), mask.shape), [3, 2, 9, 5])


# --- objects and painting ------------------------------------------------------------------


def test_ground_truth_objects_are_connected_components():
    gt = np.zeros((6, 12), dtype=np.uint16)
    gt[1:3, 1:3] = 4
    gt[1:3, 8:10] = 4  # same id, second piece
    gt[1:3, 3:5] = 9  # touching id 4
    ids, pixels = ground_truth_objects(gt)
    assert len(ids) == 3 and sorted(p.size for p in pixels) == [4, 4, 4]
    ids, pixels = ground_truth_objects(gt, relabel=False)
    assert list(ids) == [4, 9] and [p.size for p in pixels] == [8, 4]
    assert all(np.all(np.diff(p) > 0) for p in pixels)  # sorted, as error_clicks expects


def test_label_image_paints_largest_first():
    shape = (20, 20)
    big, small = disk(shape, 10, 10, 7), disk(shape, 10, 10, 2)
    masks = ObjectMasks(np.array([3, 8]), [region(small), region(big)], shape)
    labels = masks.label_image()
    assert labels[10, 10] == 3  # the small object on top of the big one
    assert labels[10, 15] == 8 and labels[0, 0] == 0
    np.testing.assert_array_equal(masks.mask(1), big)


def test_invalid_mode_and_shape():
    gt = np.zeros((8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="mode"):
        prompt_objects(None, None, (8, 8), gt, "scribble")
    with pytest.raises(ValueError, match="shape"):
        prompt_objects(None, None, (8, 9), gt, "box")


def test_no_objects_gives_empty_label_images():
    gt = np.zeros((8, 8), dtype=np.uint8)
    results = prompt_objects(None, None, (8, 8), gt, "iterative_point", n_iterations=3)
    assert len(results) == 3 and all(r.shape == (8, 8) and not r.any() for r in results)
    assert len(prompt_objects(None, None, (8, 8), gt, "box")) == 1


# --- the prompting loop with a model that follows its prompts exactly ---------------------


class _Encoder(nn.Module):
    img_size = 64


class _ClickPrompts(nn.Module):
    """Passes the prompts through: sparse = (x, y, label) per point, box corners with labels 2 and 3."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, points, boxes, masks):
        self.calls.append({"points": points, "boxes": boxes, "masks": masks})
        tokens = []
        if points is not None:
            tokens.append(torch.cat([points[0], points[1][..., None].float()], dim=-1))
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            tokens.append(torch.cat([corners, torch.tensor([2.0, 3.0]).expand(len(boxes), 2)[..., None]], dim=-1))
        return torch.cat(tokens, dim=1), masks

    def get_dense_pe(self):
        return None


class _ClickDecoder(nn.Module):
    """An ideal interactive model in the 64x64 input frame: inside the box (if any) or near a
    positive click, but not near a negative click (later clicks win)."""

    radius = {1: 3.0, 0: 1.5}

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the decoder, the part prompts run, a device

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        logits = []
        for tokens in sparse_prompt_embeddings:
            inside = torch.zeros(64, 64, dtype=torch.bool)
            box = tokens[tokens[:, 2] >= 2]
            if len(box):
                (x0, y0), (x1, y1) = box[0, :2], box[1, :2]
                inside |= (xx >= x0) & (xx < x1) & (yy >= y0) & (yy < y1)
            for x, y, label in tokens[tokens[:, 2] < 2]:
                if label == PADDING_LABEL:
                    continue
                near = (xx - x) ** 2 + (yy - y) ** 2 <= self.radius[int(label)] ** 2
                if label == 1:
                    inside |= near
                else:
                    inside &= ~near
            logits.append(inside.float() * 2 - 1)
        n_masks = 3 if multimask_output else 1
        logits = torch.stack(logits)[:, None].repeat(1, n_masks, 1, 1)
        return logits, torch.ones(len(logits), n_masks)


class ClickSam(nn.Module):
    """Stand-in for a Sam whose masks follow the prompts exactly (no learned weights)."""

    mask_threshold = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = _Encoder()
        self.prompt_encoder = _ClickPrompts()
        self.mask_decoder = _ClickDecoder()

    def postprocess_masks(self, masks, input_size, original_size):
        masks = masks[..., : input_size[0], : input_size[1]]
        return nn.functional.interpolate(masks, original_size, mode="nearest")


def disks_gt(shape=(64, 64)) -> np.ndarray:
    gt = np.zeros(shape, dtype=np.uint16)
    for i, (cy, cx) in enumerate([(12, 12), (14, 44), (44, 20), (46, 48)], start=1):
        gt[disk(shape, cy, cx, 7)] = i
    return gt


def mean_iou(gt: np.ndarray, masks: ObjectMasks) -> float:
    _, true = ground_truth_objects(gt)
    return float(np.mean([np.intersect1d(t, p).size / np.union1d(t, p).size for t, p in zip(true, masks.pixels)]))


@pytest.mark.parametrize("mode", ["iterative_point", "iterative_box"])
def test_clicks_improve_a_model_that_follows_them(mode):
    gt = disks_gt()
    model = ClickSam()
    runs = list(iter_object_masks(model, torch.zeros(1, 1, 1, 1), gt.shape, gt, mode, n_iterations=6))
    ious = [mean_iou(gt, m) for m in runs]
    # Each click fixes the thickest error; with a finite brush it may cost a sliver elsewhere.
    assert all(b >= a - 0.01 for a, b in zip(ious, ious[1:])), ious
    assert ious[-1] > ious[0] + 0.1
    msa = [segmentation_scores(gt, m.label_image()).msa for m in runs]
    assert msa[-1] > msa[0]


def test_prompts_reach_the_model_in_input_coordinates():
    # A 96x128 window: the input frame is 48x64 (scale 0.5); objects at known places.
    gt = np.zeros((96, 128), dtype=np.uint16)
    gt[10:21, 20:31] = 1  # 11x11, centre (15, 25)
    gt[60:71, 90:101] = 2  # centre (65, 95)
    model = ClickSam()
    list(iter_object_masks(model, torch.zeros(1), gt.shape, gt, "iterative_box", n_iterations=3))
    first, second, third = model.prompt_encoder.calls
    assert first["points"] is None and first["masks"] is None
    np.testing.assert_allclose(first["boxes"].numpy(), [[10, 5, 15.5, 10.5], [45, 30, 50.5, 35.5]])
    torch.testing.assert_close(second["boxes"], first["boxes"])  # the box stays
    coords, labels = second["points"]
    assert coords.shape == (2, 2, 2) and third["points"][0].shape == (2, 4, 2)
    # The box already covers each square: no missed pixels, so the positive slot is padding;
    # the box mask spills over by half a pixel at the far edges, so a negative click goes there.
    assert labels[:, 0].tolist() == [PADDING_LABEL] * 2
    assert labels[:, 1].tolist() == [0, 0]
    # micro-sam's default: the previous logits are not fed back
    assert all(call["masks"] is None for call in model.prompt_encoder.calls)

    model = ClickSam()
    list(iter_object_masks(model, torch.zeros(1), gt.shape, gt, "iterative_box", n_iterations=3, use_mask_input=True))
    first, second, third = model.prompt_encoder.calls
    assert first["masks"] is None  # nothing to feed back yet
    assert second["masks"].shape == third["masks"].shape == (2, 1, 64, 64)  # previous logits fed back

    model = ClickSam()
    list(iter_object_masks(model, torch.zeros(1), gt.shape, gt, "point"))
    (call,) = model.prompt_encoder.calls
    np.testing.assert_allclose(call["points"][0].numpy(), [[[12.5, 7.5]], [[47.5, 32.5]]])  # x, y of the centres
    assert call["boxes"] is None and call["points"][1].tolist() == [[1], [1]]


def test_batched_equals_one_object_at_a_time_for_the_stand_in():
    gt = disks_gt()
    batched = list(iter_object_masks(ClickSam(), torch.zeros(1), gt.shape, gt, "iterative_point", n_iterations=4))
    single = list(
        iter_object_masks(ClickSam(), torch.zeros(1), gt.shape, gt, "iterative_point", n_iterations=4, batch_size=1)
    )
    for b, s in zip(batched, single):
        assert all(np.array_equal(x, y) for x, y in zip(b.pixels, s.pixels))


# --- the real model on real nuclei ---------------------------------------------------------
# The mask decoder costs a fair fraction of a second per object on a shared CPU, so the
# tests use two small dsb2018 images (fluorescence nuclei, 7 and 6 objects), and the
# iterative runs only their first three objects.

DSB_IMAGES = (
    "0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5",
    "e17b7aedd251a016c01ef9158e6e4aa940d9f1b35942d86028dc1222192a9258",
)


@pytest.fixture(scope="module")
def nuclei(shared_dir, lite_medsam):
    """(gt, embedding) per test image; the embedding is computed once, as stored ones are."""
    tifffile = pytest.importorskip("tifffile")
    from segment_anything import SamPredictor

    predictor = SamPredictor(lite_medsam)
    out = []
    for name in DSB_IMAGES:
        image = tifffile.imread(shared_dir / "data" / "dsb2018" / "images" / f"{name}.tif").astype(np.float32)
        gt = tifffile.imread(shared_dir / "data" / "dsb2018" / "labels" / f"{name}.tif")
        image = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
        image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6) * 255
        predictor.set_image(image.astype(np.uint8))
        out.append((gt, predictor.features.clone()))
    return out


@pytest.fixture(scope="module")
def few_nuclei(nuclei):
    """The test images with only their first three objects kept."""
    return [(np.where(np.isin(gt, np.unique(gt)[1:4]), gt, 0), emb) for gt, emb in nuclei]


@pytest.fixture(scope="module")
def box_runs(nuclei, lite_medsam):
    return [next(iter_object_masks(lite_medsam, emb, gt.shape, gt, "box")) for gt, emb in nuclei]


@pytest.fixture(scope="module")
def iterative_box_runs(few_nuclei, lite_medsam):
    return [
        list(iter_object_masks(lite_medsam, emb, gt.shape, gt, "iterative_box", n_iterations=2))
        for gt, emb in few_nuclei
    ]


def test_box_prompts_segment_real_nuclei(nuclei, box_runs):
    for (gt, _), masks in zip(nuclei, box_runs):
        assert mean_iou(gt, masks) > 0.6
        assert segmentation_scores(gt, masks.label_image()).sa50 > 0.6


def test_iterative_start_is_the_box_result(few_nuclei, lite_medsam, iterative_box_runs):
    for (gt, emb), runs in zip(few_nuclei, iterative_box_runs):
        box = next(iter_object_masks(lite_medsam, emb, gt.shape, gt, "box"))
        assert all(np.array_equal(a, b) for a, b in zip(runs[0].pixels, box.pixels))
        assert any(not np.array_equal(a, b) for a, b in zip(runs[0].pixels, runs[1].pixels))  # corrections act


def test_same_seed_same_result(few_nuclei, lite_medsam):
    gt, emb = few_nuclei[0]
    first, again = (
        list(iter_object_masks(lite_medsam, emb, gt.shape, gt, "iterative_point", n_iterations=2)) for _ in range(2)
    )
    for a, b in zip(first, again):
        assert all(np.array_equal(x, y) for x, y in zip(a.pixels, b.pixels))


def _predictor_reference(model, emb, gt, mode, n_iterations, seed=0, feed_logits=False):
    """One object at a time through SamPredictor (its own coordinate transforms), same click rule."""
    from segment_anything import SamPredictor

    predictor = SamPredictor(model)
    predictor.features = emb
    predictor.original_size = gt.shape
    predictor.input_size = predictor.transform.get_preprocess_shape(*gt.shape, model.image_encoder.img_size)
    predictor.is_image_set = True
    ids, true_pixels = ground_truth_objects(gt)
    per_object = []
    for obj, true in zip(ids, true_pixels):
        rng = np.random.default_rng([seed, int(obj)])
        true_mask = np.zeros(gt.shape, dtype=bool)
        true_mask.flat[true] = True
        box, points, labels, logits = None, np.zeros((0, 2)), np.zeros(0), None
        if mode == "iterative_box":
            box = bounding_box(true, gt.shape)
        else:
            y, x = farthest_from_boundary(true, gt.shape, rng)
            points, labels = np.array([[x, y]], dtype=float), np.array([1])
        masks_per_iteration = []
        for it in range(n_iterations):
            multimask = it == 0 and box is None
            masks, scores, low_res = predictor.predict(
                points if len(points) else None, labels if len(labels) else None, box, logits, multimask
            )
            best = int(np.argmax(scores))
            masks_per_iteration.append(masks[best])
            logits = low_res[best][None] if feed_logits else None
            for click, label in zip(corrective_points(true_mask, masks[best], rng), (1, 0)):
                xy, lab = ([click[1], click[0]], label) if click is not None else ([0, 0], PADDING_LABEL)
                points, labels = np.vstack([points, xy]), np.append(labels, lab)
        per_object.append(masks_per_iteration)
    return per_object


@pytest.mark.parametrize("feed_logits", [False, True])
@pytest.mark.parametrize("mode", ["iterative_box", "iterative_point"])
def test_batched_matches_predictor_one_object_at_a_time(few_nuclei, lite_medsam, mode, feed_logits):
    gt, emb = few_nuclei[0]
    gt = np.where(np.isin(gt, np.unique(gt)[1:3]), gt, 0)  # two objects make a batch
    batched = list(
        iter_object_masks(
            lite_medsam, emb, gt.shape, gt, mode, n_iterations=3, batch_size=None, use_mask_input=feed_logits
        )
    )
    reference = _predictor_reference(lite_medsam, emb, gt, mode, n_iterations=3, feed_logits=feed_logits)
    for it, masks in enumerate(batched):
        for k, ref in enumerate(reference):
            mine = masks.mask(k)
            agreement = (mine & ref[it]).sum() / max((mine | ref[it]).sum(), 1)
            assert agreement > 0.99, (it, k, agreement)
