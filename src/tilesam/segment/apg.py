"""Automatic prompt generation (APG): point prompts from the decoder's maps, decoded by SAM, merged by NMS.

micro-sam 1.8's ``AutomaticPromptGenerator.generate``, on one window (tile + halo) at a time:

1. prompts (``_derive_point_prompts``): background where the foreground map is below
   ``foreground_threshold``; seeds where the centre distance and the boundary distance are both below
   theirs (raw maps: APG does not smooth them, unlike AIS); connected components of the seeds
   (4-neighbours); one positive point per component, at the maximum of the distance to the
   component's outer boundary, the window's edge counting as boundary (so a point is never on it);
   the first maximum in raster order of the component's bounding box, as ``np.argmax``;
2. masks (``inference.batched_inference``): the points decoded in batches of ``prompts_per_batch`` by
   SAM's prompt encoder and mask decoder from the stored embedding, single-mask or, with
   ``multimasking``, the mask of highest predicted IoU; logits above ``mask_threshold`` (the model's
   when None), stability score at offset 1 around it;
3. optionally (``refine_with_box_prompts``) the same again with each mask's box, extended by 1 % of
   its sides (clipped to the window), as the prompt instead of the point;
4. NMS and painting (``util.apply_nms``, `tilesam.segment.nms`).

Where tilesam differs, and why it cannot change a result micro-sam gets untiled on an image up to
512 x 512: micro-sam computes the distance transform of step 1 in 512 x 512 blocks with a 16-pixel
halo (exact only within 16 pixels of a block's border), tilesam on the whole window (exact); and
micro-sam clips an extended box's x by the image's height and y by its width (the same on a square
image), tilesam each by its own side. micro-sam's tiled APG cannot refine with boxes; here every
window is untiled, so it can.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from segment_anything.modeling import Sam
from skimage.measure import label as connected_components
from skimage.segmentation import find_boundaries

from tilesam.config import ApgParams
from tilesam.resize import resized_shape, scale_boxes, scale_points
from tilesam.segment.ais import check_maps
from tilesam.segment.decoder import binarise_and_score, decode_mask_logits, decode_prompt_tokens
from tilesam.segment.masks import MaskSet
from tilesam.segment.nms import apply_nms

__all__ = ["BOX_EXTENSION", "apg_labels", "component_centres", "decode_prompts", "extended_boxes", "point_prompts"]

BOX_EXTENSION = 0.01  # micro-sam's box_extension of the refinement round (not a parameter there either)
STABILITY_OFFSET = 1.0  # micro-sam's offset of the stability score in batched_inference


def component_centres(components: np.ndarray) -> np.ndarray:
    """(N, 2) int (row, col): per component 1..N, its pixel farthest from the components' outer
    boundaries and the image edge (micro-sam's ``_get_centers``)."""
    free = find_boundaries(components, mode="outer") == 0
    free[0, :] = free[-1, :] = free[:, 0] = free[:, -1] = False
    distances = ndi.distance_transform_edt(free).astype(np.float32)
    centres = []
    for index, box in enumerate(ndi.find_objects(components), start=1):
        if box is None:
            continue
        dist = np.where(components[box] == index, distances[box], 0)
        row, col = np.unravel_index(np.argmax(dist), dist.shape)
        centres.append((row + box[0].start, col + box[1].start))
    return np.array(centres, dtype=np.int64).reshape(-1, 2)


def seed_components(maps: np.ndarray, center_threshold: float, boundary_threshold: float, foreground_threshold: float):
    """Connected components (4-neighbours) of the seed region of raw maps (3, H, W)."""
    seeds = (maps[1] < center_threshold) & (maps[2] < boundary_threshold) & ~(maps[0] < foreground_threshold)
    return connected_components(seeds, background=0, connectivity=1)


def point_prompts(maps: np.ndarray, params: ApgParams, *, source: str = "decoder maps") -> np.ndarray:
    """(N, 2) int (x, y) positive points of one window's maps (3, H, W), one per seed component."""
    maps = check_maps(maps, source)
    components = seed_components(
        maps, params.center_distance_threshold, params.boundary_distance_threshold, params.foreground_threshold
    )
    return component_centres(components)[:, ::-1].copy()


def extended_boxes(boxes: torch.Tensor, shape: tuple[int, int], extension: float = BOX_EXTENSION) -> np.ndarray:
    """(N, 4) float XYXY: SAM's inclusive mask boxes grown by `extension` of their width/height, clipped to the window."""
    b = boxes.cpu().numpy().astype(np.float64)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]  # micro-sam's XYWH of an inclusive box (no + 1)
    x0 = np.maximum(b[:, 0] - w * extension, 0)
    y0 = np.maximum(b[:, 1] - h * extension, 0)
    x1 = np.minimum(b[:, 0] + (1 + extension) * w, shape[1])
    y1 = np.minimum(b[:, 1] + (1 + extension) * h, shape[0])
    return np.stack([x0, y0, x1, y1], axis=1)


@torch.no_grad()
def decode_prompts(
    model: Sam,
    embedding: torch.Tensor,
    shape: tuple[int, int],
    params: ApgParams,
    *,
    points: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> MaskSet:
    """One mask per prompt (x, y points or XYXY boxes in window pixels), decoded from the window's embedding.

    ``points`` of the MaskSet are the prompts' points (for boxes: their centres).
    """
    weight = next(model.mask_decoder.parameters())  # a part it runs: the encoder may be unloaded
    embedding = embedding.to(device=weight.device, dtype=weight.dtype)
    device = weight.device
    img_size = model.image_encoder.img_size
    shape = (int(shape[0]), int(shape[1]))
    input_size = resized_shape(*shape, img_size)
    threshold = model.mask_threshold if params.mask_threshold is None else params.mask_threshold
    if points is not None:
        prompts = scale_points(np.asarray(points, np.float64)[:, None, :], shape, img_size)
        centres = np.asarray(points, np.float64)
    else:
        prompts = scale_boxes(np.asarray(boxes, np.float64), shape, img_size)
        centres = (np.asarray(boxes, np.float64)[:, :2] + np.asarray(boxes, np.float64)[:, 2:]) / 2
    prompts = torch.as_tensor(prompts, dtype=torch.float32, device=device)
    parts = []
    for start in range(0, len(prompts), params.prompts_per_batch):
        batch = prompts[start : start + params.prompts_per_batch]
        if points is not None:
            labels = torch.ones(batch.shape[:2], dtype=torch.float32, device=device)
            sparse, dense = model.prompt_encoder(points=(batch, labels), boxes=None, masks=None)
        else:
            sparse, dense = model.prompt_encoder(points=None, boxes=batch, masks=None)
        iou_preds, mask_tokens, image_tokens = decode_prompt_tokens(model, embedding, sparse, dense)
        low_res = decode_mask_logits(model, mask_tokens, image_tokens, embedding.shape[-2:], params.multimasking)
        ious = iou_preds[:, 1:] if params.multimasking else iou_preds[:, :1]
        best = ious.max(dim=1).indices  # the single mask, or the multimask output the model rates best
        rows = torch.arange(len(best), device=device)
        masks, stability, boxes = binarise_and_score(
            model, low_res[rows, best], input_size, shape, STABILITY_OFFSET, threshold
        )
        parts.append(
            MaskSet(
                masks=masks,
                iou_preds=ious[rows, best].to(torch.float32),
                stability_scores=stability.to(torch.float32),
                boxes=boxes,
                points=torch.as_tensor(centres[start : start + len(batch)], device=device),
            )
        )
    return MaskSet.concat(parts, shape, device)


def window_masks(
    model: Sam, embedding: torch.Tensor, maps: np.ndarray, params: ApgParams, *, source: str = ""
) -> MaskSet:
    """Steps 1-3 for one window: its prompts' masks (after the box round, if on), before NMS."""
    shape = (int(maps.shape[1]), int(maps.shape[2]))
    points = point_prompts(maps, params, source=source or "decoder maps")
    if len(points) == 0:
        return MaskSet.empty(shape)
    masks = decode_prompts(model, embedding, shape, params, points=points)
    if params.refine_with_box_prompts:
        masks = decode_prompts(model, embedding, shape, params, boxes=extended_boxes(masks.boxes, shape))
    return masks


def apg_labels(
    model: Sam, embedding: torch.Tensor, maps: np.ndarray, params: ApgParams | None = None, *, source: str = ""
) -> np.ndarray:
    """Instance labels (uint32, 0 = background) of one window, from its embedding and decoder maps, as micro-sam's APG."""
    params = params or ApgParams()
    masks = window_masks(model, embedding, maps, params, source=source)
    if len(masks) == 0:
        return np.zeros(masks.shape, dtype=np.uint32)
    return apply_nms(masks, params.min_size, params.nms_threshold, params.intersection_over_min)
