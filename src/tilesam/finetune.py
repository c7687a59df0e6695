"""Finetuning: turn a vanilla SAM model into one finetuned on annotated 2D microscopy.

``finetune(base, images, labels, out)`` trains a registered model (or a checkpoint file) on
images with instance labels and writes ``out`` as a plain SAM state dict, so the result loads
with ``load_model(out)`` anywhere; a model card JSON beside it records where it came from, and
:func:`register_finetuned` makes its name (``<base>-ft-<dataset>`` unless given) resolve in the
registry of a process.

How training works, and why (micro-sam's recipe, sized for a CPU):

- A *view* is one training image, or a crop of it (``crop_size``), under one of the 8 dihedral
  transforms (flips and 90-degree rotations). Everything for a view happens in the model's input
  frame: the image resized as SamPredictor resizes it, the labels resized with nearest neighbours,
  prompts in frame pixels, and the loss on the mask logits upsampled to that frame.
- Each step takes ``images_per_batch`` views and up to ``objects_per_image`` ground-truth objects
  of each. Each view is prompted either with the objects' boxes or with 1..``max_points`` random
  positive points (a single point asks for three masks, and the best one counts, as SAM trains).
- Iterative prompting: ``sub_iterations`` decoder passes per step; after each pass every object gets
  one positive click in its missed region and one negative click in its excess region (placed as
  the evaluation in :mod:`tilesam.interactive.prompts` places them), and the pass's logits are fed back as
  ``mask_input``. The loss is averaged over the passes: Dice on the masks plus the MSE between the
  predicted IoU and the IoU the mask really has.
- AdamW on the trained parts only (``train_parts``: any of mask_decoder, prompt_encoder,
  image_encoder), linear warmup then cosine decay, gradient clipping. The prompt encoder may get a
  larger rate (``prompt_encoder_lr_factor``): its point embeddings are single vectors, which Adam
  moves by about ``lr`` per step, too slowly to teach a box-only model (LiteMedSAM) points. The model stays in eval mode:
  SAM has no dropout, and TinyViT's batch norms would be ruined by batches of one image.
- With a frozen image encoder (the default) each view is embedded once and the embedding reused
  (in memory, optionally on disk): that is what makes finetuning feasible on a CPU. Augmentation
  then has to happen before embedding, so each image gets a fixed pool of ``augment_variants``
  dihedral variants (the identity plus randomly chosen others), embedded lazily when first drawn:
  each variant costs one encoder pass, so the pool is a budget, 8 being the whole group.
- One epoch is one pass over the training images (or ``iterations_per_epoch`` steps). After each
  epoch the validation images are scored with single-box and single-point prompts (mean IoU and
  Dice per object); the epoch with the best mean of box and point IoU is the one written out. The
  base model is scored as epoch 0, so finetuning never returns a worse model than it started from
  on the validation set.
- Resumable and deterministic: every epoch draws from a generator seeded with (seed, epoch), and
  the model, optimizer, scheduler, best weights and history go to ``<out>.state.pt`` after each
  epoch, so a rerun continues where an interrupted one stopped and ends with the same weights as
  an uninterrupted run. A state file from different settings is an error, not silently mixed in.
- On a GPU the forward passes run under autocast (bfloat16 where supported, else float16 with a
  gradient scaler); GPU kernels are not bitwise deterministic, CPU runs are.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide
from tqdm import tqdm

from tilesam.config import TRAINABLE_PARTS, FinetuneConfig
from tilesam.data.datasets import stem
from tilesam.embed import model_input, normalize
from tilesam.interactive.prompts import (
    PADDING_LABEL,
    bounding_box,
    corrective_points,
    ground_truth_objects,
    iter_object_masks,
)
from tilesam.metrics import relabel_gt, segmentation_scores
from tilesam.models import ModelCard, file_sha256, load_model, model_info, register, resolve_device
from tilesam.models.fetch import ChecksumError, local_checkpoint, model_path

__all__ = [
    "EmbeddingCache",
    "EpochRecord",
    "FinetuneError",
    "FinetuneResult",
    "FrameTargets",
    "ImageSet",
    "ObjectScore",
    "PromptEvaluation",
    "Prompts",
    "Sample",
    "View",
    "ViewPool",
    "add_corrections",
    "card_path",
    "dice_loss",
    "dihedral",
    "evaluate_prompts",
    "finetune",
    "frame_targets",
    "initial_prompts",
    "pair_files",
    "prompt_loss",
    "register_finetuned",
    "split_samples",
    "state_path",
    "view_pixels",
]

log = logging.getLogger(__name__)

CARD_VERSION = "v1"
EVAL_MODES: tuple[str, ...] = ("box", "point")


class FinetuneError(RuntimeError):
    """Finetuning cannot start or continue (bad data, a state file of other settings, ...)."""


# --- data --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One annotated 2D image: the image file and its instance-label file."""

    image: Path
    labels: Path

    @property
    def name(self) -> str:
        return stem(self.image)


def _expand(paths: str | os.PathLike | Sequence[str | os.PathLike], what: str) -> list[Path]:
    """Globs and/or paths -> sorted existing files; an empty match is an error naming the pattern."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: set[Path] = set()
    for item in items:
        matches = sorted(glob.glob(str(item))) if glob.has_magic(str(item)) else [str(item)]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise FinetuneError(f"{what}: {item!s} matches no file")
        files.update(Path(m) for m in matches)
    return sorted(files)


def pair_files(
    images: str | os.PathLike | Sequence[str | os.PathLike], labels: str | os.PathLike | Sequence[str | os.PathLike]
) -> list[Sample]:
    """Images and label files (globs or lists) paired by file name, sorted by name."""
    image_files, label_files = _expand(images, "images"), _expand(labels, "labels")
    by_name = {stem(p): p for p in label_files}
    missing = [str(p) for p in image_files if stem(p) not in by_name]
    if missing:
        raise FinetuneError(f"images without labels of the same name: {', '.join(missing[:5])}")
    return sorted((Sample(p, by_name[stem(p)]) for p in image_files), key=lambda s: s.name)


def split_samples(samples: Sequence[Sample], val_fraction: float) -> tuple[list[Sample], list[Sample]]:
    """(train, validation): the last ``val_fraction`` of the samples sorted by name validate."""
    ordered = sorted(samples, key=lambda s: s.name)
    n_val = math.ceil(val_fraction * len(ordered)) if val_fraction > 0 else 0
    if n_val >= len(ordered) and n_val:
        raise FinetuneError(f"val_fraction {val_fraction} leaves no training image of {len(ordered)}")
    return ordered[: len(ordered) - n_val], ordered[len(ordered) - n_val :]


def _read_rgb(path: Path) -> np.ndarray:
    """A 2D grayscale or colour image as min/max-normalised uint8 RGB (what SAM sees)."""
    image = np.asarray(tifffile.imread(path))
    if image.ndim == 3 and image.shape[0] in (3, 4) and image.shape[-1] not in (3, 4):
        image = np.moveaxis(image, 0, -1)  # channel-first colour
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]  # drop alpha
    elif image.ndim != 2:
        raise FinetuneError(f"{path}: expected a 2D grayscale or RGB image, got shape {image.shape}")
    return normalize(image, (float(image.min()), float(image.max())))


def _read_labels(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels as connected components (the objects the metrics score)."""
    labels = np.asarray(tifffile.imread(path))
    if labels.shape != shape:
        raise FinetuneError(f"{path}: labels of shape {labels.shape} do not match the image's {shape}")
    return relabel_gt(labels).astype(np.int32)


def _digest(path: Path) -> str:
    """Short content hash of a file: the embedding-cache key of its image."""
    return file_sha256(path, remember=False)[:20]


class ImageSet:
    """Annotated images loaded once: normalised RGB, relabelled labels, and content digests."""

    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)
        self.rgb: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []
        for sample in self.samples:
            rgb = _read_rgb(sample.image)
            self.rgb.append(rgb)
            self.labels.append(_read_labels(sample.labels, rgb.shape[:2]))
        self.digests = [_digest(s.image) for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)


# --- views and the input frame -----------------------------------------------------------------


Window = tuple[int, int, int, int]  # y0, x0, height, width


@dataclass(frozen=True)
class View:
    """One training input: an image (or a crop of it) under one dihedral transform (0..7)."""

    image: int
    window: Window | None
    transform: int


def dihedral(array: np.ndarray, k: int) -> np.ndarray:
    """The k-th of the 8 dihedral transforms (k % 4 quarter turns, then a flip for k >= 4)."""
    out = np.rot90(array, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def _crop_windows(shape: tuple[int, int], crop: int) -> list[Window]:
    """Crops of side ``crop`` at half-crop steps covering the image (the image if it is smaller)."""
    h, w = min(crop, shape[0]), min(crop, shape[1])

    def starts(size: int, side: int) -> list[int]:
        if size <= side:
            return [0]
        return sorted(set(list(range(0, size - side, side // 2)) + [size - side]))

    return [(y, x, h, w) for y in starts(shape[0], h) for x in starts(shape[1], w)]


def view_pixels(images: ImageSet, view: View) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, labels) of a view."""
    rgb, labels = images.rgb[view.image], images.labels[view.image]
    if view.window is not None:
        y, x, h, w = view.window
        rgb, labels = rgb[y : y + h, x : x + w], labels[y : y + h, x : x + w]
    return dihedral(rgb, view.transform), dihedral(labels, view.transform)


def frame_shape(shape: tuple[int, int], img_size: int) -> tuple[int, int]:
    """Size of an image of ``shape`` in the model's input frame (longest side = img_size)."""
    return ResizeLongestSide.get_preprocess_shape(shape[0], shape[1], img_size)


@dataclass(frozen=True)
class FrameTargets:
    """A view's objects in the model's input frame: labels resized, and the ids big enough to train on."""

    labels: np.ndarray  # (fh, fw)
    ids: np.ndarray

    def masks(self, ids: np.ndarray) -> np.ndarray:
        """(n, fh, fw) boolean masks of the given objects."""
        return self.labels[None] == np.asarray(ids)[:, None, None]


def frame_targets(labels: np.ndarray, img_size: int, min_pixels: int) -> FrameTargets:
    """Nearest-neighbour resize of the labels to the input frame; objects of at least min_pixels."""
    fh, fw = frame_shape(labels.shape, img_size)
    resized = F.interpolate(
        torch.from_numpy(labels.astype(np.float32))[None, None], size=(fh, fw), mode="nearest-exact"
    )
    frame = resized[0, 0].to(torch.int64).numpy()
    ids, counts = np.unique(frame, return_counts=True)
    keep = (ids != 0) & (counts >= min_pixels)
    return FrameTargets(frame, ids[keep])


class ViewPool:
    """The finite set of views each training image may be drawn as (finite, so embeddings can be cached)."""

    def __init__(self, images: ImageSet, config: FinetuneConfig, img_size: int) -> None:
        self.images = images
        self.windows: list[list[Window | None]] = []
        self.variants: list[list[int]] = []
        for i in range(len(images)):
            rng = np.random.default_rng([config.seed, 7919, i])  # the pool is fixed by the seed
            others = rng.permutation(np.arange(1, 8))[: config.augment_variants - 1]
            self.variants.append([0, *sorted(int(k) for k in others)])
            self.windows.append(self._windows_with_objects(i, config, img_size))
        if not any(self.windows):
            raise FinetuneError(f"no training image has an object of at least {config.min_object_pixels} pixels")

    def _windows_with_objects(self, i: int, config: FinetuneConfig, img_size: int) -> list[Window | None]:
        shape = self.images.labels[i].shape
        candidates: list[Window | None] = [None]
        if config.crop_size is not None and max(shape) > config.crop_size:
            candidates = list(_crop_windows(shape, config.crop_size))
        keep = []
        for window in candidates:
            _, labels = view_pixels(self.images, View(i, window, 0))
            if frame_targets(labels, img_size, config.min_object_pixels).ids.size:
                keep.append(window)
        return keep

    def trainable(self) -> list[int]:
        """Images with at least one view that has objects."""
        return [i for i, windows in enumerate(self.windows) if windows]

    def draw(self, image: int, rng: np.random.Generator) -> View:
        windows, variants = self.windows[image], self.variants[image]
        return View(image, windows[rng.integers(len(windows))], variants[rng.integers(len(variants))])


# --- embeddings --------------------------------------------------------------------------------


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision on a GPU (bfloat16 where supported), full precision on a CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def _model_device(model: Sam) -> torch.device:
    return next(model.parameters()).device


class EmbeddingCache:
    """Image embeddings of views computed once by a frozen encoder, in memory and optionally on disk.

    ``namespace`` must identify the encoder's weights (e.g. the base model's sha256): disk
    entries are only valid for the encoder that made them. 4 MB per view in memory.
    """

    def __init__(self, model: Sam, namespace: str, directory: str | os.PathLike | None = None) -> None:
        self.model = model
        self.memory: dict[str, torch.Tensor] = {}
        self.directory = Path(directory) / namespace[:24] if directory is not None else None
        self.computed = 0

    def _compute(self, rgb: np.ndarray) -> torch.Tensor:
        device = _model_device(self.model)
        with torch.no_grad(), _autocast(device):
            return self.model.image_encoder(model_input(self.model, rgb)).float()

    def get(self, key: str, rgb: np.ndarray) -> torch.Tensor:
        """The embedding (1, 256, 64, 64) of ``rgb``, stored under ``key``."""
        if key in self.memory:
            return self.memory[key]
        path = self.directory / f"{key}.npy" if self.directory is not None else None
        if path is not None and path.is_file():
            embedding = torch.from_numpy(np.load(path)).to(_model_device(self.model))
        else:
            embedding = self._compute(rgb)
            self.computed += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
                np.save(tmp, embedding.cpu().numpy())
                tmp.replace(path)
        self.memory[key] = embedding
        return embedding


def view_key(images: ImageSet, view: View) -> str:
    """Cache key of a view: image content, window and transform."""
    window = "full" if view.window is None else "_".join(map(str, view.window))
    return f"{images.digests[view.image]}-{window}-t{view.transform}"


def _embedding(model: Sam, images: ImageSet, view: View, cache: EmbeddingCache | None, grad: bool) -> torch.Tensor:
    """A view's embedding: from the cache when the encoder is frozen, else computed (with grad if training)."""
    rgb, _ = view_pixels(images, view)
    if cache is not None:
        return cache.get(view_key(images, view), rgb)
    with torch.set_grad_enabled(grad), _autocast(_model_device(model)):
        return model.image_encoder(model_input(model, rgb)).float()


# --- prompts and loss --------------------------------------------------------------------------


@dataclass
class Prompts:
    """Prompts of n objects in input-frame pixels: points (n, k, 2) as x, y, labels (n, k), boxes (n, 4)."""

    points: np.ndarray | None
    labels: np.ndarray | None
    boxes: np.ndarray | None
    multimask: bool


def initial_prompts(masks: np.ndarray, rng: np.random.Generator, config: FinetuneConfig) -> Prompts:
    """Boxes for all objects, or 1..max_points random positive points each (one draw per view)."""
    shape = masks.shape[1:]
    pixels = [np.flatnonzero(m) for m in masks]
    if rng.random() < config.box_probability:
        return Prompts(None, None, np.stack([bounding_box(p, shape) for p in pixels]), multimask=False)
    n_points = int(rng.integers(1, config.max_points + 1))
    points = []
    for p in pixels:
        picks = rng.choice(p, size=n_points, replace=p.size < n_points)
        ys, xs = np.unravel_index(picks, shape)
        points.append(np.stack([xs, ys], axis=1))
    labels = np.ones((len(pixels), n_points), dtype=np.int64)
    return Prompts(np.array(points, dtype=np.float64), labels, None, multimask=n_points == 1)


def add_corrections(prompts: Prompts, true: np.ndarray, pred: np.ndarray, rng: np.random.Generator) -> Prompts:
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
    return Prompts(points, labels, prompts.boxes, multimask=False)


def _decode(
    model: Sam, embedding: torch.Tensor, prompts: Prompts, mask_input: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res mask logits (n, m, 256, 256) and predicted IoUs (n, m); m = 3 for multimask, else 1."""
    device = embedding.device

    def tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    points = None
    if prompts.points is not None:
        points = (tensor(prompts.points), torch.as_tensor(prompts.labels, dtype=torch.int64, device=device))
    boxes = None if prompts.boxes is None else tensor(prompts.boxes)
    with _autocast(device):
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
    """The loss of one view's prompted objects, averaged over the sub-iterations."""

    total: torch.Tensor
    mask: float
    iou: float


def iterative_loss(
    model: Sam,
    embedding: torch.Tensor,
    targets: FrameTargets,
    ids: np.ndarray,
    rng: np.random.Generator,
    config: FinetuneConfig,
) -> LossParts:
    """Dice + IoU-MSE over ``sub_iterations`` decoder passes with corrective clicks in between."""
    true = targets.masks(ids)
    target = torch.as_tensor(true, dtype=torch.float32, device=embedding.device)[:, None]
    prompts = initial_prompts(true, rng, config)
    mask_input = None
    total, mask_sum, iou_sum = embedding.new_zeros(()), 0.0, 0.0
    for step in range(config.sub_iterations):
        low_res, iou_pred = _decode(model, embedding, prompts, mask_input)
        logits = _frame_logits(model, low_res, true.shape[1:])
        dice = dice_loss(logits, target)  # (n, m)
        best = dice.argmin(dim=1)  # with three masks, the one closest to the object counts
        rows = torch.arange(len(ids), device=embedding.device)
        mask_loss = dice[rows, best].mean()
        iou_loss = F.mse_loss(iou_pred, mask_iou(logits, target))
        total = total + mask_loss + iou_loss
        mask_sum, iou_sum = mask_sum + float(mask_loss.detach()), iou_sum + float(iou_loss.detach())
        if step + 1 < config.sub_iterations:
            pred = (logits[rows, best] > 0).cpu().numpy()
            prompts = add_corrections(prompts, true, pred, rng)
            mask_input = low_res[rows, best][:, None].detach() if config.use_mask_input else None
    n = config.sub_iterations
    return LossParts(total / n, mask_sum / n, iou_sum / n)


def _pick_objects(targets: FrameTargets, rng: np.random.Generator, n: int) -> np.ndarray:
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
) -> LossParts | None:
    """Loss of one view's objects (None when the view has no object to train on)."""
    _, labels = view_pixels(images, view)
    targets = frame_targets(labels, model.image_encoder.img_size, config.min_object_pixels)
    if targets.ids.size == 0:
        return None
    ids = _pick_objects(targets, rng, config.objects_per_image)
    embedding = _embedding(model, images, view, cache, grad and not config.encoder_frozen)
    with torch.set_grad_enabled(grad):
        return iterative_loss(model, embedding, targets, ids, rng, config)


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


# --- evaluation --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectScore:
    """How well one ground-truth object was segmented from one prompt."""

    image: str
    mode: str
    object_id: int
    iou: float
    dice: float


@dataclass(frozen=True)
class PromptEvaluation:
    """Per-object scores and per-image mSA (of the prompted objects) of one model."""

    objects: list[ObjectScore]
    msa: dict[tuple[str, str], float]  # (image, mode) -> mSA

    def summary(self) -> dict[str, float]:
        """Mean IoU and Dice per object and mean mSA per image, for each mode: {'box_iou': ...}."""
        out: dict[str, float] = {}
        for mode in sorted({o.mode for o in self.objects} | {m for _, m in self.msa}):
            scores = [o for o in self.objects if o.mode == mode]
            out[f"{mode}_iou"] = float(np.mean([o.iou for o in scores])) if scores else float("nan")
            out[f"{mode}_dice"] = float(np.mean([o.dice for o in scores])) if scores else float("nan")
            out[f"{mode}_msa"] = float(np.mean([v for (_, m), v in self.msa.items() if m == mode]))
        return out


def _subset_objects(labels: np.ndarray, max_objects: int | None, rng: np.random.Generator) -> np.ndarray:
    """The labels with at most max_objects objects kept (a seeded random choice), others set to 0."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if max_objects is None or ids.size <= max_objects:
        return labels
    keep = rng.choice(ids, size=max_objects, replace=False)
    return np.where(np.isin(labels, keep), labels, 0)


def _overlap_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of two sorted flat-index pixel sets."""
    intersection = np.intersect1d(true, pred, assume_unique=True).size
    union = true.size + pred.size - intersection
    return intersection / max(union, 1), 2 * intersection / max(true.size + pred.size, 1)


def evaluate_prompts(
    model: Sam,
    images: ImageSet,
    cache: EmbeddingCache | None = None,
    modes: Sequence[str] = EVAL_MODES,
    max_objects: int | None = None,
    seed: int = 0,
) -> PromptEvaluation:
    """Score single-prompt segmentation of every (or a seeded subset of max_objects per image) object.

    Prompts and mask choice are those of :mod:`tilesam.interactive.prompts` (box; point at the object's centre,
    three masks and the best-rated kept), on the whole images. With a cache the embeddings come from
    the cache's encoder, which must be the model's (true for models finetuned with a frozen encoder).
    """
    objects: list[ObjectScore] = []
    msa: dict[tuple[str, str], float] = {}
    for i, sample in enumerate(images.samples):
        labels = _subset_objects(images.labels[i], max_objects, np.random.default_rng([seed, i]))
        ids, true_pixels = ground_truth_objects(labels, relabel=False)
        if ids.size == 0:
            continue
        embedding = _embedding(model, images, View(i, None, 0), cache, grad=False)
        for mode in modes:
            masks = next(
                iter(iter_object_masks(model, embedding, labels.shape, labels, mode, seed=seed, relabel=False))
            )
            for k, object_id in enumerate(ids):
                iou, dice = _overlap_scores(true_pixels[k], masks.pixels[k])
                objects.append(ObjectScore(sample.name, mode, int(object_id), iou, dice))
            msa[(sample.name, mode)] = segmentation_scores(labels, masks.label_image(), relabel=False).msa
    return PromptEvaluation(objects, msa)


# --- the training run --------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """One epoch's losses (training means) and validation scores; epoch 0 is the base model."""

    epoch: int
    iterations: int  # optimizer steps done after this epoch
    train_loss: float | None = None
    mask_loss: float | None = None
    iou_loss: float | None = None
    lr: float | None = None
    val: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def score(self) -> float | None:
        """Model selection score: mean of the box and point IoU on the validation set."""
        if not self.val:
            return None
        return float(np.mean([self.val[f"{m}_iou"] for m in EVAL_MODES]))


@dataclass(frozen=True)
class FinetuneResult:
    """What a finetuning run produced."""

    name: str
    checkpoint: Path
    card: Path
    best_epoch: int
    epochs: list[EpochRecord]
    resumed_from: int  # epochs already done when this call started (0: a fresh run)


def _schedule(config: FinetuneConfig) -> Callable[[int], float]:
    """LR factor per step: linear warmup, then cosine decay to min_lr_factor."""
    warmup = max(1, round(config.warmup_fraction * config.iterations))
    decay = max(1, config.iterations - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / decay)
        return config.min_lr_factor + (1 - config.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def _param_groups(model: Sam, config: FinetuneConfig) -> list[dict[str, Any]]:
    """Freeze all but the trained parts; one optimizer group per trained part, with its learning rate."""
    groups = []
    for part in TRAINABLE_PARTS:
        trained = part in config.train_parts
        params = list(getattr(model, part).parameters())
        for p in params:
            p.requires_grad_(trained)
        if trained:
            factor = config.prompt_encoder_lr_factor if part == "prompt_encoder" else 1.0
            groups.append({"params": params, "lr": config.lr * factor, "name": part})
    return groups


def _cpu_state(model: Sam) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _fingerprint(base_sha: str, config: FinetuneConfig, train: Sequence[Sample], val: Sequence[Sample]) -> str:
    """Hash of everything that decides the weights: a state file of other settings is not resumed."""
    payload = {
        "base": base_sha,
        "config": asdict(config),
        "train": [[str(s.image.resolve()), str(s.labels.resolve())] for s in train],
        "val": [[str(s.image.resolve()), str(s.labels.resolve())] for s in val],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _default_dataset_name(samples: Sequence[Sample]) -> str:
    """The data's folder name (``.../dsb2018/images/*.tif`` -> dsb2018)."""
    parent = Path(os.path.commonpath([str(s.image.resolve().parent) for s in samples]))
    if parent.name.lower() in {"images", "image", "imgs", "raw", "train"} and parent.parent.name:
        parent = parent.parent
    return parent.name or "data"


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


@dataclass
class _State:
    """What a run carries from epoch to epoch (and through its state file)."""

    epoch: int = 0
    iterations: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_model: dict[str, torch.Tensor] | None = None


class _Trainer:
    """One finetuning run: model, optimizer and schedule, data, epochs, state file."""

    def __init__(
        self,
        model: Sam,
        config: FinetuneConfig,
        train: ImageSet,
        val: ImageSet | None,
        cache: EmbeddingCache | None,
        progress: bool,
    ) -> None:
        self.model, self.config, self.train, self.val, self.cache = model, config, train, val, cache
        self.device = _model_device(model)
        groups = _param_groups(model, config)
        self.params = [p for g in groups for p in g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.lr_factor = _schedule(config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.lr_factor)
        fp16 = self.device.type == "cuda" and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.pool = ViewPool(train, config, model.image_encoder.img_size)
        self.order = self.pool.trainable()
        self.per_epoch = config.iterations_per_epoch or max(1, math.ceil(len(self.order) / config.images_per_batch))
        self.n_epochs = math.ceil(config.iterations / self.per_epoch)
        self.progress = progress
        self.state = _State()

    # state file
    def save(self, path: Path, fingerprint: str) -> None:
        s = self.state
        _save_atomic(
            {
                "fingerprint": fingerprint,
                "epoch": s.epoch,
                "iterations": s.iterations,
                "model": _cpu_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "history": [asdict(r) for r in s.history],
                "steps": s.steps,
                "best_epoch": s.best_epoch,
                "best_model": s.best_model,
            },
            path,
        )

    def load(self, path: Path, fingerprint: str) -> None:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise FinetuneError(
                f"{path} holds a finetuning run with other settings, base model or data; delete it to start "
                "afresh (or pass resume=False / --restart)"
            )
        self.model.load_state_dict(saved["model"], strict=True)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["torch_rng"])
        self.state = _State(
            epoch=saved["epoch"],
            iterations=saved["iterations"],
            history=[EpochRecord(**r) for r in saved["history"]],
            steps=list(saved["steps"]),
            best_epoch=saved["best_epoch"],
            best_model=saved["best_model"],
        )

    # epochs
    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        cache = self.cache if self.config.encoder_frozen else None
        result = evaluate_prompts(
            self.model, self.val, cache, EVAL_MODES, self.config.val_max_objects, self.config.seed
        )
        return result.summary()

    def start(self) -> None:
        """Epoch 0: the base model's validation scores (the bar finetuning has to beat)."""
        started = time.perf_counter()
        record = EpochRecord(epoch=0, iterations=0, val=self.validate())
        record.seconds = time.perf_counter() - started
        self.state = _State(history=[record], best_epoch=0, best_model=_cpu_state(self.model))

    def _step(self, views: list[View], rng: np.random.Generator) -> dict[str, float] | None:
        parts = [view_loss(self.model, self.train, v, self.cache, rng, self.config) for v in views]
        parts = [p for p in parts if p is not None]
        if not parts:
            return None
        loss = torch.stack([p.total for p in parts]).mean()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.params, self.config.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.config.lr * self.lr_factor(self.scheduler.last_epoch)  # the base rate of this step
        self.scheduler.step()
        return {
            "loss": float(loss.detach()),
            "mask_loss": float(np.mean([p.mask for p in parts])),
            "iou_loss": float(np.mean([p.iou for p in parts])),
            "lr": lr,
        }

    def run_epoch(self, bar: tqdm) -> EpochRecord:
        started = time.perf_counter()
        epoch = self.state.epoch + 1
        rng = np.random.default_rng([self.config.seed, epoch])
        n_steps = min(self.per_epoch, self.config.iterations - self.state.iterations)
        queue: list[int] = []
        rows = []
        for _ in range(n_steps):
            views = []
            for _ in range(self.config.images_per_batch):
                if not queue:
                    queue = [self.order[i] for i in rng.permutation(len(self.order))]
                views.append(self.pool.draw(queue.pop(), rng))
            row = self._step(views, rng)
            self.state.iterations += 1
            bar.update(1)
            if row is not None:
                row.update(iteration=self.state.iterations, epoch=epoch)
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.3f}")
        self.state.steps.extend(rows)
        record = EpochRecord(epoch=epoch, iterations=self.state.iterations, val=self.validate())
        if rows:
            record.train_loss = float(np.mean([r["loss"] for r in rows]))
            record.mask_loss = float(np.mean([r["mask_loss"] for r in rows]))
            record.iou_loss = float(np.mean([r["iou_loss"] for r in rows]))
            record.lr = rows[-1]["lr"]
        record.seconds = time.perf_counter() - started
        self._keep_best(record)
        self.state.epoch = epoch
        self.state.history.append(record)
        return record

    def _keep_best(self, record: EpochRecord) -> None:
        best = self.state.history[self.state.best_epoch].score if self.state.history else None
        if record.score is None or best is None or record.score > best:
            self.state.best_epoch = record.epoch
            self.state.best_model = _cpu_state(self.model)

    def final_weights(self) -> dict[str, torch.Tensor]:
        assert self.state.best_model is not None
        return self.state.best_model


# --- outputs and registration ------------------------------------------------------------------


def card_path(checkpoint: str | os.PathLike) -> Path:
    """The model card beside a checkpoint: ``model.pth`` -> ``model.json``."""
    return Path(checkpoint).with_suffix(".json")


def state_path(checkpoint: str | os.PathLike) -> Path:
    """The training-state file of a run: ``<out>.state.pt``."""
    return Path(f"{checkpoint}.state.pt")


def _write_losses(path: Path, steps: list[dict[str, float]]) -> None:
    import pandas as pd

    columns = ["iteration", "epoch", "loss", "mask_loss", "iou_loss", "lr"]
    pd.DataFrame(steps, columns=columns).to_csv(path, index=False)


def _plot_losses(path: Path, steps: list[dict[str, float]], history: list[EpochRecord]) -> None:
    """Training loss per step and per epoch, and validation IoU per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    if steps:
        ax.plot([s["iteration"] for s in steps], [s["loss"] for s in steps], alpha=0.3, label="loss per step")
    trained = [r for r in history if r.train_loss is not None]
    ax.plot([r.iterations for r in trained], [r.train_loss for r in trained], "o-", label="loss per epoch")
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (Dice + IoU MSE)")
    validated = [r for r in history if r.val]
    if validated:
        twin = ax.twinx()
        for mode in EVAL_MODES:
            twin.plot(
                [r.iterations for r in validated],
                [r.val[f"{mode}_iou"] for r in validated],
                "s--",
                label=f"val {mode} IoU",
            )
        twin.set_ylabel("validation IoU per object")
        twin.legend(loc="center right")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@dataclass(frozen=True)
class _Base:
    """The base model's identity, for the card and the fingerprint."""

    spec: str  # registry name@version, or the checkpoint's absolute path
    name: str  # the short name the finetuned model's default name starts with
    sha256: str
    architecture: str


def _base_identity(base: str | os.PathLike) -> _Base:
    info = model_info(base)
    if info["sha256"] is None:
        raise FinetuneError(
            f"base model {base}: its sha256 is unknown, so the finetuned model's provenance would be unknown"
        )
    if local_checkpoint(base) is not None:
        return _Base(info["path"], Path(info["path"]).stem, info["sha256"], info["architecture"])
    return _Base(f"{info['name']}@{info['version']}", info["name"], info["sha256"], info["architecture"])


def _write_card(
    path: Path,
    *,
    name: str,
    base: _Base,
    model: Sam,
    checkpoint: Path,
    dataset: str,
    config: FinetuneConfig,
    train: Sequence[Sample],
    val: Sequence[Sample],
    state: _State,
    fingerprint: str,
) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        tilesam_version = version("tilesam")
    except PackageNotFoundError:
        tilesam_version = "unknown"
    card = {
        "name": name,
        "version": CARD_VERSION,
        "architecture": base.architecture,
        "checkpoint": checkpoint.name,
        "sha256": file_sha256(checkpoint, remember=False),
        "base": base.spec,
        "base_sha256": base.sha256,
        "dataset": dataset,
        "image_size": int(model.image_encoder.img_size),
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "train_images": [str(s.image.resolve()) for s in train],
        "train_labels": [str(s.labels.resolve()) for s in train],
        "val_images": [str(s.image.resolve()) for s in val],
        "val_labels": [str(s.labels.resolve()) for s in val],
        "iterations": state.iterations,
        "seed": config.seed,
        "trained_parts": list(config.train_parts),
        "config": asdict(config),
        "epochs": [asdict(r) | {"score": r.score} for r in state.history],
        "best_epoch": state.best_epoch,
        "fingerprint": fingerprint,
        "made_by": f"tilesam {tilesam_version}",
    }
    path.write_text(json.dumps(card, indent=1))
    return card


def _link_into_cache(card: ModelCard, checkpoint: Path) -> None:
    """Put the checkpoint where the registry looks for the card's file (a symlink; a copy where links fail)."""
    target = model_path(card)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if target.resolve() == checkpoint.resolve():
            return
        target.unlink()
    try:
        target.symlink_to(checkpoint.resolve())
    except OSError:
        shutil.copy2(checkpoint, target)


def register_finetuned(card_json: str | os.PathLike) -> ModelCard:
    """Register a finetuned model by its card, so its name loads with ``load_model(name)`` in this process.

    The card's checkpoint (beside the card) is checked against the card's sha256 and linked into
    the model cache under the card's name; a model of the same name registered before is replaced.
    The registry lives in memory: each process that wants the name calls this once.
    """
    card_file = Path(card_json).resolve()
    card = json.loads(card_file.read_text())
    checkpoint = (card_file.parent / card["checkpoint"]).resolve()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{card_file}: its checkpoint {checkpoint} does not exist")
    actual = file_sha256(checkpoint)
    if actual != card["sha256"]:
        raise ChecksumError(f"{checkpoint}: sha256 {actual} differs from the card's {card['sha256']} ({card_file})")
    model_card = ModelCard(
        name=card["name"],
        architecture=card["architecture"],
        version=card["version"],
        url=checkpoint.as_uri(),
        sha256=actual,
        source=f"finetuned by tilesam from {card['base']} on {card['dataset']}; card {card_file}",
        size=checkpoint.stat().st_size,
        pixel_mean=tuple(card["pixel_mean"]),
        pixel_std=tuple(card["pixel_std"]),
        image_size=int(card["image_size"]),
    )
    _link_into_cache(model_card, checkpoint)
    return register(model_card, replace=True)


def _finished(out: Path, fingerprint: str, name: str) -> dict[str, Any] | None:
    """The card of a finished run with these exact settings and name, if its checkpoint is intact."""
    card_file = card_path(out)
    if not (out.is_file() and card_file.is_file()):
        return None
    card = json.loads(card_file.read_text())
    if card.get("fingerprint") != fingerprint or card.get("name") != name:
        return None
    return card if file_sha256(out, remember=False) == card.get("sha256") else None


def _result_from_card(out: Path, card: dict[str, Any], resumed_from: int) -> FinetuneResult:
    epochs = [EpochRecord(**{k: v for k, v in r.items() if k != "score"}) for r in card["epochs"]]
    return FinetuneResult(card["name"], out, card_path(out), card["best_epoch"], epochs, resumed_from)


def finetune(
    base: str | os.PathLike,
    images: str | os.PathLike | Sequence[str | os.PathLike],
    labels: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    val_images: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    val_labels: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    val_fraction: float = 0.0,
    config: FinetuneConfig | None = None,
    name: str | None = None,
    dataset: str | None = None,
    device: str | torch.device | None = None,
    embedding_cache: str | os.PathLike | None = None,
    resume: bool = True,
    keep_state: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[EpochRecord], None] | None = None,
) -> FinetuneResult:
    """Finetune ``base`` (registry name or checkpoint path) on images with instance labels.

    images/labels: globs or lists of files, paired by file name. Validation data: val_images/
    val_labels, or else the last ``val_fraction`` of the training images by name (none by default).
    Writes ``out`` (plain SAM state dict of the best epoch, or the last without validation data),
    ``<out stem>.json`` (the model card), ``.losses.csv`` (loss per step) and ``.losses.png``, and
    registers the model in this process under ``name`` (default ``<base>-ft-<dataset>``).
    An interrupted run resumes from ``<out>.state.pt`` (``resume=False`` starts afresh); a rerun of
    a finished run with the same settings returns its result without training.
    ``on_epoch_end`` is called after each epoch's state is saved (for monitoring, or to stop a run).
    """
    config = config or FinetuneConfig()
    out = Path(out)
    train = pair_files(images, labels)
    if val_images is not None or val_labels is not None:
        if val_images is None or val_labels is None:
            raise FinetuneError("give both val_images and val_labels, or neither")
        val = pair_files(val_images, val_labels)
    else:
        train, val = split_samples(train, val_fraction)
    base_id = _base_identity(base)
    fingerprint = _fingerprint(base_id.sha256, config, train, val)
    dataset = dataset or _default_dataset_name(train)
    name = name or f"{base_id.name}-ft-{dataset}"
    if resume and (card := _finished(out, fingerprint, name)) is not None:
        log.info("%s is already finetuned with these settings; nothing to do", out)
        register_finetuned(card_path(out))
        return _result_from_card(out, card, resumed_from=len(card["epochs"]) - 1)

    torch.manual_seed(config.seed)
    model = load_model(base, device=resolve_device(device))
    cache = EmbeddingCache(model, base_id.sha256, embedding_cache) if config.encoder_frozen else None
    trainer = _Trainer(model, config, ImageSet(train), ImageSet(val) if val else None, cache, progress)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file = state_path(out)
    if resume and state_file.is_file():
        trainer.load(state_file, fingerprint)
        log.info("resuming %s after epoch %d (%d iterations)", out, trainer.state.epoch, trainer.state.iterations)
    else:
        trainer.start()
    resumed_from = trainer.state.epoch
    with tqdm(
        total=config.iterations, initial=trainer.state.iterations, desc=f"finetune {name}", disable=not progress
    ) as bar:
        while trainer.state.epoch < trainer.n_epochs:
            record = trainer.run_epoch(bar)
            trainer.save(state_file, fingerprint)
            log.info("epoch %d: loss %s, validation %s", record.epoch, record.train_loss, record.val)
            if on_epoch_end is not None:
                on_epoch_end(record)

    _save_atomic(trainer.final_weights(), out)
    card = _write_card(
        card_path(out),
        name=name,
        base=base_id,
        model=model,
        checkpoint=out,
        dataset=dataset,
        config=config,
        train=train,
        val=val,
        state=trainer.state,
        fingerprint=fingerprint,
    )
    stem_path = out.with_suffix("")
    _write_losses(Path(f"{stem_path}.losses.csv"), trainer.state.steps)
    _plot_losses(Path(f"{stem_path}.losses.png"), trainer.state.steps, trainer.state.history)
    if not keep_state:
        state_file.unlink(missing_ok=True)
    register_finetuned(card_path(out))
    return _result_from_card(out, card, resumed_from)
