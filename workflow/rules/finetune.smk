# Finetuning a model of `models` on a dataset's annotated images. The result is a plain SAM
# checkpoint (plus its model card) that `models:` can list by path, e.g.
# results/finetuned/dsb2018/lite_medsam.pth. Settings come from the optional `finetune:`
# section of the config (keys as the `tilesam finetune` options, with underscores).
FINETUNE = config.get("finetune", {})
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
    "crop_size",
    "augment_variants",
    "val_fraction",
    "val_max_objects",
    "seed",
)


def finetune_inputs(wildcards):
    """The dataset's images with labels (paired by the dataset plan) and the base model's record."""
    records = [
        r for (d, _), r in sorted(IMAGES.items()) if d == wildcards.dataset and r.labels
    ]
    if not records:
        raise WorkflowError(f"finetune: dataset {wildcards.dataset!r} has no labels")
    if any(r.ndim != 2 for r in records):
        raise WorkflowError(f"finetune: dataset {wildcards.dataset!r} is not 2D")
    return {
        "images": [r.image for r in records],
        "labels": [r.labels for r in records],
        "model": f"resources/models/{wildcards.model}.json",
    }


def finetune_args():
    """`tilesam finetune` options from the config's `finetune:` section."""
    unknown = sorted(set(FINETUNE) - set(_FINETUNE_OPTIONS))
    if unknown:
        raise WorkflowError(f"config error in finetune: unknown keys {unknown}")
    args = []
    for key in _FINETUNE_OPTIONS:
        value = FINETUNE.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        args.append(f"--{key.replace('_', '-')} " + " ".join(map(str, values)))
    return " ".join(args)


def mem_mb_finetune(wildcards, input, attempt):
    """Model, optimizer state and activations, plus 4 MB per cached image embedding."""
    variants = FINETUNE.get("augment_variants", 4)
    return int(
        (2 * _model_mb(wildcards.model) + 4 * variants * len(input.images)) * attempt
    )


def runtime_finetune(wildcards, attempt):
    """Minutes: CPU-sized (about half a second per object and prompting pass)."""
    steps = FINETUNE.get("iterations", 500)
    passes = FINETUNE.get("objects", 8) * FINETUNE.get("sub_iterations", 3)
    return int((30 + steps * passes * 0.6 / 60) * attempt)


rule finetune:
    """Finetune a model on a dataset's annotated images (resumes an interrupted run)."""
    input:
        unpack(finetune_inputs),
    output:
        checkpoint="results/finetuned/{dataset}/{model}.pth",
        card="results/finetuned/{dataset}/{model}.json",
    log:
        "logs/finetune/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/finetune/{dataset}/{model}.tsv"
    conda:
        "../envs/tilesam.yaml"
    threads: model_threads()
    resources:
        gpu=device_gpus(),
        mem_mb=mem_mb_finetune,
        runtime=runtime_finetune,
    params:
        spec=lambda wildcards: MODEL_SPECS[wildcards.model],
        name="{model}-ft-{dataset}",
        device=config["device"],
        args=finetune_args(),
    shell:
        "tilesam finetune --model {params.spec:q} --images {input.images:q} "
        "--labels {input.labels:q} --out {output.checkpoint:q} --name {params.name:q} "
        "--dataset {wildcards.dataset:q} {params.args} --device {params.device} "
        "--threads {threads} --no-progress 2> {log:q}"
