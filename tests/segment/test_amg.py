"""tilesam.segment.amg against segment_anything's SamAutomaticMaskGenerator on the same embedding.

The decoder is the expensive part on CPU (about 0.2 s per point prompt here), so the
comparisons use small point grids; equivalence does not depend on the grid size. Two models:
the real LiteMedSAM (256 input) on a real microscopy image, and a 1024-input SAM with random
weights (vit_b's prompt encoder/decoder configuration, a patch-convolution stand-in encoder so
the encoder costs nothing) whose low stability offset lets every filter act.
"""

from __future__ import annotations

import sys
import types
from dataclasses import replace

import numpy as np
import pytest
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.amg import (
    MaskData,
    area_from_rle,
    mask_to_rle_pytorch,
    rle_to_mask,
)

from tilesam.config import AmgParams
from tilesam.segment.amg import decode_candidates, filter_candidates, generate_masks
from tilesam.segment.labels import masks_to_labels
from tilesam.segment.masks import MaskSet

torch.set_num_threads(2)

# LiteMedSAM was trained on box prompts: for single points it predicts IoUs of ~0.1-0.25 and
# logits that rarely exceed 1, so defaults keep nothing. These settings keep a few masks and
# make the IoU filter, the stability filter and NMS each remove some.
LITE_PARAMS = AmgParams(
    points_per_side=4,
    pred_iou_thresh=0.15,
    stability_score_thresh=0.01,
    stability_score_offset=0.05,
)
# Random weights give logits near 0 (a small offset spreads stability over 0-0.8) and masks
# whose boxes nearly all span the image, so NMS is off (1.0) to keep many to compare.
RANDOM_PARAMS = AmgParams(
    points_per_side=4,
    points_per_batch=6,  # three batches, the last one ragged
    pred_iou_thresh=0.05,
    stability_score_thresh=0.06,
    stability_score_offset=0.05,
    box_nms_thresh=1.0,
)


class _PatchEncoder(torch.nn.Module):
    """Stand-in image encoder: one strided convolution to SAM's 64x64 embedding grid."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.proj = torch.nn.Conv2d(3, 256, img_size // 64, stride=img_size // 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.fixture(scope="module")
def random_sam() -> Sam:
    torch.manual_seed(0)
    return Sam(
        image_encoder=_PatchEncoder(1024),
        prompt_encoder=PromptEncoder(
            embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    ).eval()


def _to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """micro-sam's input convention: min-max to 0..255, grayscale replicated to RGB."""
    image = image.astype(np.float64)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    span = max(image.max() - image.min(), 1e-12)
    gray = np.round((image - image.min()) / span * 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


@pytest.fixture(scope="module")
def cells(shared_dir) -> np.ndarray:
    """A non-square window of a real DSB2018 nuclei image, as uint8 RGB."""
    tifffile = pytest.importorskip("tifffile")
    paths = sorted((shared_dir / "data" / "dsb2018" / "images").glob("*.tif"))
    if not paths:
        pytest.skip("no DSB2018 images in the shared data")
    image = next((im for im in map(tifffile.imread, paths) if min(im.shape[:2]) >= 300), None)
    if image is None:
        pytest.skip("no DSB2018 image of at least 300x300")
    return _to_rgb_uint8(image[:300, :451])


def _embed(model: Sam, image: np.ndarray) -> torch.Tensor:
    predictor = SamPredictor(model)
    predictor.set_image(image)
    return predictor.features


def _sam_reference(model: Sam, image: np.ndarray, params: AmgParams) -> list[dict]:
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=params.points_per_side,
        points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        stability_score_offset=params.stability_score_offset,
        box_nms_thresh=params.box_nms_thresh,
        crop_nms_thresh=params.crop_nms_thresh,
    )  # min_mask_region_area: see _sam_small_region_cleanup
    return generator.generate(image)


def _assert_same_as_sam(ours: MaskSet, records: list[dict]) -> None:
    """SAM's masks in SAM's order, each within float rounding of SAM's (tilesam.segment.two_way reassociates
    the decoder's products): a few pixels where a logit sits at the threshold, scores to 1e-5."""
    assert len(ours) == len(records), f"ours {len(ours)} masks, SAM {len(records)}"
    masks = ours.masks.cpu().numpy()
    for i, (mine, rec) in enumerate(zip(masks, records)):
        differ = int(np.sum(mine != rec["segmentation"]))
        assert differ <= max(2, rec["area"] // 500), f"mask {i} (area {rec['area']}) differs by {differ} px"
    np.testing.assert_allclose(ours.iou_preds.cpu().numpy(), [r["predicted_iou"] for r in records], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        ours.stability_scores.cpu().numpy(), [r["stability_score"] for r in records], rtol=0, atol=1e-3
    )
    boxes = ours.boxes.cpu().numpy()
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1) if len(boxes) else boxes
    np.testing.assert_allclose(xywh.reshape(-1, 4), np.reshape([r["bbox"] for r in records], (-1, 4)), atol=1)
    np.testing.assert_array_equal(
        ours.points.cpu().numpy().reshape(-1, 2), np.reshape([r["point_coords"][0] for r in records], (-1, 2))
    )
    np.testing.assert_allclose(ours.areas.cpu().numpy(), [r["area"] for r in records], atol=2, rtol=0.002)


def _case(model: Sam, image: np.ndarray, params: AmgParams, *, via_generate: bool) -> dict:
    """Everything the comparisons need, computed once per model: each decoder run costs seconds.

    ``all`` holds every decoded mask before any threshold (it shows which filters act). With
    ``via_generate`` False our result is filtered from it instead of decoded again (one decoder
    run less; test_grid_search_reuses_one_decoder_run shows the two are the same).
    """
    embedding = _embed(model, image)
    unfiltered = replace(params, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    candidates = decode_candidates(model, embedding, image.shape[:2], unfiltered)
    if via_generate:
        ours = generate_masks(model, embedding, image.shape[:2], params)
    else:
        ours = filter_candidates(
            candidates, params.pred_iou_thresh, params.stability_score_thresh, params.box_nms_thresh
        )
    return {
        "model": model,
        "image": image,
        "embedding": embedding,
        "params": params,
        "sam": _sam_reference(model, image, params),
        "ours": ours,
        "all": candidates,
    }


@pytest.fixture(scope="module")
def lite_case(lite_medsam, cells) -> dict:
    return _case(lite_medsam, cells, LITE_PARAMS, via_generate=True)


@pytest.fixture(scope="module")
def random_case(random_sam, cells) -> dict:
    return _case(random_sam, cells, RANDOM_PARAMS, via_generate=False)


def _assert_filters_act(case: dict) -> None:
    """The IoU filter, the stability filter and NMS each remove masks, else they go untested."""
    params, ms = case["params"], case["all"].maskset
    low_iou = ms.iou_preds <= params.pred_iou_thresh
    unstable = ms.stability_scores < params.stability_score_thresh
    assert low_iou.any() and unstable.any()
    assert (low_iou & ~unstable).any() and (unstable & ~low_iou).any()
    thresholded = int((~low_iou & ~unstable).sum())
    assert 0 < len(case["ours"]) <= thresholded
    if params.box_nms_thresh < 1.0:
        assert len(case["ours"]) < thresholded, "NMS removed nothing"


def test_lite_medsam_real_image_matches_sam(lite_case):
    assert len(lite_case["sam"]) >= 5, "too few masks survive to compare anything"
    _assert_filters_act(lite_case)
    _assert_same_as_sam(lite_case["ours"], lite_case["sam"])


def test_random_1024_model_matches_sam(random_case):
    """1024-input model on a non-square image: pad-size upscaling, crop and resize as SAM."""
    assert len(random_case["sam"]) >= 3
    _assert_filters_act(random_case)
    _assert_same_as_sam(random_case["ours"], random_case["sam"])


def test_grid_search_reuses_one_decoder_run(lite_case):
    """filter_candidates at any setting == generate_masks at that setting."""
    model, image, embedding = lite_case["model"], lite_case["image"], lite_case["embedding"]
    candidates, nms = lite_case["all"], LITE_PARAMS.box_nms_thresh
    same_as_default = filter_candidates(candidates, 0.15, 0.01, nms)
    assert torch.equal(same_as_default.masks, lite_case["ours"].masks)
    stricter = replace(LITE_PARAMS, pred_iou_thresh=0.17, stability_score_thresh=0.02)
    fresh = generate_masks(model, embedding, image.shape[:2], stricter)
    reused = filter_candidates(candidates, 0.17, 0.02, nms)
    assert 0 < len(fresh) < len(lite_case["ours"])
    assert torch.equal(reused.masks, fresh.masks)
    assert torch.equal(reused.iou_preds, fresh.iou_preds)
    assert torch.equal(reused.boxes, fresh.boxes)
    floored = replace(candidates, pred_iou_thresh=0.15)
    with pytest.raises(ValueError, match="looser"):
        filter_candidates(floored, 0.1, 0.01, nms)


def _cv2_stand_in() -> types.SimpleNamespace:
    """cv2.connectedComponentsWithStats (8-connectivity, area in the last stats column) via scipy.

    SAM needs OpenCV for min_mask_region_area and tilesam does not depend on it. Labels follow
    the raster order of first pixels, as OpenCV's do (checked against opencv-python-headless).
    """
    from scipy import ndimage

    def connected_components_with_stats(image, connectivity=8):
        labels, n = ndimage.label(image, structure=np.ones((3, 3)) if connectivity == 8 else None)
        stats = np.zeros((n + 1, 5), dtype=np.int32)
        stats[:, -1] = np.bincount(labels.ravel(), minlength=n + 1)
        return n + 1, labels.astype(np.int32), stats, np.zeros((n + 1, 2))

    return types.SimpleNamespace(connectedComponentsWithStats=connected_components_with_stats)


def _sam_small_region_cleanup(records: list[dict], params: AmgParams) -> list[dict]:
    """What SamAutomaticMaskGenerator.generate does when min_mask_region_area > 0, applied to
    its own plain output (the same MaskData its _generate_masks step returns)."""
    masks = torch.as_tensor(np.stack([r["segmentation"] for r in records]))
    boxes = np.array([r["bbox"] for r in records], dtype=np.int64)
    boxes[:, 2:] += boxes[:, :2]
    data = MaskData(
        rles=mask_to_rle_pytorch(masks),
        boxes=boxes,
        iou_preds=np.array([r["predicted_iou"] for r in records], dtype=np.float32),
        points=np.array([r["point_coords"][0] for r in records]),
        stability_score=np.array([r["stability_score"] for r in records], dtype=np.float32),
    )
    nms = max(params.box_nms_thresh, params.crop_nms_thresh)
    data = SamAutomaticMaskGenerator.postprocess_small_regions(data, params.min_mask_region_area, nms)
    return [
        {
            "segmentation": rle_to_mask(rle),
            "area": area_from_rle(rle),
            "bbox": [int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1])],
            "predicted_iou": float(iou),
            "point_coords": [list(point)],
            "stability_score": float(stab),
        }
        for rle, b, iou, point, stab in zip(
            data["rles"], data["boxes"], data["iou_preds"], data["points"], data["stability_score"]
        )
    ]


def test_min_mask_region_area_matches_sam(lite_case, monkeypatch):
    try:
        import cv2  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "cv2", _cv2_stand_in())
    params = replace(LITE_PARAMS, min_mask_region_area=40)
    model, image, embedding = lite_case["model"], lite_case["image"], lite_case["embedding"]
    ours = generate_masks(model, embedding, image.shape[:2], params)
    plain = lite_case["ours"]
    changed = [not any(torch.equal(m, p) for p in plain.masks) for m in ours.masks]
    assert any(changed), "clean-up changed no mask: the test would not exercise it"
    _assert_same_as_sam(ours, _sam_small_region_cleanup(lite_case["sam"], params))


def test_no_surviving_mask_gives_empty_set_and_empty_labels(random_case):
    image = random_case["image"]
    params = replace(RANDOM_PARAMS, points_per_side=2, pred_iou_thresh=0.99)
    ours = generate_masks(random_case["model"], random_case["embedding"], image.shape[:2], params)
    assert len(ours) == 0
    assert ours.masks.shape == (0, *image.shape[:2]) and ours.boxes.shape == (0, 4)
    labels = masks_to_labels(ours, image.shape[:2])
    assert labels.dtype == np.uint32 and labels.shape == image.shape[:2] and not labels.any()


def test_masks_to_labels_on_real_masks(lite_case):
    ms = lite_case["ours"]
    labels = masks_to_labels(ms, lite_case["image"].shape[:2])
    ids = np.unique(labels)
    assert list(ids) == list(range(len(ids)))  # 0 plus 1..M consecutive
    assert 1 <= len(ids) - 1 <= len(ms)
    assert np.array_equal(labels > 0, ms.masks.any(dim=0).numpy())
    # Each pixel carries the smallest mask covering it (painted last).
    areas = ms.areas.numpy()
    smallest = np.where(ms.masks.numpy(), areas[:, None, None], np.inf).min(axis=0)
    label_area = np.zeros(len(ids))
    for k in ids[1:]:
        owner = [i for i in range(len(ms)) if ms.masks[i].numpy()[labels == k].all()]
        label_area[k] = min(areas[owner])
    painted = labels > 0
    assert np.array_equal(label_area[labels[painted]], smallest[painted])


def test_params_reject_nonsense():
    from tilesam.config import build

    with pytest.raises(ValueError, match="points_per_side"):
        build(AmgParams, {"points_per_side": 0})
    with pytest.raises(ValueError, match="min_mask_region_area"):
        build(AmgParams, {"min_mask_region_area": -1})
    with pytest.raises(ValueError, match="segmentation.amg.prompt: 'lasso' is not one of"):
        build(AmgParams, {"prompt": "lasso"})
    assert AmgParams(prompt="box", box_sizes=[0.1]).box_sizes == (0.1,)  # as JSON gives it
