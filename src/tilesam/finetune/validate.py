"""Validation: how well a model segments each validation object from one box or one point (model selection)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from segment_anything.modeling import Sam

from tilesam.finetune.cache import EmbeddingCache, view_embedding
from tilesam.finetune.data import ImageSet
from tilesam.finetune.views import View
from tilesam.interactive.prompts import ground_truth_objects, iter_object_masks
from tilesam.metrics import segmentation_scores

EVAL_MODES: tuple[str, ...] = ("box", "point")


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


def validate_prompts(
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
    for i, name in enumerate(images.names):
        labels = _subset_objects(images.labels[i], max_objects, np.random.default_rng([seed, i]))
        ids, true_pixels = ground_truth_objects(labels, relabel=False)
        if ids.size == 0:
            continue
        embedding = view_embedding(model, images, View(i, None, 0), cache, grad=False)
        for mode in modes:
            masks = next(
                iter(iter_object_masks(model, embedding, labels.shape, labels, mode, seed=seed, relabel=False))
            )
            for k, object_id in enumerate(ids):
                iou, dice = _overlap_scores(true_pixels[k], masks.pixels[k])
                objects.append(ObjectScore(name, mode, int(object_id), iou, dice))
            msa[(name, mode)] = segmentation_scores(labels, masks.label_image(), relabel=False).msa
    return PromptEvaluation(objects, msa)
