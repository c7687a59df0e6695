"""What finetuning gains: LiteMedSAM vanilla vs finetuned on dsb2018 nuclei, box and point prompts.

The 45 dsb2018 images sorted by file name are split deterministically: the first ``--train``
(default 30) are for finetuning, of which the last ``--val`` validate (best epoch kept); the
remaining images are the test set. On the test set every (or a seeded subset of ``--test-objects``
per image) ground-truth object is prompted once with its box and once with a single point at its
centre (three masks, the best-rated kept: tilesam.interactive.prompts' protocol), by both models on the same
image embeddings (the image encoder is frozen, so both models share it; this is checked).

Reported per model and prompt: mean IoU and Dice per object, and mSA per image over the prompted
objects. Also checked: finetuning with zero iterations reproduces the base weights exactly.

LiteMedSAM was trained with box prompts only, so its point prompts give empty masks: finetuning
with points and boxes should raise point prompts a lot and box prompts somewhat.

    /tmp/venv/bin/python benchmarks/finetune_gain.py [--train 30] [--val 5] [--iterations 100]
        [--objects-per-image 8] [--sub-iterations 2] [--lr 3e-4] [--prompt-encoder-lr-factor 10]
        [--test-objects 20] [--threads 1] [--fresh]

The finetuning settings are a tilesam.config.FinetuneConfig built from the config schema's
`finetune` defaults and the few this benchmark sets differently (SETTINGS, below); each of its
flags is named after its schema key (the older --objects, --prompt-lr-factor and --val-objects
still work).

Writes benchmarks/out/finetune_gain.csv (the table), finetune_gain_objects.csv (per object),
finetune_gain.json (settings, runtimes, the zero-iteration check) and finetune_gain_losses.png;
the finetuned model itself goes to benchmarks/out/finetune_gain/. A rerun with the same settings
reuses a finished (or resumes an interrupted) finetuning; --fresh trains again from the start.
Runs in about 20 minutes on 2 shared CPU cores. One thread is the default there: under load,
two OpenMP threads on two cores spend more time waiting for each other than computing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tilesam import config as schema

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "dsb2018"
BASE = "lite_medsam"
MODES = ("box", "point")

# Where this benchmark's finetuning differs from the config schema's `finetune` defaults (whose budget
# is sized for 2 CPU cores): it scores box and point prompts, so it trains the SAM parts only, not the
# instance decoder (AIS is the workflow's: config/benchmarks/finetune_offline.yaml).
SETTINGS = {"train_parts": ["mask_decoder", "prompt_encoder"]}
# The FinetuneConfig fields it has flags for (--<key with dashes>), with the flags' older names.
FLAGS = {
    "iterations": (),
    "iterations_per_epoch": (),
    "objects_per_image": ("--objects",),
    "sub_iterations": (),
    "lr": (),
    "prompt_encoder_lr_factor": ("--prompt-lr-factor",),
    "max_points": (),
    "augment_variants": (),
    "val_max_objects": ("--val-objects",),
    "seed": (),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with images/ and labels/")
    p.add_argument("--train", type=int, default=30, help="first N images by name: finetuning")
    p.add_argument("--val", type=int, default=5, help="last N of the finetuning images: validation")
    settings = p.add_argument_group("finetune settings (tilesam.config.FinetuneConfig)")
    defaults = {**schema.defaults("finetune"), **SETTINGS}
    props = schema.section("finetune")["properties"]
    for key, old_names in FLAGS.items():
        settings.add_argument(
            f"--{key.replace('_', '-')}",
            *old_names,
            dest=key,
            type=type(defaults[key]),
            default=defaults[key],
            help=f"{props[key].get('description', '')} (default {defaults[key]})".lstrip(),
        )
    p.add_argument("--test-objects", type=int, default=20, help="objects prompted per test image (0: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="finetune again even if a finished run exists")
    return p.parse_args(argv)


def finetune_config(args: argparse.Namespace) -> schema.FinetuneConfig:
    """The finetuning settings: the schema's defaults, this benchmark's SETTINGS, then the flags."""
    return schema.build(schema.FinetuneConfig, {**SETTINGS, **{key: getattr(args, key) for key in FLAGS}})


def split(args: argparse.Namespace) -> tuple[list, list, list]:
    """Train, validation and test samples: the images sorted by name, cut at --train and --train - --val."""
    from tilesam.finetune.data import pair_files

    samples = pair_files(str(args.data / "images" / "*.tif"), str(args.data / "labels" / "*.tif"))
    return samples[: args.train - args.val], samples[args.train - args.val : args.train], samples[args.train :]


def run_finetune(config, train: list, val: list, work: Path, started: float):
    """Finetune BASE on the train samples (validating on val); its result and its seconds since `started`.

    A reused (finished or resumed) run reports the epochs' recorded times instead.
    """
    from tilesam.finetune.trainer import finetune

    result = finetune(
        BASE,
        [s.image for s in train],
        [s.labels for s in train],
        work / f"{BASE}-ft-dsb2018.pth",
        val_images=[s.image for s in val],
        val_labels=[s.labels for s in val],
        config=config,
        embedding_cache=work / "embeddings",
    )
    seconds = time.perf_counter() - started
    if result.resumed_from > 0:
        seconds = sum(e.seconds for e in result.epochs)
    return result, seconds


def finetune_zero(train: list, work: Path) -> Path:
    """BASE finetuned with zero iterations (its weights must be BASE's, bit for bit)."""
    from tilesam.finetune.trainer import finetune

    zero = finetune(
        BASE,
        [s.image for s in train[:1]],
        [s.labels for s in train[:1]],
        work / "zero.pth",
        config=schema.build(schema.FinetuneConfig, {**SETTINGS, "iterations": 0}),
        name=f"{BASE}-ft-zero",
        progress=False,
    )
    return zero.checkpoint


def max_difference(model, checkpoint: Path) -> float:
    """Max |difference| between a model's weights and a checkpoint's."""
    import torch

    state, other = model.state_dict(), torch.load(checkpoint, weights_only=True)
    return max(float((state[k].double() - other[k].double()).abs().max()) for k in state)


def evaluate(base_model, checkpoint: Path, test: list, work: Path, args: argparse.Namespace) -> dict:
    """Prompted evaluation of the vanilla and the finetuned model on the test samples, on shared embeddings."""
    import torch

    from tilesam.finetune.cache import EmbeddingCache
    from tilesam.finetune.data import ImageSet
    from tilesam.finetune.validate import validate_prompts
    from tilesam.models import load_model, resolve

    tuned_model = load_model(checkpoint, device="cpu")
    base_state, tuned_state = base_model.state_dict(), tuned_model.state_dict()
    encoder_keys = [k for k in base_state if k.startswith("image_encoder.")]
    assert all(torch.equal(base_state[k], tuned_state[k]) for k in encoder_keys), (
        "encoder changed: embeddings not shareable"
    )
    test_set = ImageSet(test)
    cache = EmbeddingCache(base_model, resolve(BASE).sha256, work / "embeddings")
    limit = args.test_objects or None
    return {
        name: validate_prompts(model, test_set, cache, max_objects=limit, seed=args.seed)
        for name, model in (("vanilla", base_model), ("finetuned", tuned_model))
    }


def tables(evaluations: dict):
    """The table (a row per model and prompt: objects, mean IoU, Dice, mSA) and the per-object rows."""
    import pandas as pd

    rows, objects = [], []
    for model, evaluation in evaluations.items():
        summary = evaluation.summary()
        for mode in MODES:
            rows.append(
                {
                    "model": model,
                    "prompt": mode,
                    "objects": sum(1 for o in evaluation.objects if o.mode == mode),
                    "mean_iou": summary[f"{mode}_iou"],
                    "mean_dice": summary[f"{mode}_dice"],
                    "msa": summary[f"{mode}_msa"],
                }
            )
        objects += [{"model": model, **asdict(o)} for o in evaluation.objects]
    return pd.DataFrame(rows), pd.DataFrame(objects)


def finetuned_better(table) -> dict[str, bool]:
    """Per prompt mode: does the finetuned model's mean IoU beat the vanilla one's?"""
    return {
        mode: float(table.query("model == 'finetuned' and prompt == @mode").mean_iou.iloc[0])
        > float(table.query("model == 'vanilla' and prompt == @mode").mean_iou.iloc[0])
        for mode in MODES
    }


def main() -> int:
    args = parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from tilesam.models import load_model

    if not (args.data / "images").is_dir():
        print(f"needs the dsb2018 data in {args.data} (images/, labels/)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    config = finetune_config(args)
    train, val, test = split(args)
    work = OUT_DIR / "finetune_gain"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"finetuning {BASE} on {len(train)} images (validation {len(val)}), testing on {len(test)}", flush=True)
    result, finetune_seconds = run_finetune(config, train, val, work, started)
    zero = finetune_zero(train, work)
    base_model = load_model(BASE, device="cpu")
    zero_difference = max_difference(base_model, zero)
    eval_started = time.perf_counter()
    evaluations = evaluate(base_model, result.checkpoint, test, work, args)
    eval_seconds = time.perf_counter() - eval_started

    table, objects = tables(evaluations)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT_DIR / "finetune_gain.csv", index=False, float_format="%.4f")
    objects.to_csv(OUT_DIR / "finetune_gain_objects.csv", index=False, float_format="%.4f")
    shutil.copyfile(work / f"{BASE}-ft-dsb2018.losses.png", OUT_DIR / "finetune_gain_losses.png")
    total_seconds = time.perf_counter() - started
    better = finetuned_better(table)
    report = {
        "config": asdict(config),
        "train": [s.name for s in train],
        "val": [s.name for s in val],
        "test": [s.name for s in test],
        "best_epoch": result.best_epoch,
        "epochs": [asdict(e) | {"score": e.score} for e in result.epochs],
        "zero_iteration_max_abs_difference": zero_difference,
        "finetune_seconds": finetune_seconds,
        "finetune_reused": result.resumed_from > 0,  # then: the epochs' times as the card records them
        "evaluation_seconds": eval_seconds,
        "total_seconds": total_seconds,
        "threads": args.threads,
        "finetuned_better": better,
    }
    (OUT_DIR / "finetune_gain.json").write_text(json.dumps(report, indent=1))
    print_summary(table, result, zero_difference, (finetune_seconds, eval_seconds, total_seconds), args.threads)
    ok = all(better.values()) and zero_difference == 0.0
    print("OK: finetuned beats vanilla for box and point prompts" if ok else f"FAILED: {better}")
    return 0 if ok else 1


def print_summary(table, result, zero_difference: float, seconds: tuple[float, float, float], threads: int) -> None:
    print(table.to_markdown(index=False, floatfmt=".3f"))
    for e in result.epochs:
        print(f"epoch {e.epoch}: iterations {e.iterations}, train loss {e.train_loss}, validation {e.val}")
    print(f"best epoch {result.best_epoch}; zero-iteration finetune vs base: max |difference| = {zero_difference}")
    finetune_seconds, eval_seconds, total_seconds = seconds
    print(
        f"finetuning {finetune_seconds:.0f} s, evaluation {eval_seconds:.0f} s, total {total_seconds:.0f} s "
        f"({threads} thread(s))"
    )


if __name__ == "__main__":
    sys.exit(main())
