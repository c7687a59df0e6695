"""The parameters of each stage, as data classes: what a job can be told.

The workflow's config sections map onto these (see workflow/schemas/config.schema.yaml).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass
class AmgParams:
    """AMG settings; defaults are micro-sam's automatic segmentation defaults.

    ``with_background`` is micro-sam's labelling option (the label covering the most pixels is
    taken as background when it outgrows the unlabelled area); it is used by ``masks_to_labels``.
    ``crop_nms_thresh`` only matters for the NMS that follows ``min_mask_region_area`` clean-up,
    where SAM uses ``max(box_nms_thresh, crop_nms_thresh)``. ``prompt: box`` prompts a grid of
    boxes (sides ``box_sizes``) instead of points, for box-only models such as LiteMedSAM.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_nms_thresh: float = 0.7
    min_mask_region_area: int = 0
    with_background: bool = True
    prompt: str = "point"  # point: SAM's point grid; box: boxes centred on it
    box_sizes: tuple[float, ...] = (0.06, 0.12, 0.24)  # box sides as fractions of the window's longer side

    def __post_init__(self) -> None:
        if self.points_per_side < 1 or self.points_per_batch < 1:
            raise ValueError("points_per_side and points_per_batch must be positive")
        if self.min_mask_region_area < 0:
            raise ValueError("min_mask_region_area must be >= 0")
        if self.prompt not in ("point", "box"):
            raise ValueError(f"unknown AMG prompt {self.prompt!r}; use point or box")
        self.box_sizes = tuple(self.box_sizes)  # JSON gives a list


@dataclass(frozen=True)
class StitchParams:
    """Everything `stitch` can be told; the defaults suit SAM's automatic masks."""

    iou_threshold: float = 0.5  # tiles: match instances whose overlap-IoU is at least this
    fill_background: bool = True  # tiles: background pixels take the object a neighbour tile sees there
    link_iou_threshold: float = 0.5  # volumes: link objects of adjacent sections at least this similar
    close_gaps: bool = True  # volumes: link z to z+2 where neither has a partner in z+1
    min_z_extent: int = 1  # volumes: drop objects spanning fewer sections
    workers: int | None = None  # threads; None: up to 4, as many as there are cores


TRAINABLE_PARTS: tuple[str, ...] = ("image_encoder", "prompt_encoder", "mask_decoder")


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything that decides the finetuned weights (it is part of the resume fingerprint)."""

    iterations: int = 500
    iterations_per_epoch: int | None = None  # None: one pass over the training images
    images_per_batch: int = 1
    objects_per_image: int = 8
    sub_iterations: int = 3
    box_probability: float = 0.5
    max_points: int = 3
    train_parts: tuple[str, ...] = ("mask_decoder", "prompt_encoder")
    lr: float = 1e-4
    prompt_encoder_lr_factor: float = 1.0  # its embeddings are single vectors: may need bigger steps
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_factor: float = 0.1
    grad_clip: float = 1.0
    crop_size: int | None = None  # None: whole images
    augment_variants: int = 4  # dihedral variants per image (1: no augmentation, 8: all)
    min_object_pixels: int = 4  # objects smaller than this in the input frame are not trained on
    val_max_objects: int | None = 32
    use_mask_input: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_parts", tuple(self.train_parts))
        unknown = set(self.train_parts) - set(TRAINABLE_PARTS)
        if unknown or not self.train_parts:
            raise ValueError(f"train_parts must be a non-empty subset of {TRAINABLE_PARTS}, got {self.train_parts}")
        positive = ("images_per_batch", "objects_per_image", "sub_iterations", "max_points", "min_object_pixels")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if not 1 <= self.augment_variants <= 8:
            raise ValueError(f"augment_variants must be 1..8 (the dihedral group), got {self.augment_variants}")
        if not 0.0 <= self.box_probability <= 1.0:
            raise ValueError(f"box_probability must be in [0, 1], got {self.box_probability}")
        if self.crop_size is not None and self.crop_size < 16:
            raise ValueError(f"crop_size must be at least 16 pixels, got {self.crop_size}")

    @property
    def encoder_frozen(self) -> bool:
        return "image_encoder" not in self.train_parts

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Inverse of ``asdict`` (e.g. from a model card); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        if extra := set(values) - known:
            raise ValueError(f"unknown finetune settings: {sorted(extra)}")
        return cls(**values)
