"""The workflow's plan: which images, models, blocks and outputs a config asks for, and what each job needs.

`workflow/rules/common.smk` builds one `Plan` when Snakemake starts, so a bad config fails
before any job, and its input functions only ask the plan. Everything here is plain Python
(no Snakemake, no torch), so it is unit-tested like the rest of the package.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesam import config as schema
from tilesam.data.datasets import DatasetError, ImageRecord, images_of
from tilesam.models.spec import model_id, resolve_spec
from tilesam.tiling import TileGrid

FINETUNED_MARK = "-ft-"  # `<base>-ft-<dataset>`: <base> finetuned on <dataset>


class PlanError(ValueError):
    """The config asks for something that cannot be planned; the message names the key."""


@dataclass(frozen=True)
class ModelMemory:
    """Host memory (MB) to load a model and run it, and encoder activations per tile in a batch.

    Measured on CPU (benchmarks/encoder_speed.py): vit_b peaks at 3.8 GB with one tile per
    batch and 11.2 GB with four (about 2.5 GB a tile), LiteMedSAM (256 px input) at about 2 GB;
    the others follow their size.
    """

    load_mb: int
    per_tile_mb: int


MODEL_MEMORY = {
    "vit_h": ModelMemory(8000, 2500),
    "vit_l": ModelMemory(6000, 2500),
    "vit_b": ModelMemory(4000, 2500),
    "vit_t": ModelMemory(4000, 300),
    "lite_medsam_tinyvit": ModelMemory(4000, 300),
}
# A checkpoint file's architecture is not read at planning time (that needs torch): its size
# tells it (vit_h ~2.5 GB, vit_l ~1.2 GB, vit_b ~375 MB, TinyViT ~40 MB).
_SIZE_ARCHITECTURE = ((2_000_000_000, "vit_h"), (1_000_000_000, "vit_l"), (200_000_000, "vit_b"), (0, "vit_t"))


def finetuned_name(base: str, dataset: str) -> str:
    return f"{base}{FINETUNED_MARK}{dataset}"


def split_finetuned(spec: str, datasets: dict) -> tuple[str, str] | None:
    """(base, dataset) of a model named `<base>-ft-<dataset>` for a dataset of the config, else None."""
    base, sep, dataset = spec.rpartition(FINETUNED_MARK)
    return (base, dataset) if sep and dataset in datasets else None


def architecture_of(spec: str) -> str:
    """A resolved spec's architecture: the registry's card, or guessed from a checkpoint's size."""
    if Path(spec).is_file():
        size = Path(spec).stat().st_size
        return next(arch for floor, arch in _SIZE_ARCHITECTURE if size >= floor)
    from tilesam.models.registry import resolve

    return resolve(spec).architecture


@dataclass
class Plan:
    """Everything the rules ask of a config; built once by `from_config`."""

    config: dict[str, Any]
    images: dict[tuple[str, str], ImageRecord]
    models_of: dict[str, list[str]]  # dataset -> model ids
    specs: dict[str, str]  # model id -> resolved spec (registry name or checkpoint path)
    finetuned: dict[str, tuple[str, str]]  # model id -> (base id, training dataset)
    tiling: schema.Tiling = field(init=False)
    amg: schema.AmgParams = field(init=False)

    def __post_init__(self) -> None:
        self.tiling = schema.build(schema.Tiling, self.config["segmentation"])
        self.amg = schema.build(schema.AmgParams, self.config["segmentation"]["amg"])

    # --- building -------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: dict[str, Any], base: str | Path = ".") -> Plan:
        """Plan a validated config (defaults filled in). Public datasets are fetched here."""
        datasets = config["datasets"]
        images = {}
        for dataset, cfg in datasets.items():
            try:
                for rec in images_of(dataset, cfg, base, offline=config["offline"] or None):
                    images[(dataset, rec.name)] = rec
            except DatasetError as err:
                raise PlanError(f"config error: {err}") from err
        finetuned, specs, models_of = {}, {}, {d: [] for d in datasets}
        for entry in config["models"]:
            pair = split_finetuned(entry, datasets)
            if pair:
                base_id = model_id(_resolve(pair[0]))
                specs.setdefault(base_id, _resolve(pair[0]))
                finetuned[entry] = (base_id, pair[1])
            for dataset, cfg in datasets.items():
                spec = entry if pair else _resolve(entry, cfg.get("modality", "other"))
                specs.setdefault(model_id(spec), spec)
                models_of[dataset].append(model_id(spec))
        plan = cls(config, images, models_of, specs, finetuned)
        plan._check()
        return plan

    def _check(self) -> None:
        search = self.search_dataset
        if search is not None:
            where = "config error in segmentation.amg_search"
            if search not in self.config["datasets"]:
                raise PlanError(f"{where}: dataset {search!r} is not in datasets")
            if not all(r.labels for r in self.records(search)):
                raise PlanError(f"{where}: dataset {search!r} needs labels for every image")
        val = self.config["finetune"]["val_dataset"]
        if val is not None and val not in self.config["datasets"]:
            raise PlanError(f"config error in finetune.val_dataset: {val!r} is not in datasets")
        for pair in self.config["compare"]:
            for role in ("vanilla", "finetuned"):
                if pair[role] not in self.specs:
                    raise PlanError(f"config error in compare: {role} model {pair[role]!r} is not in models")

    # --- images and tiles -------------------------------------------------------------------
    def records(self, dataset: str) -> list[ImageRecord]:
        return [r for (d, _), r in sorted(self.images.items()) if d == dataset]

    def record(self, dataset: str, image: str) -> ImageRecord:
        return self.images[(dataset, image)]

    def has_labels(self, dataset: str, image: str) -> bool:
        return self.record(dataset, image).labels is not None

    def grid(self, dataset: str, image: str) -> TileGrid:
        return TileGrid(self.record(dataset, image).shape, self.tiling.tile_shape, self.tiling.halo)

    def n_blocks(self, dataset: str, image: str) -> int:
        return self.grid(dataset, image).n_blocks(self.tiling.tiles_per_block)

    def embedding_stores(self, dataset: str, image: str, model: str) -> list[str]:
        return [
            f"results/embeddings/{dataset}/{image}/{model}/block{b}.zarr" for b in range(self.n_blocks(dataset, image))
        ]

    def block_stores(self, dataset: str, image: str, model: str, method: str) -> list[str]:
        return [
            f"results/segmentation/{dataset}/{image}/{model}/{method}/block{b}.zarr"
            for b in range(self.n_blocks(dataset, image))
        ]

    # --- which datasets are scored ----------------------------------------------------------
    @property
    def search_dataset(self) -> str | None:
        return self.config["segmentation"]["amg_search"].get("dataset")

    def is_tuning(self, dataset: str) -> bool:
        """Datasets that tune (AMG search) or train (finetuning) are not segmented for the table."""
        training = {d for _, d in self.finetuned.values()} | {self.config["finetune"]["val_dataset"]}
        return dataset == self.search_dataset or dataset in training

    def prompt_modes(self, dataset: str) -> list[str]:
        """The dataset's own prompt modes, else the evaluation section's."""
        own = self.config["datasets"][dataset].get("prompts")
        return self.config["evaluation"]["prompts"] if own is None else own

    def scored(self) -> list[tuple[str, str]]:
        """(dataset, image) of every labelled image that is scored."""
        return [(d, i) for (d, i) in sorted(self.images) if self.has_labels(d, i) and not self.is_tuning(d)]

    # --- outputs ----------------------------------------------------------------------------
    def evaluations(self) -> list[str]:
        methods = self.config["segmentation"]["methods"]
        return [
            f"results/evaluation/{d}/{i}/{m}/{method}.json"
            for d, i in self.scored()
            for m in self.models_of[d]
            for method in methods + self.prompt_modes(d)
        ]

    def qualitative_models(self, dataset: str) -> list[str]:
        """Models shown side by side: the compare pairs' models of this dataset, else all of them."""
        paired = [m for pair in self.config["compare"] for m in (pair["vanilla"], pair["finetuned"])]
        chosen = [m for m in dict.fromkeys(paired) if m in self.models_of[dataset]]
        return chosen or self.models_of[dataset]

    def qualitative_inputs(self, dataset: str) -> dict[str, Any]:
        image = next(i for d, i in self.scored() if d == dataset)
        base = f"{dataset}/{image}"
        method = self.config["segmentation"]["methods"][0]
        return {
            "image": f"results/images/{base}.ome.zarr",
            "gt": f"results/labels/{base}.ome.zarr",
            "results": [
                f"results/segmentation/{base}/{m}/{method}/labels.ome.zarr" for m in self.qualitative_models(dataset)
            ],
        }

    def all_outputs(self) -> list[str]:
        stitched = [
            f"results/segmentation/{d}/{i}/{m}/{method}/labels.ome.zarr"
            for (d, i) in sorted(self.images)
            if not self.is_tuning(d)
            for m in self.models_of[d]
            for method in self.config["segmentation"]["methods"]
        ]
        if not self.evaluations():
            return stitched
        labelled = sorted({d for d, _ in self.scored()})
        return [
            *stitched,
            "results/benchmark/table.csv",
            "results/benchmark/table.md",
            *(f"results/benchmark/qualitative_{d}.png" for d in labelled),
        ]

    # --- the AMG threshold search -----------------------------------------------------------
    def search_result(self, dataset: str, model: str) -> list[str]:
        """The validation search's table, which sets the thresholds of every other dataset's AMG."""
        if self.search_dataset is None or self.is_tuning(dataset):
            return []
        return [f"results/benchmark/amg_search/{model}.csv"]

    def search_images(self, model: str) -> list[dict[str, Any]]:
        """Per validation image: its image, ground truth and embedding stores."""
        dataset = self.search_dataset
        return [
            {
                "image": f"results/images/{dataset}/{r.name}.ome.zarr",
                "gt": f"results/labels/{dataset}/{r.name}.ome.zarr",
                "embeddings": self.embedding_stores(dataset, r.name, model),
            }
            for r in self.records(dataset)
        ]

    # --- finetuning -------------------------------------------------------------------------
    def labelled(self, dataset: str) -> list[ImageRecord]:
        records = [r for r in self.records(dataset) if r.labels]
        if not records:
            raise PlanError(f"finetune: dataset {dataset!r} has no labelled images")
        if any(r.ndim != 2 for r in records):
            raise PlanError(f"finetune: dataset {dataset!r} is not 2D")
        return records

    def finetune_inputs(self, dataset: str, base: str) -> dict[str, Any]:
        """The training (and validation) images with labels, and the base model's record."""
        train = self.labelled(dataset)
        val_dataset = self.config["finetune"]["val_dataset"]
        val = self.labelled(val_dataset) if val_dataset else []
        return {
            "images": [r.image for r in train],
            "labels": [r.labels for r in train],
            "val_images": [r.image for r in val],
            "val_labels": [r.labels for r in val],
            "model": f"resources/models/{base}.json",
        }

    # --- resources: memory (MB) and wall time (minutes), doubled per retry -----------------------
    def memory(self, model: str) -> ModelMemory:
        base = self.finetuned.get(model, (model, None))[0]
        return MODEL_MEMORY[architecture_of(self.specs[base])]

    def _window_mpx(self) -> float:
        """Megapixels of one tile plus its halo: what the encoder sees per tile."""
        (ty, tx), (hy, hx) = self.tiling.tile_shape, self.tiling.halo
        return (ty + 2 * hy) * (tx + 2 * hx) / 1e6

    def image_mpx(self, dataset: str, image: str) -> float:
        return math.prod(self.record(dataset, image).shape) / 1e6

    def mem_mb_embed(self, model: str, attempt: int = 1) -> int:
        """Model + a batch of encoder activations + the windows of the block being read."""
        memory = self.memory(model)
        block_mpx = self.tiling.tiles_per_block * self._window_mpx()
        batch = self.config["embeddings"]["batch_size"]
        batch = 1 if batch == "auto" else int(batch)  # auto: 1 on a CPU; a GPU batch lives in GPU memory
        return int((memory.load_mb + memory.per_tile_mb * batch + 50 * block_mpx) * attempt)

    def runtime_embed(self, attempt: int = 1) -> int:
        """Start-up plus 2 minutes per tile (a GPU needs far less, a CPU about that)."""
        return int((10 + 2 * self.tiling.tiles_per_block) * attempt)

    def mem_mb_segment(self, model: str, attempt: int = 1) -> int:
        """Model + one batch of candidate masks at window resolution + the kept masks."""
        masks_mb = 20 * self.amg.points_per_batch * self._window_mpx()
        return int((self.memory(model).load_mb + masks_mb + 1000 * self._window_mpx()) * attempt)

    def runtime_segment(self, attempt: int = 1) -> int:
        """Start-up plus 2 minutes per tile at 32 x 32 points; the point grid sets the cost."""
        points = (self.amg.points_per_side / 32) ** 2
        return int((10 + 2 * self.tiling.tiles_per_block * max(points, 0.25)) * attempt)

    def mem_mb_prompts(self, dataset: str, image: str, model: str, attempt: int = 1) -> int:
        """Model + the image's labels once per iteration (8 of them when iterative) + scoring."""
        return int((self.memory(model).load_mb + 60 * self.image_mpx(dataset, image)) * attempt)

    def mem_mb_image(self, dataset: str, image: str, attempt: int = 1) -> int:
        """Jobs that hold a whole image (import, stitch, evaluate): 32 bytes a pixel."""
        return int((2000 + 32 * self.image_mpx(dataset, image)) * attempt)

    def runtime_image(self, dataset: str, image: str, attempt: int = 1) -> int:
        """10 minutes plus one per 10 megapixels."""
        return int((10 + self.image_mpx(dataset, image) / 10) * attempt)

    def mem_mb_finetune(self, base: str, n_images: int, attempt: int = 1) -> int:
        """Model, optimizer state and activations, plus 4 MB per cached image embedding."""
        variants = self.config["finetune"]["augment_variants"]
        return int((2 * self.memory(base).load_mb + 4 * variants * n_images) * attempt)

    def runtime_finetune(self, attempt: int = 1) -> int:
        """CPU-sized: about half a second per object and prompting pass."""
        ft = self.config["finetune"]
        passes = ft["objects_per_image"] * ft["sub_iterations"]
        return int((30 + ft["iterations"] * passes * 0.6 / 60) * attempt)


def _resolve(entry: str, modality: str = "other") -> str:
    try:
        return resolve_spec(entry, modality=modality)
    except (KeyError, ValueError, FileNotFoundError) as err:
        raise PlanError(f"config error in models: {err}") from err
