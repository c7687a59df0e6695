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
        [--objects 8] [--sub-iterations 2] [--lr 3e-4] [--prompt-lr-factor 10] [--test-objects 20] [--threads 1] [--fresh]

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

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "benchmarks" / "out"
DATA = REPO.parent / "shared" / "data" / "dsb2018"
BASE = "lite_medsam"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA, help="folder with images/ and labels/")
    p.add_argument("--train", type=int, default=30, help="first N images by name: finetuning")
    p.add_argument("--val", type=int, default=5, help="last N of the finetuning images: validation")
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--iterations-per-epoch", type=int, default=25)
    p.add_argument("--objects", type=int, default=8, help="objects per image and step")
    p.add_argument("--sub-iterations", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--prompt-lr-factor", type=float, default=10.0, help="the prompt encoder's learning rate / lr")
    p.add_argument("--max-points", type=int, default=3)
    p.add_argument(
        "--augment-variants", type=int, default=1, help="dihedral variants per image (each costs an encoder pass)"
    )
    p.add_argument("--val-objects", type=int, default=10, help="objects scored per validation image")
    p.add_argument("--test-objects", type=int, default=20, help="objects prompted per test image (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="finetune again even if a finished run exists")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    import pandas as pd
    import torch

    torch.set_num_threads(args.threads)
    from tilesam.config import FinetuneConfig
    from tilesam.finetune.cache import EmbeddingCache
    from tilesam.finetune.data import ImageSet, pair_files
    from tilesam.finetune.trainer import finetune
    from tilesam.finetune.validate import validate_prompts
    from tilesam.models import load_model, resolve

    if not (args.data / "images").is_dir():
        print(f"needs the dsb2018 data in {args.data} (images/, labels/)", file=sys.stderr)
        return 2
    started = time.perf_counter()
    samples = pair_files(str(args.data / "images" / "*.tif"), str(args.data / "labels" / "*.tif"))
    train, val, test = (
        samples[: args.train - args.val],
        samples[args.train - args.val : args.train],
        samples[args.train :],
    )
    work = OUT_DIR / "finetune_gain"
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    config = FinetuneConfig(
        iterations=args.iterations,
        iterations_per_epoch=args.iterations_per_epoch,
        objects_per_image=args.objects,
        sub_iterations=args.sub_iterations,
        lr=args.lr,
        prompt_encoder_lr_factor=args.prompt_lr_factor,
        max_points=args.max_points,
        augment_variants=args.augment_variants,
        val_max_objects=args.val_objects,
        seed=args.seed,
    )
    print(f"finetuning {BASE} on {len(train)} images (validation {len(val)}), testing on {len(test)}", flush=True)
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
    finetune_seconds = time.perf_counter() - started
    if result.resumed_from > 0:  # a finished (or partly finished) run was reused: report its recorded time
        finetune_seconds = sum(e.seconds for e in result.epochs)

    # zero iterations: the base weights, bit for bit
    zero = finetune(
        BASE,
        [s.image for s in train[:1]],
        [s.labels for s in train[:1]],
        work / "zero.pth",
        config=FinetuneConfig(iterations=0),
        name=f"{BASE}-ft-zero",
        progress=False,
    )
    base_model = load_model(BASE, device="cpu")
    base_state, zero_state = base_model.state_dict(), torch.load(zero.checkpoint, weights_only=True)
    zero_difference = max(float((base_state[k].double() - zero_state[k].double()).abs().max()) for k in base_state)

    eval_started = time.perf_counter()
    tuned_model = load_model(result.checkpoint, device="cpu")
    encoder_keys = [k for k in base_state if k.startswith("image_encoder.")]
    tuned_state = tuned_model.state_dict()
    assert all(torch.equal(base_state[k], tuned_state[k]) for k in encoder_keys), (
        "encoder changed: embeddings not shareable"
    )
    test_set = ImageSet(test)
    cache = EmbeddingCache(base_model, resolve(BASE).sha256, work / "embeddings")
    limit = args.test_objects or None
    evaluations = {
        "vanilla": validate_prompts(base_model, test_set, cache, max_objects=limit, seed=args.seed),
        "finetuned": validate_prompts(tuned_model, test_set, cache, max_objects=limit, seed=args.seed),
    }
    eval_seconds = time.perf_counter() - eval_started

    rows, objects = [], []
    for model, evaluation in evaluations.items():
        summary = evaluation.summary()
        for mode in ("box", "point"):
            n = sum(1 for o in evaluation.objects if o.mode == mode)
            rows.append(
                {
                    "model": model,
                    "prompt": mode,
                    "objects": n,
                    "mean_iou": summary[f"{mode}_iou"],
                    "mean_dice": summary[f"{mode}_dice"],
                    "msa": summary[f"{mode}_msa"],
                }
            )
        objects += [{"model": model, **asdict(o)} for o in evaluation.objects]
    table = pd.DataFrame(rows)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT_DIR / "finetune_gain.csv", index=False, float_format="%.4f")
    pd.DataFrame(objects).to_csv(OUT_DIR / "finetune_gain_objects.csv", index=False, float_format="%.4f")
    shutil.copyfile(work / f"{BASE}-ft-dsb2018.losses.png", OUT_DIR / "finetune_gain_losses.png")
    total_seconds = time.perf_counter() - started
    better = {
        mode: float(table.query("model == 'finetuned' and prompt == @mode").mean_iou.iloc[0])
        > float(table.query("model == 'vanilla' and prompt == @mode").mean_iou.iloc[0])
        for mode in ("box", "point")
    }
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

    print(table.to_markdown(index=False, floatfmt=".3f"))
    for e in result.epochs:
        print(f"epoch {e.epoch}: iterations {e.iterations}, train loss {e.train_loss}, validation {e.val}")
    print(f"best epoch {result.best_epoch}; zero-iteration finetune vs base: max |difference| = {zero_difference}")
    print(
        f"finetuning {finetune_seconds:.0f} s, evaluation {eval_seconds:.0f} s, total {total_seconds:.0f} s "
        f"({args.threads} thread(s))"
    )
    ok = all(better.values()) and zero_difference == 0.0
    print("OK: finetuned beats vanilla for box and point prompts" if ok else f"FAILED: {better}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
