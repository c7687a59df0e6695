"""The parameters of each stage, as data classes, with their defaults read from the config schema.

`workflow/schemas/config.schema.yaml` is the one source of every default and every allowed
name (`tilesam.schema` reads and checks it): each data class here takes its fields' defaults from
its section (`from_schema`), failing at import if a field has no key or a key no field. Rules pass
a whole config section as JSON; `build` turns it into the data class, checked by the schema.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from tilesam.schema import (  # noqa: F401 (the settings' one import: `config.build`, `config.defaults`, ...)
    SCHEMA,
    best_row,
    build,
    check_file,
    complete,
    defaults,
    enum,
    from_schema,
    replace,
    schema,
    section,
)
from tilesam.tiling import TileGrid

METHODS: tuple[str, ...] = enum("segmentation", "methods")  # what `segmentation.methods` may list
AUTO_METHOD = "auto"  # ais where the model has an instance decoder, else amg (resolved by the plan)
SEGMENTERS: tuple[str, ...] = tuple(m for m in METHODS if m != AUTO_METHOD)  # what a segment job runs
PROMPT_MODES: tuple[str, ...] = enum("evaluation", "prompts")  # prompted evaluation modes


@dataclass(frozen=True)
@from_schema("segmentation", workflow_keys=("methods", "amg", "amg_search", "ais", "ais_search", "apg", "apg_search"))
class Tiling:
    """How an image is cut into tiles (each seen with its halo) and tiles into blocks (jobs)."""

    tile_shape: tuple[int, int]
    halo: tuple[int, int]
    tiles_per_block: int  # `auto` is resolved by the plan (`Plan.block_tiles`) before any job sees it
    min_blocks: int

    def grid(self, shape: tuple[int, ...]) -> TileGrid:
        """The tile grid of an image of this (spatial) shape."""
        return TileGrid(tuple(shape), self.tile_shape, self.halo)

    def block_size(self, n_tiles: int) -> int:
        """Tiles per block of an image of n_tiles: at most tiles_per_block, and few enough that the
        image has at least min_blocks blocks (where it has that many tiles)."""
        if not isinstance(self.tiles_per_block, int):
            raise ValueError(
                f"segmentation.tiles_per_block is {self.tiles_per_block!r}, which the workflow's plan turns into a "
                "number of tiles: a job run by hand needs --tiles-per-block N (the workflow's N is in its --config)"
            )
        return max(1, min(self.tiles_per_block, n_tiles // self.min_blocks))

    def n_blocks(self, shape: tuple[int, ...]) -> int:
        """Block jobs of an image of this shape."""
        grid = self.grid(shape)
        return grid.n_blocks(self.block_size(grid.n_tiles))

    def chunks(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Zarr chunks of an image or label image of this shape: one tile of one section."""
        return (1,) * (len(shape) - 2) + tuple(min(t, s) for t, s in zip(self.tile_shape, shape[-2:]))

    def __post_init__(self) -> None:
        for axis, (tile, halo) in enumerate(zip(self.tile_shape, self.halo)):
            if halo > tile:
                raise ValueError(
                    f"segmentation.halo {list(self.halo)} is larger than tile_shape {list(self.tile_shape)} "
                    f"(axis {axis}): each tile would be encoded inside a window more than 3 tiles wide, so every "
                    f"pixel is encoded over 9 times and a tile gets under a third of the encoder's resolution; "
                    f"make tile_shape at least the halo (the halo should exceed half the largest object)"
                )


@dataclass(frozen=True)
@from_schema("embeddings", workflow_keys=("keep_embeddings",))
class EmbedParams:
    """How tiles are embedded: storage dtype, encoder arithmetic, tiles per encoder batch (or auto)."""

    dtype: str
    precision: str
    batch_size: int | str  # a positive number or "auto" (tilesam.embed.auto_batch_size)


@dataclass
@from_schema("segmentation", "amg")
class AmgParams:
    """AMG settings; defaults are micro-sam's automatic segmentation defaults.

    ``with_background`` is micro-sam's labelling option (the label covering the most pixels is
    taken as background when it outgrows the unlabelled area); it is used by ``masks_to_labels``.
    ``crop_nms_thresh`` only matters for the NMS that follows ``min_mask_region_area`` clean-up,
    where SAM uses ``max(box_nms_thresh, crop_nms_thresh)``. ``prompt: box`` prompts a grid of
    boxes (sides ``box_sizes``) instead of points, for box-only models such as LiteMedSAM.
    """

    points_per_side: int
    points_per_batch: int
    pred_iou_thresh: float
    stability_score_thresh: float
    stability_score_offset: float
    box_nms_thresh: float
    crop_nms_thresh: float
    min_mask_region_area: int
    with_background: bool
    prompt: str  # point: SAM's point grid; box: boxes centred on it
    box_sizes: tuple[float, ...]  # box sides as fractions of the window's longer side

    def __post_init__(self) -> None:
        self.box_sizes = tuple(self.box_sizes)  # JSON gives a list


@dataclass(frozen=True)
@from_schema("segmentation", "ais")
class AisParams:
    """AIS post-processing of the decoder's maps; defaults are micro-sam's `generate` defaults.

    A model card may carry its own (micro-sam's per-model settings); the plan applies them
    under the keys a config sets. ``tiles_per_batch`` is tiles per decoder batch: memory, not results.
    """

    center_distance_threshold: float
    boundary_distance_threshold: float
    foreground_threshold: float
    foreground_smoothing: float
    distance_smoothing: float
    min_size: int
    tiles_per_batch: int

    def postprocessing(self) -> dict[str, float | int]:
        """The settings that decide the labels (everything but the batch size): provenance and tables."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "tiles_per_batch"}


@dataclass(frozen=True)
@from_schema("segmentation", "ais_search", workflow_keys=("dataset",))
class AisSearchGrid:
    """The AIS search's grid: thresholds and smoothing as (start, stop, step), stop included; min sizes listed."""

    center_distance_threshold: tuple[float, float, float]
    boundary_distance_threshold: tuple[float, float, float]
    distance_smoothing: tuple[float, float, float]
    min_size: tuple[int, ...]


@dataclass(frozen=True)
@from_schema("stitch")
class StitchParams:
    """Everything `stitch` can be told; the defaults suit SAM's automatic masks."""

    iou_threshold: float  # tiles: match instances whose overlap-IoU is at least this
    fill_background: bool  # tiles: background pixels take the object a neighbour tile sees there
    link_overlap_threshold: float  # volumes: link objects of adjacent sections sharing this much of the smaller
    close_gaps: bool  # volumes: link z to z+2 where neither has a partner in z+1
    min_z_extent: int  # volumes: drop objects spanning fewer sections
    workers: int | None  # threads; None: up to 4, as many as there are cores


@dataclass(frozen=True)
@from_schema("segmentation", "amg_search", workflow_keys=("dataset",))
class SearchGrid:
    """The AMG threshold search's grid, each as (start, stop, step), stop included."""

    pred_iou_thresh: tuple[float, float, float]
    stability_score_thresh: tuple[float, float, float]


@dataclass(frozen=True)
@from_schema("evaluation", workflow_keys=("prompts",))
class PromptParams:
    """How prompted evaluation runs (the modes themselves are the plan's)."""

    feed_logits: bool  # iterative modes: previous mask logits as mask input (off: micro-sam's default)


@dataclass(frozen=True)
@from_schema("baseline", "params")
class ClassicalParams:
    """The classical baseline: Otsu foreground, distance-transform watershed seeded by h-maxima."""

    sigma: float  # Gaussian smoothing before thresholding (pixels)
    h: float  # h-maxima height of the distance transform (pixels)
    min_size: int  # objects of fewer pixels are dropped
    foreground: str  # auto | bright | dark


@dataclass(frozen=True)
@from_schema("baseline", "search", workflow_keys=("dataset",))
class ClassicalGrid:
    """The classical baseline's search grid: every (sigma, h) pair is tried."""

    sigma_values: tuple[float, ...]
    h_values: tuple[float, ...]


TRAINABLE_PARTS: tuple[str, ...] = enum("finetune", "train_parts")


@dataclass(frozen=True)
@from_schema("finetune", workflow_keys=("val_dataset", "val_fraction"))
class FinetuneConfig:
    """Everything that decides the finetuned weights (it is part of the resume fingerprint).

    A setting may be ``auto`` where its schema key offers it (``x-auto``: its value per kind of
    device, cpu or gpu): the budget of a run sized to where it runs, from one source. `for_device`
    resolves them; a run trains only on resolved settings, which its card records.
    """

    AUTO = "auto"
    DEVICE_KINDS = ("cpu", "gpu")

    iterations: int
    iterations_per_epoch: int | None  # None: one pass over the training images
    images_per_batch: int
    objects_per_image: int
    sub_iterations: int
    box_probability: float
    max_points: int
    train_parts: tuple[str, ...]
    lr: float
    decoder_lr_factor: float  # the instance decoder's learning rate / lr
    decoder_crop: int | str | None  # embedding tokens per side of the decoder's training window; None: all
    decoder_steps: int  # instance-decoder updates per training step (the extra ones train it alone)
    prompt_encoder_lr_factor: float  # its embeddings are single vectors: may need bigger steps
    weight_decay: float
    warmup_fraction: float
    min_lr_factor: float
    grad_clip: float
    crop_size: int | None  # None: whole images
    augment_variants: int  # dihedral variants per image (1: no augmentation, 8: all)
    min_object_pixels: int  # objects smaller than this in the input frame are not trained on
    val_max_objects: int | None
    use_mask_input: bool
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "train_parts", tuple(self.train_parts))
        if not self.trains_decoder:  # no instance decoder, no updates of it: one step is one update of the rest
            object.__setattr__(self, "decoder_steps", 1)
        if self.auto_keys:
            for kind in self.DEVICE_KINDS:  # each kind of device's settings must be valid
                self.for_device(kind)
            return
        # ranges and names are the schema's to check (`build`); here only what ties two keys together
        if self.decoder_steps > 1 and not self.encoder_frozen:
            raise ValueError(
                "decoder_steps > 1 needs train_parts without `image_encoder` (the extra updates train the decoder "
                f"alone on cached embeddings), got {list(self.train_parts)}: set decoder_steps: 1"
            )

    @property
    def auto_keys(self) -> tuple[str, ...]:
        """The settings left to the device (``auto``); an ``auto`` its key does not offer is an error."""
        props = section(*self.__schema_path__)["properties"]
        keys = tuple(f.name for f in fields(self) if isinstance(getattr(self, f.name), str))
        for key in keys:
            if getattr(self, key) != self.AUTO or "x-auto" not in props[key]:
                raise ValueError(f"finetune.{key}: {getattr(self, key)!r} is not a value of it")
        return keys

    def for_device(self, device: str) -> FinetuneConfig:
        """These settings on ``device`` (cpu, cuda, cuda:1, mps): each ``auto`` its schema value for cpu or gpu."""
        kind = "cpu" if str(device).partition(":")[0] == "cpu" else "gpu"
        props = section(*self.__schema_path__)["properties"]
        return dataclasses.replace(self, **{k: props[k]["x-auto"][kind] for k in self.auto_keys})

    @property
    def encoder_frozen(self) -> bool:
        return "image_encoder" not in self.train_parts

    @property
    def trains_decoder(self) -> bool:
        return "decoder" in self.train_parts

    @property
    def trains_sam(self) -> bool:
        """Whether a part of the SAM model is trained (else only the instance decoder)."""
        return any(part != "decoder" for part in self.train_parts)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FinetuneConfig:
        """Inverse of ``asdict`` (e.g. from a model card), checked by the schema like a config."""
        return build(cls, values)


@dataclass(frozen=True)
@from_schema("segmentation", "apg")
class ApgParams:
    """APG settings; defaults are micro-sam's `AutomaticPromptGenerator.generate` defaults.

    ``mask_threshold`` None is the model's own. ``prompts_per_batch`` (micro-sam's ``batch_size``)
    and ``tiles_per_batch`` (the maps, as AIS's) are memory and speed, not results.
    """

    center_distance_threshold: float
    boundary_distance_threshold: float
    foreground_threshold: float
    min_size: int
    multimasking: bool
    nms_threshold: float
    intersection_over_min: bool
    mask_threshold: float | None
    refine_with_box_prompts: bool
    prompts_per_batch: int
    tiles_per_batch: int

    def postprocessing(self) -> dict[str, float | int | bool | None]:
        """The settings that decide the labels (not the batch sizes): provenance and tables."""
        batching = ("prompts_per_batch", "tiles_per_batch")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in batching}


@dataclass(frozen=True)
@from_schema("segmentation", "apg_search", workflow_keys=("dataset",))
class ApgSearchGrid:
    """The APG search's grid (micro-sam's): thresholds as (start, stop, step), stop included; the rest listed."""

    center_distance_threshold: tuple[float, float, float]
    boundary_distance_threshold: tuple[float, float, float]
    min_size: tuple[int, ...]
    nms_threshold: tuple[float, float, float]
    intersection_over_min: tuple[bool, ...]
