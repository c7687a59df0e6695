"""Box-grid AMG: the split decoder gives MaskDecoder's masks, bit for bit, for every box that survives."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from tilesam.config import AmgParams
from tilesam.data import synthetic
from tilesam.embed import encode, normalize
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.decoder import binarise_and_score
from tilesam.segment.grids import box_grid
from tilesam.segment.masks import passes_threshold

PARAMS = AmgParams(prompt="box", box_sizes=(0.1, 0.25), points_per_side=4, points_per_batch=8)


def _reference(model, embedding, original_size, params):
    """What box AMG computed before the split: SAM's whole MaskDecoder on every box."""
    img = model.image_encoder.img_size
    input_size = ResizeLongestSide.get_preprocess_shape(*original_size, img)
    boxes = box_grid(params.points_per_side, params.box_sizes, original_size)
    coords = torch.as_tensor(ResizeLongestSide(img).apply_boxes(boxes, original_size)).float()
    masks, ious, scores = [], [], []
    for start in range(0, len(boxes), params.points_per_batch):
        sparse, dense = model.prompt_encoder(
            points=None, boxes=coords[start : start + params.points_per_batch], masks=None
        )
        low_res, iou = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        keep = passes_threshold(iou[:, 0], params.pred_iou_thresh, strict=True)
        if not keep.any():
            continue
        m, s, _ = binarise_and_score(
            model, low_res[keep][:, 0], input_size, original_size, params.stability_score_offset
        )
        stable = passes_threshold(s, params.stability_score_thresh, strict=False)
        masks.append(m[stable])
        ious.append(iou[:, 0][keep][stable])
        scores.append(s[stable])
    return torch.cat(masks), torch.cat(ious), torch.cat(scores)


@pytest.fixture(scope="module")
def lite_embedding(lite_medsam):
    labels = synthetic.make_labels(synthetic.SyntheticSpec("b", (200, 240), 12, (8.0, 18.0), seed=3))
    image = synthetic.render(labels, seed=3)
    with torch.inference_mode():
        return encode(lite_medsam, [normalize(image, (0.0, 255.0))]), image.shape


@pytest.mark.parametrize("thresholds", [(0.0, 0.0), (0.5, 0.6)])
@torch.inference_mode()
def test_box_candidates_equal_mask_decoder(lite_medsam, lite_embedding, thresholds):
    embedding, shape = lite_embedding
    params = replace(PARAMS, pred_iou_thresh=thresholds[0], stability_score_thresh=thresholds[1])
    ours = decode_box_candidates(lite_medsam, embedding, shape, params).maskset
    masks, ious, scores = _reference(lite_medsam, embedding, shape, params)
    assert len(ours) == len(masks) > 0
    # within float rounding (tilesam.segment.two_way reassociates the decoder's products)
    differ = (ours.masks != masks).sum(dim=(1, 2))
    assert (differ <= torch.clamp(masks.sum(dim=(1, 2)) // 500, min=2)).all(), differ
    np.testing.assert_allclose(ours.iou_preds.numpy(), ious.float().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(ours.stability_scores.numpy(), scores.float().numpy(), rtol=0, atol=1e-3)
