"""Validation scores: each kept object once per prompt mode, seeded, and summarised per mode."""

from __future__ import annotations

from collections import Counter

from tilesam.finetune.cache import EmbeddingCache
from tilesam.finetune.data import ImageSet, Sample
from tilesam.finetune.validate import EVAL_MODES, validate_prompts
from tilesam.models import resolve


def test_validation_scores_each_kept_object_once_per_mode(lite_medsam, data, embeddings):
    images = ImageSet([Sample(im, lab) for im, lab in zip(*data)])
    cache = EmbeddingCache(lite_medsam, resolve("lite_medsam").sha256, embeddings)
    result = validate_prompts(lite_medsam, images, cache, max_objects=3, seed=0)
    for mode in EVAL_MODES:
        assert Counter(o.image for o in result.objects if o.mode == mode) == {s.name: 3 for s in images.samples}
    assert all(0 <= o.iou <= 1 and 0 <= o.dice <= 1 for o in result.objects)
    assert set(result.msa) == {(s.name, m) for s in images.samples for m in EVAL_MODES}
    summary = result.summary()
    assert set(summary) == {f"{m}_{k}" for m in EVAL_MODES for k in ("iou", "dice", "msa")}
    assert summary["box_iou"] > 0.5  # a box around a nucleus finds it
    assert summary["box_iou"] > summary["point_iou"]  # LiteMedSAM was trained on boxes only
    assert validate_prompts(lite_medsam, images, cache, max_objects=3, seed=0) == result  # the subset is seeded
