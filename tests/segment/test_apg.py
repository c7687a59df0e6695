"""APG: point prompts from the maps (against a brute-force distance), NMS and painting (against a
brute-force reference of micro-sam's apply_nms), decoding, and APG end to end with a real SAM on a
fitted decoder's maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label
from skimage.segmentation import find_boundaries

from helpers.decoder_fit import demo_image, fit_decoder
from helpers.label_images import adjusted_rand_index, paint_disc
from tilesam.config import ApgParams, replace
from tilesam.segment.apg import apg_labels, component_centres, decode_prompts, extended_boxes, point_prompts
from tilesam.segment.masks import MaskSet, masks_to_boxes
from tilesam.segment.nms import apply_nms, overlaps

# --- prompts -----------------------------------------------------------------------------------


def _maps_with_seeds(shape, seeds: np.ndarray, foreground: np.ndarray | None = None) -> np.ndarray:
    """Maps whose seed region is `seeds`: distances 0 there and 1 elsewhere, foreground 1 (or given)."""
    maps = np.ones((3, *shape), np.float32)
    maps[1][seeds] = maps[2][seeds] = 0.0
    if foreground is not None:
        maps[0] = foreground
    return maps


def _brute_force_centres(components: np.ndarray) -> list[tuple[int, int]]:
    """Per component, the first pixel (raster order) farthest from the outer boundaries (skimage's, as
    micro-sam marks them) and the image's edge pixels, by comparing every pair of pixels."""
    blocked = find_boundaries(components, mode="outer")
    blocked[0, :] = blocked[-1, :] = blocked[:, 0] = blocked[:, -1] = True
    by, bx = np.nonzero(blocked)
    centres = []
    for k in range(1, components.max() + 1):
        ys, xs = np.nonzero(components == k)
        dist = np.sqrt(((ys[:, None] - by) ** 2 + (xs[:, None] - bx) ** 2).min(axis=1))
        best = dist.max()
        centres.append(min((y, x) for y, x, d in zip(ys, xs, dist) if d == best))  # raster order
    return centres


def test_one_point_per_component_at_the_distance_maximum_never_on_the_edge():
    shape = (40, 60)
    seeds = np.zeros(shape, bool)
    seeds[5:16, 10:31] = True  # a rectangle: its middle
    seeds[20:35, 0:12] = True  # touching the left edge: the point stays off column 0
    seeds[0:3, 40:59] = True  # a strip along the top edge
    seeds[30:34, 40:44] = True  # two squares touching at a corner only: two components (4-neighbours)
    seeds[34:38, 44:48] = True
    maps = _maps_with_seeds(shape, seeds)
    points = point_prompts(maps, ApgParams())
    assert points.dtype == np.int64 and points.shape == (5, 2)
    components = label(seeds, connectivity=1)
    expected = _brute_force_centres(components)
    assert [(y, x) for x, y in points] == expected
    for x, y in points:
        assert 0 < x < shape[1] - 1 and 0 < y < shape[0] - 1 and seeds[y, x]
    # the rectangle (the second component in raster order): 6 pixels from its boundary on row 10,
    # columns 15-25; the first of those tied maxima, as (x, y)
    assert tuple(points[1]) == (15, 10)


def test_background_and_thresholds_decide_the_seeds():
    shape = (32, 32)
    seeds = np.zeros(shape, bool)
    seeds[4:12, 4:12] = seeds[18:28, 18:28] = True
    foreground = np.ones(shape, np.float32)
    foreground[18:28, 18:28] = 0.49  # below the foreground threshold: background, never a seed
    maps = _maps_with_seeds(shape, seeds, foreground)
    assert len(point_prompts(maps, ApgParams())) == 1
    maps[0][18:28, 18:28] = 0.5  # at the threshold: foreground (micro-sam's background is fg < threshold)
    assert len(point_prompts(maps, ApgParams())) == 2
    maps[1][seeds] = 0.5  # centre distance at its threshold: not below it, so no seed
    assert len(point_prompts(maps, ApgParams())) == 0
    assert len(point_prompts(maps, replace(ApgParams(), center_distance_threshold=0.51))) == 2


def test_component_centres_of_touching_components_keep_apart():
    components = np.zeros((20, 30), np.int32)
    components[2:18, 2:14] = 1
    components[2:18, 14:28] = 2  # touching 1 along a column: each one's outer boundary includes the other
    centres = component_centres(components)
    assert [tuple(c) for c in centres] == _brute_force_centres(components)


def test_bad_maps_are_an_error_naming_the_source():
    with pytest.raises(ValueError, match="block1.zarr tile 3"):
        point_prompts(np.zeros((2, 8, 8), np.float32), ApgParams(), source="block1.zarr tile 3")


def test_extended_boxes_grow_by_one_percent_and_stay_in_the_window():
    boxes = torch.tensor([[10, 20, 110, 70], [0, 0, 49, 99]])  # inclusive XYXY
    out = extended_boxes(boxes, (100, 200))
    np.testing.assert_allclose(out[0], [9.0, 19.5, 111.0, 70.5])
    np.testing.assert_allclose(out[1], [0.0, 0.0, 49.49, 99.99])
    # x clipped by the window's width (micro-sam clips it by the height: 100, on this wide window)
    np.testing.assert_allclose(extended_boxes(torch.tensor([[0, 0, 199, 99]]), (100, 200))[0], [0, 0, 200, 99.99])


# --- NMS -----------------------------------------------------------------------------------------


def _random_masks(rng, n: int, shape=(48, 64)) -> MaskSet:
    masks = np.zeros((n, *shape), bool)
    for k in range(n):
        image = np.zeros(shape, np.uint32)
        paint_disc(image, (rng.uniform(0, shape[0]), rng.uniform(0, shape[1])), rng.uniform(2, 12), 1)
        if rng.random() < 0.3:  # some masks in two pieces
            paint_disc(image, (rng.uniform(0, shape[0]), rng.uniform(0, shape[1])), rng.uniform(1, 4), 1)
        masks[k] = image > 0
    masks = torch.from_numpy(masks)
    return MaskSet(
        masks=masks,
        iou_preds=torch.from_numpy(rng.uniform(0.5, 1.0, n).astype(np.float32)),
        stability_scores=torch.from_numpy(rng.uniform(0.5, 1.0, n).astype(np.float32)),
        boxes=masks_to_boxes(masks),
        points=torch.zeros((n, 2), dtype=torch.float64),
    )


def _reference_nms(ms: MaskSet, min_size: int, threshold: float, iomin: bool) -> np.ndarray:
    """micro-sam's apply_nms written plainly: whole-mask numpy overlaps, a sorted list, a painting loop."""
    masks = ms.masks.numpy()
    boxes = ms.boxes.numpy()
    areas = masks.sum(axis=(1, 2))
    keep = [k for k in range(len(masks)) if min_size <= 0 or areas[k] > min_size]
    scores = {k: float(ms.iou_preds[k] * ms.stability_scores[k]) for k in keep}

    def overlap(i, j):
        common_w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
        common_h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
        if common_w <= 0 or common_h <= 0:
            return 0.0
        inter = (masks[i] & masks[j]).sum()
        return inter / min(areas[i], areas[j]) if iomin else inter / (masks[i] | masks[j]).sum()

    order = sorted(keep, key=lambda k: -scores[k])
    kept = []
    while order:
        i, order = order[0], order[1:]
        kept.append(i)
        order = [j for j in order if overlap(i, j) <= threshold]
    labels = np.zeros(masks.shape[1:], np.uint32)
    for seg_id, k in enumerate(sorted(kept, key=lambda k: -areas[k]), start=1):
        labels[masks[k] & (labels == 0)] = seg_id
    labels = label(labels, connectivity=1)
    for piece in range(1, labels.max() + 1):
        if (labels == piece).sum() < min_size:
            labels[labels == piece] = 0
    return labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "min_size, threshold, iomin", [(0, 0.9, False), (25, 0.5, False), (25, 0.5, True), (60, 0.0, True)]
)
def test_nms_equals_a_brute_force_reference(seed, min_size, threshold, iomin):
    ms = _random_masks(np.random.default_rng(seed), 40)
    ours = apply_nms(ms, min_size, threshold, iomin)
    theirs = _reference_nms(ms, min_size, threshold, iomin)
    assert ours.dtype == np.uint32 and ours.max() == len(np.unique(ours)) - 1
    assert theirs.max() > 3
    assert adjusted_rand_index(theirs, ours) == 1.0 and (ours > 0).sum() == (theirs > 0).sum()
    # the overlaps computed once serve every setting
    assert np.array_equal(apply_nms(ms, min_size, threshold, iomin, pairs=overlaps(ms.masks, ms.boxes)), ours)


@pytest.mark.parametrize("shape", [(48, 64), (37, 61), (5, 203)])
def test_overlaps_count_every_common_pixel(shape):
    """Bit-packed counts inside each mask's box equal whole-mask counts, also where boxes cut a packed byte."""
    ms = _random_masks(np.random.default_rng(7), 50, shape)
    masks, boxes = ms.masks.numpy(), ms.boxes.numpy()
    pairs = overlaps(ms.masks, ms.boxes)
    areas = masks.sum(axis=(1, 2))
    checked = 0
    for i in range(len(masks)):
        for j in set(range(len(masks))) - {i}:  # NMS never compares a mask with itself
            gated = min(boxes[i, 2], boxes[j, 2]) > max(boxes[i, 0], boxes[j, 0]) and min(
                boxes[i, 3], boxes[j, 3]
            ) > max(boxes[i, 1], boxes[j, 1])
            inter = (masks[i] & masks[j]).sum()
            want_iou = inter / (areas[i] + areas[j] - inter) if gated else 0.0
            want_iomin = inter / (min(areas[i], areas[j]) + 1e-6) if gated else 0.0
            assert pairs.iou[i, j] == pytest.approx(want_iou, rel=1e-6) and pairs.iomin[i, j] == pytest.approx(
                want_iomin, rel=1e-6
            )
            checked += bool(gated and 0 < inter < min(areas[i], areas[j]))
    assert checked > 10  # partial overlaps, not only disjoint or nested masks


def test_boxes_sharing_one_column_do_not_overlap_as_in_micro_sam():
    masks = torch.zeros((2, 20, 20), dtype=torch.bool)
    masks[0, 2:18, 2:11] = True
    masks[1, 2:18, 10:18] = True  # shares column 10 with the first
    ms = MaskSet(masks, torch.tensor([0.9, 0.8]), torch.tensor([1.0, 1.0]), masks_to_boxes(masks), torch.zeros((2, 2)))
    pairs = overlaps(ms.masks, ms.boxes)
    assert pairs.iou[0, 1] == 0 and pairs.iomin[0, 1] == 0
    assert apply_nms(ms, 0, 0.0, True).max() == 2
    masks[1, 2:18, 9:18] = True  # two common columns: now they overlap
    ms = MaskSet(masks, ms.iou_preds, ms.stability_scores, masks_to_boxes(masks), ms.points)
    pairs = overlaps(ms.masks, ms.boxes)
    assert pairs.iou[0, 1] == pytest.approx(32 / (16 * 16)) and pairs.iomin[0, 1] == pytest.approx(32 / (16 * 9))
    assert apply_nms(ms, 0, 0.1, False).max() == 1


def test_painting_lets_the_larger_mask_keep_the_overlap():
    masks = torch.zeros((2, 30, 30), dtype=torch.bool)
    masks[0, 10:20, 10:20] = True  # small, best score
    masks[1, 5:25, 5:25] = True  # large, covers the small one
    ms = MaskSet(masks, torch.tensor([0.99, 0.5]), torch.tensor([1.0, 1.0]), masks_to_boxes(masks), torch.zeros((2, 2)))
    labels = apply_nms(ms, 0, 0.99, True)  # iomin 1.0 > 0.99: the large mask goes
    assert labels.max() == 1 and (labels > 0).sum() == 100
    labels = apply_nms(ms, 0, 0.9, False)  # IoU 0.25: both kept, the larger painted first
    assert labels.max() == 1 and (labels > 0).sum() == 400  # the small one finds no free pixel


# --- decoding and APG end to end with a real model -------------------------------------------------


@pytest.fixture(scope="module")
def fitted(lite_medsam, request):
    """LiteMedSAM with a decoder fitted on the demo nuclei (14 objects): (image labels, embedding, maps)."""
    image, truth = demo_image()
    fit = fit_decoder(lite_medsam, image, truth, cache_dir=request.config.cache.mkdir("decoder_fit"))
    return truth, fit.embedding, fit.maps()


#: seed thresholds for the fitted decoder's maps, whose distances stay above 0.5 inside some objects
#: (the same as tests/workflow/test_bad_input.py's AIS settings for this decoder)
FITTED = ApgParams(center_distance_threshold=0.55, boundary_distance_threshold=0.6)


@pytest.mark.parametrize("prompt", ["points", "boxes"])
@pytest.mark.parametrize("multimask", [False, True])
def test_decoded_masks_are_sams_own(lite_medsam, fitted, prompt, multimask):
    """The batched decoding gives the masks of SAM's own prompt encoder + mask decoder (interactive.decoder)."""
    from tilesam.interactive.decoder import PromptDecoder

    truth, embedding, maps = fitted
    points = point_prompts(maps, FITTED)
    assert len(points) >= 10
    params = replace(FITTED, multimasking=multimask, prompts_per_batch=4)
    if prompt == "points":
        ours = decode_prompts(lite_medsam, embedding, truth.shape, params, points=points)
        pixels, _ = PromptDecoder(lite_medsam, embedding, truth.shape).decode(
            points[:, None, :], np.ones((len(points), 1)), None, None, multimask
        )
    else:
        boxes = extended_boxes(
            decode_prompts(lite_medsam, embedding, truth.shape, params, points=points).boxes, truth.shape
        )
        ours = decode_prompts(lite_medsam, embedding, truth.shape, params, boxes=boxes)
        pixels, _ = PromptDecoder(lite_medsam, embedding, truth.shape).decode(None, None, boxes, None, multimask)
    assert len(ours) == len(points) and ours.masks.any(dim=(1, 2)).sum() >= len(points) // 2
    for mask, theirs in zip(ours.masks.numpy(), pixels):
        np.testing.assert_array_equal(np.flatnonzero(mask), theirs)
    # stability |logit > 1| / |logit > -1|: 0 / 0 (NaN, as micro-sam's) only where the mask is empty
    empty, nan = ~ours.masks.any(dim=(1, 2)), torch.isnan(ours.stability_scores)
    assert (empty | ~nan).all() and ((ours.stability_scores[~nan] >= 0) & (ours.stability_scores[~nan] <= 1)).all()


def test_apg_end_to_end_is_its_steps_composed_from_references(lite_medsam, fitted):
    """The prompts land in the demo's objects, one each; the labels are SAM's own masks of them (its
    prompt encoder + mask decoder, interactive.decoder) through the brute-force NMS reference.

    LiteMedSAM was trained on boxes only: its masks of these points are a few pixels to a fraction
    of an object (ARI against the truth 0.01-0.09, with or without the box round), so APG is no use
    with it; the test checks that APG is these steps, not that LiteMedSAM segments from points.
    """
    from tilesam.interactive.decoder import PromptDecoder

    truth, embedding, maps = fitted
    points = point_prompts(maps, FITTED)
    hit = [int(truth[y, x]) for x, y in points]
    assert all(hit) and len(set(hit)) == len(hit) >= 10  # of 14 objects
    for refine in (False, True):
        params = replace(FITTED, refine_with_box_prompts=refine, min_size=0)
        reference = PromptDecoder(lite_medsam, embedding, truth.shape)
        pixels, _ = reference.decode(points[:, None, :], np.ones((len(points), 1)), None, None, False)
        if refine:
            masks = decode_prompts(lite_medsam, embedding, truth.shape, params, points=points)
            pixels, _ = reference.decode(None, None, extended_boxes(masks.boxes, truth.shape), None, False)
        ours = apg_labels(lite_medsam, embedding, maps, params)
        decoded = decode_prompts(
            lite_medsam, embedding, truth.shape, params,
            **({"boxes": extended_boxes(masks.boxes, truth.shape)} if refine else {"points": points}),
        )  # fmt: skip
        for mask, theirs in zip(decoded.masks.numpy(), pixels):
            np.testing.assert_array_equal(np.flatnonzero(mask), theirs)
        expected = _reference_nms(decoded, params.min_size, params.nms_threshold, params.intersection_over_min)
        assert ours.max() >= 2 and adjusted_rand_index(expected, ours) == 1.0
