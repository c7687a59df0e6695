"""The training signal: prompts for a view's objects, corrective clicks between passes, and the loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from tilesam.config import FinetuneConfig
from tilesam.finetune.cache import EmbeddingCache, mixed_precision, view_embedding
from tilesam.finetune.data import FinetuneError, ImageSet
from tilesam.finetune.targets import decoder_loss, instance_targets
from tilesam.finetune.views import FrameTargets, View, frame_targets, view_pixels
from tilesam.interactive.prompts import PADDING_LABEL, bounding_box, corrective_points
from tilesam.models.unetr import InstanceDecoder, postprocess_maps

Backward = Callable[[torch.Tensor], None]
"""Backpropagates one part of a step's loss at once (scaled for the mean over the step's views)."""


@dataclass
class TrainingPrompts:
    """Prompts of n objects in input-frame pixels: points (n, k, 2) as x, y, labels (n, k), boxes (n, 4)."""

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    multimask: bool


def initial_prompts(masks: np.ndarray, rng: np.random.Generator, config: FinetuneConfig) -> TrainingPrompts:
    """Boxes for all objects, or 1..max_points random positive points each (one draw per view)."""
    shape = masks.shape[1:]
    pixels = [np.flatnonzero(m) for m in masks]
    if rng.random() < config.box_probability:
        return TrainingPrompts(None, None, np.stack([bounding_box(p, shape) for p in pixels]), multimask=False)
    n_points = int(rng.integers(1, config.max_points + 1))
    points = []
    for p in pixels:
        picks = rng.choice(p, size=n_points, replace=p.size < n_points)
        ys, xs = np.unravel_index(picks, shape)
        points.append(np.stack([xs, ys], axis=1))
    labels = np.ones((len(pixels), n_points), dtype=np.int64)
    return TrainingPrompts(np.array(points, dtype=np.float64), labels, None, multimask=n_points == 1)


def add_corrections(
    prompts: TrainingPrompts, true: np.ndarray, pred: np.ndarray, rng: np.random.Generator
) -> TrainingPrompts:
    """The prompts plus, per object, a positive click in the missed and a negative one in the excess region.

    A missing click (no error of that kind) is SAM's padding point, so the batch stays rectangular.
    """
    new_points, new_labels = [], []
    for t, p in zip(true, pred):
        positive, negative = corrective_points(t, p, rng)
        row, labels = [], []
        for click, label in ((positive, 1), (negative, 0)):
            row.append([0.0, 0.0] if click is None else [float(click[1]), float(click[0])])
            labels.append(PADDING_LABEL if click is None else label)
        new_points.append(row)
        new_labels.append(labels)
    points, labels = np.array(new_points, dtype=np.float64), np.array(new_labels, dtype=np.int64)
    if prompts.points is not None:
        points = np.concatenate([prompts.points, points], axis=1)
        labels = np.concatenate([prompts.labels, labels], axis=1)
    return TrainingPrompts(points, labels, prompts.boxes, multimask=False)


def _decode(
    model: Sam, embedding: torch.Tensor, prompts: TrainingPrompts, mask_input: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits (n, m, 256, 256) and predicted IoUs (n, m); m = 3 for multimask, else 1."""
    device = embedding.device

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    points = None
    if prompts.points is not None:
        points = (tensor(prompts.points), torch.as_tensor(prompts.labels, dtype=torch.int64, device=device))
    boxes = None if prompts.boxes is None else tensor(prompts.boxes)
    with mixed_precision(device):
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        logits, iou = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=prompts.multimask,
        )
    return logits.float(), iou.float()


def _frame_logits(model: Sam, low_res: torch.Tensor, frame: tuple[int, int]) -> torch.Tensor:
    """Low-res logits upsampled to the padded input size and cropped to the image's frame."""
    size = model.image_encoder.img_size
    if low_res.shape[-1] != size:
        low_res = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
    return low_res[..., : frame[0], : frame[1]]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice per mask, over the last two axes (targets broadcast over the mask axis)."""
    probs = torch.sigmoid(logits)
    intersection = (probs * targets).sum((-2, -1))
    total = probs.sum((-2, -1)) + targets.sum((-2, -1))
    return 1.0 - (2.0 * intersection + 1.0) / (total + 1.0)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logit > 0) with the targets, per mask; no gradient."""
    pred = logits.detach() > 0
    truth = targets.bool()
    intersection = (pred & truth).sum((-2, -1)).float()
    union = (pred | truth).sum((-2, -1)).float()
    return intersection / union.clamp(min=1.0)


@dataclass(frozen=True)
class LossParts:
    """The loss of one view: its prompted objects' (averaged over the sub-iterations) plus the decoder's."""

    total: torch.Tensor
    mask: float | None  # None: no SAM part is trained, so no prompt loss was computed
    iou: float | None
    decoder: float | None = None  # None: the instance decoder is not trained


def iterative_loss(
    model: Sam,
    embedding: torch.Tensor,
    targets: FrameTargets,
    ids: np.ndarray,
    rng: np.random.Generator,
    config: FinetuneConfig,
    backward: Backward | None = None,
) -> LossParts:
    """Dice + IoU-MSE over ``sub_iterations`` decoder passes with corrective clicks in between.

    With ``backward`` each pass's loss is backpropagated as soon as it is computed: the passes share
    no graph (the corrections and the mask input are detached), so the gradient is the same as one
    backward of the sum, and only one pass's activations are held at a time (SAM's mask decoder
    repeats the embedding per object; finetune_offline's finetune job peaked at 3.93 GB before,
    2.93 GB after). The returned total is then detached.
    """
    true = targets.masks(ids)
    target = torch.as_tensor(true, dtype=torch.float32, device=embedding.device)[:, None]
    prompts = initial_prompts(true, rng, config)
    mask_input = None
    n = config.sub_iterations
    total, mask_sum, iou_sum = embedding.new_zeros(()), 0.0, 0.0
    for step in range(n):
        low_res, iou_pred = _decode(model, embedding, prompts, mask_input)
        logits = _frame_logits(model, low_res, true.shape[1:])
        dice = dice_loss(logits, target)  # (n, m)
        best = dice.argmin(dim=1)  # with three masks, the one closest to the object counts
        rows = torch.arange(len(ids), device=embedding.device)
        mask_loss = dice[rows, best].mean()
        iou_loss = F.mse_loss(iou_pred, mask_iou(logits, target))
        if backward is not None:
            backward((mask_loss + iou_loss) / n)
            total = total + (mask_loss + iou_loss).detach()
        else:
            total = total + mask_loss + iou_loss
        mask_sum, iou_sum = mask_sum + float(mask_loss.detach()), iou_sum + float(iou_loss.detach())
        if step + 1 < n:
            pred = (logits[rows, best] > 0).cpu().numpy()
            prompts = add_corrections(prompts, true, pred, rng)
            mask_input = low_res[rows, best][:, None].detach() if config.use_mask_input else None
    return LossParts(total / n, mask_sum / n, iou_sum / n)


def _windows_with_objects(foreground: torch.Tensor, scale: int, crop: int) -> torch.Tensor:
    """Corners (n, 2), in embedding tokens, of the crop x crop windows that hold foreground.

    A window of background only teaches the decoder nothing about objects (and the distance terms
    of its loss vanish), so only windows with objects are drawn.
    """
    cells = F.max_pool2d(foreground[None, None].float(), scale)  # one value per embedding token
    windows = F.max_pool2d(cells, crop, stride=1)[0, 0]
    return torch.nonzero(windows > 0)


def instance_decoder_loss(
    decoder: InstanceDecoder,
    embedding: torch.Tensor,
    frame_labels: np.ndarray,
    img_size: int,
    rng: np.random.Generator,
    crop: int | None,
) -> torch.Tensor:
    """micro-sam's decoder loss on a view's embedding (1, C, h, w) against its labels in the input frame.

    The targets (foreground, centre and boundary distance) are those of the labels in the padded model
    input, the frame the decoder's maps are post-processed to at inference (``postprocess_maps``). With
    ``crop`` the decoder sees one random window of crop x crop tokens that holds objects, and its maps
    are compared with the same window of the whole view's targets (the per-object normalisation is the
    whole object's, as at inference); without, the whole embedding, cropped to the view's frame.
    """
    fh, fw = frame_labels.shape
    padded = np.zeros((img_size, img_size), frame_labels.dtype)
    padded[:fh, :fw] = frame_labels
    targets = torch.from_numpy(instance_targets(padded)).to(embedding.device)
    side = embedding.shape[-1]
    if crop is None or crop >= side:
        with mixed_precision(embedding.device):
            maps = decoder(embedding)
        maps = postprocess_maps(maps.float(), (fh, fw), (fh, fw), model_size=img_size)
        return decoder_loss(maps, targets[None, :, :fh, :fw])
    scale = img_size // side  # target pixels per embedding token
    corners = _windows_with_objects(targets[0] > 0, scale, crop)
    if corners.shape[0] == 0:
        raise FinetuneError("instance_decoder_loss: the view's labels hold no object")
    i, j = (int(v) for v in corners[rng.integers(corners.shape[0])])
    with mixed_precision(embedding.device):
        maps = decoder(embedding[..., i : i + crop, j : j + crop])
    window = targets[None, :, scale * i : scale * (i + crop), scale * j : scale * (j + crop)]
    return decoder_loss(maps.float(), window)  # the decoder's upscale is the model's: the window's shape


def _pick_objects(targets: FrameTargets, rng: np.random.Generator, n: int) -> np.ndarray:
    """At most n of the view's trainable objects (a seeded choice, in id order)."""
    ids = targets.ids
    return np.sort(rng.choice(ids, size=n, replace=False)) if ids.size > n else ids


def view_loss(
    model: Sam,
    images: ImageSet,
    view: View,
    cache: EmbeddingCache | None,
    rng: np.random.Generator,
    config: FinetuneConfig,
    grad: bool = True,
    decoder: InstanceDecoder | None = None,
    backward: Backward | None = None,
    prompted: bool | None = None,
) -> LossParts | None:
    """Loss of one view's objects (None when the view has no object to train on).

    With a ``decoder`` its loss on the same embedding (computed once, so a trained encoder gets both
    gradients) is added to the prompt loss, as micro-sam trains SAM and its instance decoder together.
    With ``backward`` (training) each part is backpropagated as it is computed (see `iterative_loss`);
    a trained encoder's gradient is gathered on its embedding and backpropagated through it once.
    ``prompted``: whether the prompt loss is computed (default: when a SAM part is trained; without
    it a ``decoder`` must be given).
    """
    prompted = config.trains_sam if prompted is None else prompted
    if not prompted and decoder is None:
        raise ValueError("view_loss: without the prompt loss an instance decoder must be given")
    _, labels = view_pixels(images, view)
    img_size = model.image_encoder.img_size
    targets = frame_targets(labels, img_size, config.min_object_pixels)
    if targets.ids.size == 0:
        return None
    ids = _pick_objects(targets, rng, config.objects_per_image)
    encoded = view_embedding(model, images, view, cache, grad and not config.encoder_frozen)
    embedding = encoded
    if backward is not None and encoded.requires_grad:
        embedding = encoded.detach().requires_grad_()
    with torch.set_grad_enabled(grad):
        if prompted:
            parts = iterative_loss(model, embedding, targets, ids, rng, config, backward)
        else:  # only the decoder is trained: the prompt loss would cost much and teach nothing
            parts = LossParts(embedding.new_zeros(()), None, None)
        if decoder is not None:
            extra = instance_decoder_loss(decoder, embedding, targets.labels, img_size, rng, config.decoder_crop)
            if backward is not None:
                backward(extra)
                extra = extra.detach()
            parts = LossParts(parts.total + extra, parts.mask, parts.iou, float(extra.detach()))
    if embedding is not encoded and embedding.grad is not None:
        encoded.backward(embedding.grad)
    return parts


def prompt_loss(
    model: Sam, images: ImageSet, config: FinetuneConfig, cache: EmbeddingCache | None = None, seed: int = 0
) -> float:
    """Mean training loss over the untransformed whole images, with prompts drawn from ``seed``.

    The same seed gives the same objects and prompts for any model (as long as the masks agree),
    so it compares models on equal terms (e.g. before and after finetuning).
    """
    losses = []
    for i in range(len(images)):
        rng = np.random.default_rng([seed, i])
        parts = view_loss(model, images, View(i, None, 0), cache, rng, config, grad=False)
        if parts is not None:
            losses.append(float(parts.total))
    if not losses:
        raise FinetuneError("prompt_loss: no image has an object to prompt")
    return float(np.mean(losses))
