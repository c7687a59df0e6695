# Planning and input functions: which images, models, blocks and outputs exist.
# Everything here runs when the workflow starts, so bad config fails before any job.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tilesam.data.datasets import DatasetError, images_of
from tilesam.models.spec import model_id, resolve_spec
from tilesam.tiling import TileGrid

SEG = config["segmentation"]
EMB = config["embeddings"]
TILE_ARGS = "--tile-shape {} {} --halo {} {} --tiles-per-block {}".format(
    *SEG["tile_shape"], *SEG["halo"], SEG["tiles_per_block"]
)


def _plan_images():
    """Public datasets are fetched here, at planning time (TILESAM_OFFLINE also applies)."""
    out = {}
    for dataset, cfg in config["datasets"].items():
        try:
            for rec in images_of(dataset, cfg, offline=config["offline"] or None):
                out[(dataset, rec.name)] = rec
        except DatasetError as err:
            raise WorkflowError(f"config error: {err}")
    return out


def finetuned_base(spec):
    """(base, dataset) of a model named `<base>-ft-<dataset>` for a dataset of the config, else None."""
    base, sep, dataset = spec.rpartition("-ft-")
    if sep and dataset in config["datasets"]:
        resolve_spec(base)
        return base, dataset
    return None


FINETUNED = {
    spec: finetuned_base(spec) for spec in config["models"] if finetuned_base(spec)
}


def _plan_models():
    """Model ids per dataset; `auto` picks by the dataset's modality."""
    out = {}
    for dataset, cfg in config["datasets"].items():
        specs = []
        for spec in config["models"]:
            if spec in FINETUNED:
                specs.append(spec)
                continue
            try:
                specs.append(resolve_spec(spec, modality=cfg.get("modality", "other")))
            except (KeyError, ValueError, FileNotFoundError) as err:
                raise WorkflowError(f"config error in models: {err}")
        out[dataset] = specs
    return out


IMAGES = _plan_images()
SEARCH = SEG["amg_search"] if "dataset" in SEG["amg_search"] else None


def _check_search():
    if SEARCH is None:
        return
    dataset = SEARCH["dataset"]
    if dataset not in config["datasets"]:
        raise WorkflowError(
            f"config error in segmentation.amg_search: dataset {dataset!r} is not in datasets"
        )
    if not all(r.labels for (d, _), r in IMAGES.items() if d == dataset):
        raise WorkflowError(
            f"config error in segmentation.amg_search: dataset {dataset!r} needs labels for every image"
        )


_check_search()
MODEL_SPECS = {model_id(s): s for specs in _plan_models().values() for s in specs}
MODELS_OF = {d: [model_id(s) for s in specs] for d, specs in _plan_models().items()}


wildcard_constraints:
    dataset="[^/]+",
    image="[^/]+",
    model="[^/]+",
    method="[^/]+",
    block=r"\d+",


def record(wildcards):
    return IMAGES[(wildcards.dataset, wildcards.image)]


def n_blocks(wildcards):
    grid = TileGrid(record(wildcards).shape, SEG["tile_shape"], SEG["halo"])
    return grid.n_blocks(SEG["tiles_per_block"])


def block_stores(wildcards):
    return expand(
        "results/segmentation/{dataset}/{image}/{model}/{method}/block{block}.zarr",
        block=range(n_blocks(wildcards)),
        **wildcards,
    )


def embedding_stores(wildcards):
    return _embedding_paths(wildcards.dataset, wildcards.image, wildcards.model)


def _embedding_paths(dataset, image, model):
    grid = TileGrid(IMAGES[(dataset, image)].shape, SEG["tile_shape"], SEG["halo"])
    return [
        f"results/embeddings/{dataset}/{image}/{model}/block{b}.zarr"
        for b in range(grid.n_blocks(SEG["tiles_per_block"]))
    ]


def is_tuning_dataset(dataset):
    """Datasets that tune (AMG search) or train (finetuning) are not segmented for the table."""
    training = {d for _, d in FINETUNED.values()} | {config["finetune"]["val_dataset"]}
    return (SEARCH is not None and dataset == SEARCH["dataset"]) or dataset in training


def amg_search_result(wildcards):
    """The validation search's table, which sets the thresholds of every other dataset's AMG."""
    if SEARCH is None or is_tuning_dataset(wildcards.dataset):
        return []
    return [f"results/benchmark/amg_search/{wildcards.model}.csv"]


def amg_search_inputs(wildcards):
    dataset = SEARCH["dataset"]
    images = sorted(i for (d, i) in IMAGES if d == dataset)
    return {
        "model": f"resources/models/{wildcards.model}.json",
        "images": [f"results/images/{dataset}/{i}.ome.zarr" for i in images],
        "gts": [f"results/labels/{dataset}/{i}.ome.zarr" for i in images],
        "embeddings": [
            p for i in images for p in _embedding_paths(dataset, i, wildcards.model)
        ],
    }


def amg_search_args(wildcards, input):
    """--image/--gt/--embeddings once per validation image."""
    args = []
    for image, gt in zip(input.images, input.gts):
        name = Path(image).name.removesuffix(".ome.zarr")
        prefix = str(Path(image).parent).replace(
            "results/images/", "results/embeddings/", 1
        )
        blocks = [e for e in input.embeddings if e.startswith(f"{prefix}/{name}/")]
        args.append(f"--image {image} --gt {gt} --embeddings {' '.join(blocks)}")
    return " ".join(args)


def has_labels(dataset, image):
    return IMAGES[(dataset, image)].labels is not None


def device_gpus():
    """GPUs a model job asks for; cluster profiles may override the resource."""
    if config["device"] == "cpu":
        return 0
    if config["device"] == "cuda":
        return 1
    import torch

    return int(torch.cuda.is_available())


def embeddings_output(path):
    return directory(path) if EMB["keep_embeddings"] else temp(directory(path))


def evaluations():
    return [
        f"results/evaluation/{d}/{i}/{m}/{method}.json"
        for (d, i) in IMAGES
        if has_labels(d, i) and not is_tuning_dataset(d)
        for m in MODELS_OF[d]
        for method in SEG["methods"] + prompt_modes(d)
    ]


def prompt_modes(dataset):
    """The dataset's own prompt modes, else the evaluation section's."""
    own = config["datasets"][dataset].get("prompts")
    return config["evaluation"]["prompts"] if own is None else own


def qualitative_models(dataset):
    """Models shown side by side: the compare pairs' models of this dataset, else all of them."""
    paired = [
        m for pair in config["compare"] for m in (pair["vanilla"], pair["finetuned"])
    ]
    chosen = [m for m in dict.fromkeys(paired) if m in MODELS_OF[dataset]]
    return chosen or MODELS_OF[dataset]


def qualitative_inputs(wildcards):
    image = next(i for (d, i) in IMAGES if d == wildcards.dataset and has_labels(d, i))
    base = f"{wildcards.dataset}/{image}"
    method = SEG["methods"][0]
    return {
        "image": f"results/images/{base}.ome.zarr",
        "gt": f"results/labels/{base}.ome.zarr",
        "results": [
            f"results/segmentation/{base}/{m}/{method}/labels.ome.zarr"
            for m in qualitative_models(wildcards.dataset)
        ],
    }


def all_outputs():
    stitched = [
        f"results/segmentation/{d}/{i}/{m}/{method}/labels.ome.zarr"
        for (d, i) in IMAGES
        if not is_tuning_dataset(d)
        for m in MODELS_OF[d]
        for method in SEG["methods"]
    ]
    if not evaluations():
        return stitched
    labelled = sorted(
        {d for (d, i) in IMAGES if has_labels(d, i) and not is_tuning_dataset(d)}
    )
    return stitched + [
        "results/benchmark/table.csv",
        "results/benchmark/table.md",
        *expand("results/benchmark/qualitative_{dataset}.png", dataset=labelled),
    ]


# Finetuning (workflow/rules/finetune.smk).
FINETUNE = config["finetune"]
_FINETUNE_OPTIONS = (
    "iterations",
    "iterations_per_epoch",
    "images_per_batch",
    "objects",
    "sub_iterations",
    "box_probability",
    "max_points",
    "train",
    "lr",
    "prompt_lr_factor",
    "crop_size",
    "augment_variants",
    "val_fraction",
    "val_max_objects",
    "seed",
)


def _labelled(dataset):
    records = [r for (d, _), r in sorted(IMAGES.items()) if d == dataset and r.labels]
    if not records:
        raise WorkflowError(f"finetune: dataset {dataset!r} has no labelled images")
    if any(r.ndim != 2 for r in records):
        raise WorkflowError(f"finetune: dataset {dataset!r} is not 2D")
    return records


def finetune_inputs(wildcards):
    """The training (and validation) images with labels, and the base model's record."""
    train = _labelled(wildcards.dataset)
    val = _labelled(FINETUNE["val_dataset"]) if FINETUNE["val_dataset"] else []
    return {
        "images": [r.image for r in train],
        "labels": [r.labels for r in train],
        "val_images": [r.image for r in val],
        "val_labels": [r.labels for r in val],
        "model": f"resources/models/{wildcards.base}.json",
    }


def finetune_args(wildcards, input):
    """`tilesam finetune` options from the config's `finetune:` section."""
    args = []
    if input.val_images:
        args.append(f"--val-images {' '.join(input.val_images)}")
        args.append(f"--val-labels {' '.join(input.val_labels)}")
    for key in _FINETUNE_OPTIONS:
        value = FINETUNE[key] if key in FINETUNE else None
        if value is None or (key == "val_fraction" and input.val_images):
            continue
        values = value if isinstance(value, list) else [value]
        args.append(f"--{key.replace('_', '-')} " + " ".join(map(str, values)))
    return " ".join(args)


def mem_mb_finetune(wildcards, input, attempt):
    """Model, optimizer state and activations, plus 4 MB per cached image embedding."""
    images = len(input.images) + len(input.val_images)
    mb = 2 * _model_mb(wildcards.base) + 4 * FINETUNE["augment_variants"] * images
    return int(mb * attempt)


def runtime_finetune(wildcards, attempt):
    """Minutes: CPU-sized (about half a second per object and prompting pass)."""
    passes = FINETUNE["objects"] * FINETUNE["sub_iterations"]
    return int((30 + FINETUNE["iterations"] * passes * 0.6 / 60) * attempt)


# Cluster resources. Memory (MB) and wall time (minutes) of a job follow the
# work in it -- tiles per block and window size for the model jobs, image size
# for the per-image jobs -- and grow with `attempt`, so a job that ran out of
# memory or time gets twice as much on its first retry (`retries:` in the
# profiles). Site values (account, partitions, GPU model) live only in the
# SLURM profile, never here.
def model_threads():
    """Threads of an embed/segment job: all of `--cores` in a local run.

    A cluster run has no `--cores`; the profile's `set-threads` decides there
    (4 where it does not).
    """
    import sys

    cores = workflow.resource_settings.cores
    return 4 if cores is None or cores == sys.maxsize else cores


def _window_mpx():
    """Megapixels of one tile plus its halo: what the encoder sees per tile."""
    (ty, tx), (hy, hx) = SEG["tile_shape"], SEG["halo"]
    return (ty + 2 * hy) * (tx + 2 * hx) / 1e6


def _image_mpx(wildcards):
    import math

    return math.prod(record(wildcards).shape) / 1e6


# name part -> (MB to load the model and run it, MB of encoder activations per tile in a batch).
# Measured on CPU (benchmarks/encoder_speed.py): vit_b peaks at 3.8 GB with one tile per batch and
# 11.2 GB with four (about 2.5 GB a tile), LiteMedSAM (256 px input) at about 2 GB; the others follow
# their size. First match wins; anything else is taken as vit_b-sized.
_MODEL_MEMORY = {
    "vit_h": (8000, 2500),
    "vit_l": (6000, 2500),
    "lite_medsam": (4000, 300),
    "vit_t": (4000, 300),
}


def _model_memory(model):
    return next(
        (mb for part, mb in _MODEL_MEMORY.items() if part in model), (4000, 2500)
    )


def _model_mb(model):
    """Host memory to load a model and run its encoder."""
    return _model_memory(model)[0]


def mem_mb_embed(wildcards, attempt):
    """Model + a batch of encoder activations + the windows of the block being read."""
    base, per_tile = _model_memory(wildcards.model)
    block_mpx = SEG["tiles_per_block"] * _window_mpx()
    mb = base + per_tile * EMB["batch_size"] + 50 * block_mpx
    return int(mb * attempt)


def runtime_embed(wildcards, attempt):
    """Minutes: start-up plus 2 per tile (a GPU needs far less, a CPU about that)."""
    return int((10 + 2 * SEG["tiles_per_block"]) * attempt)


def mem_mb_segment(wildcards, attempt):
    """Model + one batch of candidate masks at window resolution + the kept masks."""
    amg = SEG["amg"]
    masks_mb = 20 * amg.get("points_per_batch", 64) * _window_mpx()
    mb = _model_mb(wildcards.model) + masks_mb + 1000 * _window_mpx()
    return int(mb * attempt)


def runtime_segment(wildcards, attempt):
    """Minutes: start-up plus 2 per tile at 32x32 points; the point grid sets the cost."""
    points = (SEG["amg"].get("points_per_side", 32) / 32) ** 2
    return int((10 + 2 * SEG["tiles_per_block"] * max(points, 0.25)) * attempt)


def mem_mb_prompts(wildcards, attempt):
    """Model + the image's labels once per iteration (8 of them when iterative) + scoring."""
    return int((_model_mb(wildcards.model) + 60 * _image_mpx(wildcards)) * attempt)


def mem_mb_image(wildcards, attempt):
    """Jobs that hold a whole image (import, stitch, evaluate): 32 bytes a pixel."""
    return int((2000 + 32 * _image_mpx(wildcards)) * attempt)


def runtime_image(wildcards, attempt):
    """Minutes: 10 plus one per 10 megapixels."""
    return int((10 + _image_mpx(wildcards) / 10) * attempt)


def _export_source_dir():
    """`--sdm conda`: workflow/envs/tilesam.yaml installs tilesam from ${TILESAM_SOURCE}.

    Snakemake copies env files to .snakemake/conda/ before conda reads them, so a
    relative pip path there would not point at this repository; an absolute one
    from the environment does (pip expands ${VAR} in requirement lines).
    """
    import os

    os.environ.setdefault("TILESAM_SOURCE", str(workflow.basedir))


_export_source_dir()
