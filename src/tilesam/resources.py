"""What each job asks its executor for: memory (MB) and wall time (minutes), doubled per retry.

One home for every rule's requests, so that a block size, a model or a method that changes a
job's cost changes its request with it. The numbers are measured on CPU (benchmarks/encoder_speed.py
and the jobs' Snakemake benchmark files); a GPU job needs less host memory and far less time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tilesam import config as schema
from tilesam.costs import tiles_per_job
from tilesam.device import gpus_for
from tilesam.models.spec import weights_file

if TYPE_CHECKING:
    from tilesam.plan import Plan


@dataclass(frozen=True)
class ModelMemory:
    """Host memory (MB) to load a model and run it, and encoder activations per tile in a batch.

    Measured on CPU (benchmarks/encoder_speed.py, one thread, 512-pixel tiles): vit_b with the fused
    attention (tilesam.models.vit_attention) peaks at 1.6 GB with one tile per batch and 2.1 GB with
    four (about 0.2 GB a tile; segment-anything's attention: 3.6 and 11.1 GB), LiteMedSAM (256 px
    input) at about 2 GB; vit_l and vit_h follow their size (estimated).
    """

    load_mb: int
    per_tile_mb: int


MODEL_MEMORY = {
    "vit_h": ModelMemory(8000, 800),
    "vit_l": ModelMemory(6000, 600),
    "vit_b": ModelMemory(3000, 300),
    "vit_t": ModelMemory(4000, 300),
    "lite_medsam_tinyvit": ModelMemory(4000, 300),
}
# A checkpoint file's architecture is not read at planning time (that needs torch): its size
# tells it (vit_h ~2.5 GB, vit_l ~1.2 GB, vit_b ~375 MB, TinyViT ~40 MB).
_SIZE_ARCHITECTURE = ((2_000_000_000, "vit_h"), (1_000_000_000, "vit_l"), (200_000_000, "vit_b"), (0, "vit_t"))
SEARCH_MB, SEARCH_MINUTES = 6000, 120  # a parameter search holds its validation images' embeddings
CLASSICAL_BLOCK_MB = 1500  # the classical baseline: one window's smoothing and watershed
CLASSICAL_SEARCH_MB, CLASSICAL_SEARCH_MINUTES = 4000, 60


def architecture_of(spec: str) -> str:
    """A resolved spec's architecture: the registry's card, or guessed from a checkpoint's size."""
    weights = weights_file(spec)
    if weights is not None and weights.is_file():
        size = weights.stat().st_size
        return next(arch for floor, arch in _SIZE_ARCHITECTURE if size >= floor)
    from tilesam.models.registry import resolve

    return resolve(spec).architecture


class Resources:
    """The requests of every rule's job, from a plan (`PLAN.resources` in the rules)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan

    def block_tiles(self) -> int:
        """`tiles_per_block: auto`: the most tiles any planned (model, method) needs so that its jobs' tile
        work is 20x their start-up on the run's device (`costs.tiles_per_job`; `auto` is a GPU where one
        is visible). One size for every image, so blocks and stores agree between jobs."""
        device = self.plan.config["device"]
        kind = "cuda" if device == "cuda" or (device == "auto" and gpus_for("auto")) else "cpu"
        need = [
            tiles_per_job(self.plan.architecture(model), kind, "ais" if method == schema.AUTO_METHOD else method)
            for model in sorted({m for ms in self.plan.models_of.values() for m in ms})
            for method in self.plan.methods_of(model)
        ]
        return max(need, default=1)

    def memory(self, model: str) -> ModelMemory:
        return MODEL_MEMORY[self.plan.architecture(model)]

    def _window_mpx(self) -> float:
        """Megapixels of the largest window (tile plus halo, clipped to the image) of any planned image."""
        (ty, tx), (hy, hx) = self.plan.tiling.tile_shape, self.plan.tiling.halo
        largest = max((r.shape[-2:] for r in self.plan.images.values()), key=math.prod, default=(ty, tx))
        return min(ty + 2 * hy, largest[0]) * min(tx + 2 * hx, largest[1]) / 1e6

    def _block_tiles(self) -> int:
        """Tiles of the largest block of any planned image."""
        tiling = self.plan.tiling
        return max((tiling.block_size(tiling.grid(r.shape).n_tiles) for r in self.plan.images.values()), default=1)

    def image_mpx(self, dataset: str, image: str) -> float:
        return math.prod(self.plan.record(dataset, image).shape) / 1e6

    def embed_mb(self, model: str, attempt: int = 1) -> int:
        """Model + a batch of encoder activations + the windows of the block being read."""
        memory = self.memory(model)
        block_mpx = self._block_tiles() * self._window_mpx()
        batch = self.plan.config["embeddings"]["batch_size"]
        batch = 1 if batch == "auto" else int(batch)  # auto: 1 on a CPU; a GPU batch lives in GPU memory
        return int((memory.load_mb + memory.per_tile_mb * batch + 50 * block_mpx) * attempt)

    def embed_minutes(self, attempt: int = 1) -> int:
        """Start-up plus 2 minutes per tile (a GPU needs far less, a CPU about that)."""
        return int((10 + 2 * self._block_tiles()) * attempt)

    def segment_mb(self, model: str, method: str, attempt: int = 1) -> int:
        """AMG: model + one batch of candidate masks at window resolution + the kept masks.

        AIS: model + decoder + its activations per tile of a batch (at 1024 x 1024 the decoder keeps
        0.8 GB of full-resolution buffers a tile and makes about 1 GB more: 2 GB a tile leaves room;
        vit_b AIS jobs peaked at 2.6 GB on CPU, vs_microsam.py at 27163ed) + the maps and watershed of
        one window.
        """
        if method in ("ais", "apg", "auto"):  # the decoder's maps; apg adds a batch of prompts' masks
            batch = max(self.plan.settings(model, m)["tiles_per_batch"] for m in ("ais", "apg"))
            return int((self.memory(model).load_mb + 500 + 2000 * batch + 200 * self._window_mpx()) * attempt)
        amg = schema.build(schema.AmgParams, self.plan.settings(model, "amg"))
        masks_mb = 20 * amg.points_per_batch * self._window_mpx()
        return int((self.memory(model).load_mb + masks_mb + 1000 * self._window_mpx()) * attempt)

    def segment_minutes(self, model: str, attempt: int = 1) -> int:
        """Start-up plus 2 minutes per tile at 32 x 32 points; the point grid sets the cost (AIS costs less)."""
        amg = schema.build(schema.AmgParams, self.plan.settings(model, "amg"))
        points = (amg.points_per_side / 32) ** 2
        return int((10 + 2 * self._block_tiles() * max(points, 0.25)) * attempt)

    def prompts_mb(self, dataset: str, image: str, model: str, attempt: int = 1) -> int:
        """Model + the image's labels once per iteration (8 of them when iterative) + scoring."""
        return int((self.memory(model).load_mb + 60 * self.image_mpx(dataset, image)) * attempt)

    def image_mb(self, dataset: str, image: str, attempt: int = 1) -> int:
        """Jobs that hold a whole image (import, stitch, evaluate): 32 bytes a pixel."""
        return int((2000 + 32 * self.image_mpx(dataset, image)) * attempt)

    def image_minutes(self, dataset: str, image: str, attempt: int = 1) -> int:
        """10 minutes plus one per 10 megapixels."""
        return int((10 + self.image_mpx(dataset, image) / 10) * attempt)

    def search_mb(self, attempt: int = 1) -> int:
        return SEARCH_MB * attempt

    def search_minutes(self, attempt: int = 1) -> int:
        return SEARCH_MINUTES * attempt

    def classical_block_mb(self, attempt: int = 1) -> int:
        return CLASSICAL_BLOCK_MB * attempt

    def classical_search_mb(self, attempt: int = 1) -> int:
        return CLASSICAL_SEARCH_MB * attempt

    def classical_search_minutes(self, attempt: int = 1) -> int:
        return CLASSICAL_SEARCH_MINUTES * attempt

    def finetune_mb(self, base: str, n_images: int, attempt: int = 1) -> int:
        """Model, optimizer state and activations, plus 4 MB per cached image embedding."""
        variants = self.plan.config["finetune"]["augment_variants"]
        return int((2 * self.memory(base).load_mb + 4 * variants * n_images) * attempt)

    def finetune_minutes(self, attempt: int = 1) -> int:
        """CPU-sized: about half a second per object and prompting pass."""
        ft = self.plan.config["finetune"]
        passes = ft["objects_per_image"] * ft["sub_iterations"]
        return int((30 + ft["iterations"] * passes * 0.6 / 60) * attempt)

    def requests_mb(self) -> dict[str, int]:
        """The first-attempt memory request of every kind of planned job, named for a message."""
        plan, out = self.plan, {}
        models = sorted({m for ms in plan.models_of.values() for m in ms})
        for model in models:
            out[f"embed ({model})"] = self.embed_mb(model)
            for method in plan.methods_of(model):
                out[f"segment ({model}, {method})"] = self.segment_mb(model, method)
        for dataset, image in sorted(plan.images):
            out[f"import/stitch/evaluate of {dataset}/{image}"] = self.image_mb(dataset, image)
            for model in plan.models_of.get(dataset, []) if plan.prompt_modes(dataset) else []:
                out[f"prompt-eval of {dataset}/{image} ({model})"] = self.prompts_mb(dataset, image, model)
        return out

    def check(self, limit_mb: float | None, where: str) -> None:
        """Every request fits `limit_mb` (the machine's memory, `--resources mem_mb` or a profile's), else
        one error naming the largest job, before any job runs."""
        if not limit_mb:
            return
        job, mb = max(self.requests_mb().items(), key=lambda item: item[1], default=("", 0))
        if mb > limit_mb:
            raise ValueError(
                f"the {job} job would ask for {mb} MB of memory, more than {int(limit_mb)} MB ({where}): "
                "make segmentation.tile_shape or tiles_per_block smaller, or the images smaller"
            )
