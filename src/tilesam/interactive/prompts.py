"""Where the prompts go: a point or box per ground-truth object, corrective clicks, and the iterations.

Prompts are derived from the ground-truth objects of one tile window and go through SAM's
prompt encoder and mask decoder (:mod:`tilesam.interactive.decoder`) as a batch (all objects at
once, in chunks of `batch_size` to bound memory); the image encoder is never run here, the
embedding was stored before. Placing prompts needs no torch: only the decoder does.

Decisions (micro-sam's evaluation code is the reference where it is explicit):

- Objects are the connected components of the ground truth (`metrics.relabel_gt`), i.e. the
  very objects the metric scores, so a ground-truth object that a tile window cuts in two
  gets a prompt for each piece. Pass relabel=False to prompt the given ids as they are.
- Single positive point: the object pixel farthest from the object's boundary (maximum of the
  Euclidean distance transform), a click in the middle of the object; ties are broken by a
  generator seeded with (seed, object id), so results do not depend on batching or order.
  Single-point prompts are ambiguous, so, as micro-sam does, the first iteration of a point
  start asks for three masks and keeps the one with the highest predicted IoU; every other
  call asks for one mask.
- Box: the object's bounding box, x0, y0, x1, y1 with exclusive ends (as micro-sam), no jitter.
- Iterative prompting (micro-sam: start + 7 corrections): after each iteration each object
  gets one positive point in its false-negative region (object pixels the mask missed) and
  one negative point in its false-positive region (mask pixels outside the object). Where
  micro-sam samples uniformly from these regions, we take the pixel farthest from the
  region's boundary (the middle of the thickest error blob, where a user would click) with
  the same seeded tie-break. An empty region gives no click: its slot holds SAM's padding
  point (label -1), so every object keeps the same number of points and the batch stays
  rectangular. The start box stays in every iteration (as micro-sam). The low-res mask
  logits of the previous iteration are not fed back by default (micro-sam's default,
  `use_masks=False`, with which its published numbers were made); use_mask_input=True
  (`evaluation.feed_logits`) feeds them back as mask_input. Models trained on boxes only,
  such as LiteMedSAM, get worse with clicks and with mask_input: measure, don't assume.
- Predicted label image: each object's mask painted with that object's id, largest mask
  first, so a smaller object lying on a larger one stays visible (as micro-sam's painting).

Masks are kept as flat pixel indices, so memory grows with the objects' area, not with
objects x window size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy.ndimage import distance_transform_edt

from tilesam.config import PROMPT_MODES
from tilesam.metrics import relabel_gt

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

Mode = Literal["point", "box", "iterative_point", "iterative_box"]
MODES: tuple[str, ...] = PROMPT_MODES  # the schema's names
#: iterations of the iterative modes: the start prompt and 7 corrections (micro-sam's protocol)
N_ITERATIONS = 8
PADDING_LABEL = -1  # SAM's "not a point" label
YX = tuple[int, int]


def farthest_from_boundary(pixels: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> YX | None:
    """(y, x) of a region pixel at maximal distance to the region's boundary; None if empty.

    pixels: the region as flat indices into an image of `shape`. The window border counts as
    boundary. Only the region's bounding box is transformed, so the cost scales with the region.
    """
    if pixels.size == 0:
        return None
    ys, xs = np.unravel_index(pixels, shape)
    y0, x0 = ys.min(), xs.min()
    crop = np.zeros((ys.max() - y0 + 3, xs.max() - x0 + 3), dtype=bool)  # one-pixel empty border
    crop[ys - y0 + 1, xs - x0 + 1] = True
    distance = distance_transform_edt(crop)
    best_y, best_x = np.nonzero(distance == distance.max())
    pick = rng.integers(best_y.size)
    return int(best_y[pick] + y0 - 1), int(best_x[pick] + x0 - 1)


def bounding_box(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Box x0, y0, x1, y1 (exclusive ends) of a region given as flat indices."""
    ys, xs = np.unravel_index(pixels, shape)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def error_clicks(
    true_pixels: np.ndarray, pred_pixels: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[YX | None, YX | None]:
    """Next clicks for one object: positive in the missed part, negative in the excess; (y, x) or None.

    Both pixel sets are sorted unique flat indices (as np.flatnonzero gives).
    """
    missed = np.setdiff1d(true_pixels, pred_pixels, assume_unique=True)
    excess = np.setdiff1d(pred_pixels, true_pixels, assume_unique=True)
    return farthest_from_boundary(missed, shape, rng), farthest_from_boundary(excess, shape, rng)


def corrective_points(
    true_mask: np.ndarray, pred_mask: np.ndarray, rng: np.random.Generator
) -> tuple[YX | None, YX | None]:
    """`error_clicks` for dense binary masks of one object."""
    return error_clicks(np.flatnonzero(true_mask), np.flatnonzero(pred_mask), true_mask.shape, rng)


@dataclass(frozen=True)
class ObjectMasks:
    """Predicted masks of the prompted objects, as sorted flat pixel indices into `shape`."""

    ids: np.ndarray
    pixels: list[np.ndarray]
    shape: tuple[int, int]

    def mask(self, k: int) -> np.ndarray:
        """Dense binary mask of the k-th object."""
        out = np.zeros(self.shape, dtype=bool)
        out.flat[self.pixels[k]] = True
        return out

    def label_image(self) -> np.ndarray:
        """Each mask painted with its object's id, largest first (ties by id), smaller ones on top."""
        dtype = np.uint32 if self.ids.size == 0 or self.ids.max() < 2**32 else np.int64
        labels = np.zeros(self.shape, dtype=dtype)
        areas = np.array([p.size for p in self.pixels], dtype=np.int64)
        for k in np.lexsort((self.ids, -areas)):
            labels.flat[self.pixels[k]] = self.ids[k]
        return labels


def ground_truth_objects(gt_labels: np.ndarray, relabel: bool = True) -> tuple[np.ndarray, list[np.ndarray]]:
    """Object ids of the ground truth and each object's sorted flat pixel indices."""
    gt = relabel_gt(gt_labels) if relabel else np.asarray(gt_labels)
    flat = gt.ravel()
    order = np.argsort(flat, kind="stable")  # stable: indices stay sorted within each id
    ids, starts = np.unique(flat[order], return_index=True)
    groups = np.split(order, starts[1:])
    keep = ids != 0
    return ids[keep], [g for g, k in zip(groups, keep) if k]


def _as_point(click: YX | None, label: int) -> tuple[list[float], int]:
    """SAM point (x, y) and label for a click; a missing click becomes a padding point."""
    if click is None:
        return [0.0, 0.0], PADDING_LABEL
    return [float(click[1]), float(click[0])], label


def _next_clicks(
    true_pixels: list[np.ndarray],
    pred_pixels: list[np.ndarray],
    shape: tuple[int, int],
    rngs: list[np.random.Generator],
) -> tuple[np.ndarray, np.ndarray]:
    """One positive and one negative click per object: points (N, 2, 2) x, y and labels (N, 2)."""
    points, labels = [], []
    for true, pred, rng in zip(true_pixels, pred_pixels, rngs):
        positive, negative = error_clicks(true, pred, shape, rng)
        (pos_xy, pos_label), (neg_xy, neg_label) = _as_point(positive, 1), _as_point(negative, 0)
        points.append([pos_xy, neg_xy])
        labels.append([pos_label, neg_label])
    return np.array(points, dtype=np.float64), np.array(labels, dtype=np.int64)


def iter_object_masks(
    model: Sam,
    embedding: torch.Tensor | np.ndarray,
    original_size: tuple[int, int],
    gt_labels: np.ndarray,
    mode: Mode,
    n_iterations: int = N_ITERATIONS,
    seed: int = 0,
    batch_size: int | None = 64,
    use_mask_input: bool = False,
    relabel: bool = True,
) -> Iterator[ObjectMasks]:
    """Per iteration, the predicted mask of every ground-truth object; see `prompt_objects`."""
    if mode not in MODES:
        raise ValueError(f"unknown prompt mode {mode!r}; expected one of {MODES}")
    shape = (int(original_size[0]), int(original_size[1]))
    if tuple(np.shape(gt_labels)) != shape:
        raise ValueError(f"gt_labels has shape {np.shape(gt_labels)}, the window is {shape}")
    iterations = 1 if mode in ("point", "box") else n_iterations
    ids, true_pixels = ground_truth_objects(gt_labels, relabel)
    if ids.size == 0:
        for _ in range(iterations):
            yield ObjectMasks(ids, [], shape)
        return
    from tilesam.interactive.decoder import PromptDecoder

    decoder = PromptDecoder(model, embedding, shape)
    rngs = [np.random.default_rng([seed, int(i)]) for i in ids]
    start_with_box = mode in ("box", "iterative_box")
    boxes = points = labels = None
    if start_with_box:
        boxes = np.stack([bounding_box(p, shape) for p in true_pixels])
    else:
        starts = [_as_point(farthest_from_boundary(p, shape, r), 1)[0] for p, r in zip(true_pixels, rngs)]
        points, labels = np.array(starts)[:, None], np.ones((len(ids), 1), dtype=np.int64)
    mask_input = None
    for iteration in range(iterations):
        multimask = iteration == 0 and not start_with_box
        pred_pixels, logits = decoder.decode_all(points, labels, boxes, mask_input, multimask, batch_size)
        yield ObjectMasks(ids, pred_pixels, shape)
        if iteration + 1 == iterations:
            break
        new_points, new_labels = _next_clicks(true_pixels, pred_pixels, shape, rngs)
        points = new_points if points is None else np.concatenate([points, new_points], axis=1)
        labels = new_labels if labels is None else np.concatenate([labels, new_labels], axis=1)
        mask_input = logits if use_mask_input else None


def prompt_objects(
    model: Sam,
    embedding: torch.Tensor | np.ndarray,
    original_size: tuple[int, int],
    gt_labels: np.ndarray,
    mode: Mode,
    n_iterations: int = N_ITERATIONS,
    seed: int = 0,
    batch_size: int | None = 64,
    use_mask_input: bool = False,
    relabel: bool = True,
) -> list[np.ndarray]:
    """Predicted label image per iteration, from prompts derived from every ground-truth object.

    embedding: the window's stored image embedding (1, 256, 64, 64); original_size: the window's
    (h, w); gt_labels: its ground truth (h, w). 'point' and 'box' give one iteration, the
    iterative modes n_iterations (the start plus n_iterations - 1 corrections). Score
    iteration i with `metrics.segmentation_scores(gt_labels, result[i])`. With relabel=True the
    painted ids are those of `metrics.relabel_gt(gt_labels)`, else those of gt_labels.
    """
    results = iter_object_masks(
        model, embedding, original_size, gt_labels, mode, n_iterations, seed, batch_size, use_mask_input, relabel
    )
    return [masks.label_image() for masks in results]
