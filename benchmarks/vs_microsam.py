"""tilesam against micro-sam's tiled automatic segmentation: same image, checkpoint, tiling and AMG settings.

For every size x model x method:

* micro-sam (1.8.14, in its own venv made by `benchmarks/setup_microsam.sh`): its tiled path as
  its users call it, one stage at a time (`benchmarks/microsam_driver.py`, a subprocess):
  embedding (`precompute_image_embeddings` with tile_shape/halo), segmentation
  (`segmenter.initialize`: the decoder over each tile), merging (`segmenter.generate`: filtering,
  NMS across tiles, one label image); wall, CPU time and peak memory of each.
* tilesam: the workflow, `snakemake --cores N` with a config this script writes (same
  checkpoint, tile + halo, AMG settings, device cpu), one run folder per case; each job's wall,
  CPU time and max_rss come from Snakemake's benchmark files (`logs/benchmarks/<rule>/...`):
  embedding = the embed jobs, segmentation = the segment jobs, merging = stitch (summed over jobs;
  peak = the largest job). Total is the whole snakemake run's wall time (including imports,
  model checks, process starts), and for micro-sam the whole driver process's.

Inputs (made once under `--work`): synthetic nuclei images (tilesam.data.synthetic), uint8
stretched to 0..255 so that neither tool rescales them differently; random-weight checkpoints
(seed 0) `vit_b` (segment_anything's builder) and `vit_t` (tilesam's MobileSAM builder; micro-sam
runs vit_t through the `mobile_sam` package, which the setup script installs); or any checkpoint
as `--models NAME=PATH` (architecture `vit_b`/`vit_l`/`vit_h`/`vit_t` from NAME's start).

Agreement: the number of instances of each, and (where the checkpoint is real, `--iou`) the
mean matched IoU of tilesam's instances against micro-sam's (tilesam.metrics; msa and F1 at 0.5).
Random weights predict IoUs far below micro-sam's default pred_iou_thresh (0.88), so both
then find no instances and the comparison is one of cost only.

AIS (`--methods ais`) needs a checkpoint with a decoder (`{"model_state", "decoder_state"}`) for
micro-sam and a tilesam that lists `ais` among `segmentation.methods`; a case that lacks either is
reported as skipped, with the reason. Both tools get the same post-processing, `AIS_PARAMS` with
`--ais-params` on top (micro-sam: `generate(**params, tile_shape, halo)`; tilesam: `segmentation.ais`).
The tiled AIS case of issue 15 (after `--ais-equality`, which fits the decoder):

    python benchmarks/vs_microsam.py --sizes 1024 4096 --methods ais --iou \
        --models vit_b_fitted=/tmp/vs_microsam/ais_equality/vit_b_random_fitted200x10.pt

Tiled APG (`--methods apg`, issue 29): micro-sam's `TiledAutomaticPromptGenerator` as
`automatic_instance_segmentation` runs it (`initialize(..., batch_size=1)`, `generate(**params)`: the
prompts of the whole image's assembled maps, each decoded in the tile that holds it, one NMS over the
image) against tilesam's workflow with `methods: [apg]` (prompts, masks and NMS per tile window, then
the stitcher); the same settings, TILED_APG_PARAMS with `--apg-params` on top. The checkpoint: the
`--apg-equality` check's vit_b with a decoder fitted on a 512 x 512 image of 60 nuclei, whose maps
hold the nuclei of these images' tile windows too (a vit_t decoder fitted 200 x 10 on a 1152 x 1152
window, be850f6's `--fit-decoder`, gave maps in which micro-sam found no prompt at 2048 x 2048). `--iou` scores each tool's
labels against the other's (mSA both ways) and says where the objects that differ lie. The issue's
case (the 4096 x 4096 image has 2457 nuclei), after `--apg-equality`:

    python benchmarks/vs_microsam.py --sizes 2048 4096 --methods apg --iou --tile 1024 1024 --halo 64 64 \
        --models vit_b_fitted=/tmp/vs_microsam/apg_equality/vit_b_random_fitted200x10_nuclei512_60.pt

Every tilesam job's cost goes to `<out>/vs_microsam_jobs.csv`; each side's row notes the 1-minute load
average before and after it (the two sides run one after the other, never together).

AIS equality (`--ais-equality`, issues 15 and 16; `benchmarks/ais_equality.py`): micro-sam's untiled
`InstanceSegmentationWithDecoder` against tilesam's AIS on one 256 x 256 image, for a fitted and a
finetuned checkpoint (adjusted Rand index >= 0.99).

APG and AIS equality (`--apg-equality`, issue 29; `benchmarks/apg_equality.py`): one untiled 512 x 512
image with `--apg-objects` nuclei (>= 50) and a decoder fitted on it; micro-sam's
`AutomaticPromptGenerator` and AIS against tilesam's `segment.apg.apg_labels` and AIS (ARI >= 0.99 each).

    benchmarks/setup_microsam.sh                     # once: benchmarks/.venv-microsam
    python benchmarks/vs_microsam.py --ais-equality  # issues 15 and 16: micro-sam's AIS == tilesam's
    python benchmarks/vs_microsam.py --apg-equality  # issue 29: micro-sam's APG and AIS == tilesam's
    python benchmarks/vs_microsam.py   # issue 14's run: 1024 and 4096, vit_t, 4 x 4 points (< 30 min on 2 cores)
    python benchmarks/vs_microsam.py --sizes 1024 --models vit_b --points-per-side 4   # smoke test
    python benchmarks/vs_microsam.py --sizes 1024 4096 --models vit_t --points-per-side 8   # 45 min on 2 cores
    python benchmarks/vs_microsam.py --sizes 1024 --models vit_b vit_t --points-per-side 16

The defaults fit the 30 minutes issue 14 allows on 2 cores: micro-sam's tiled AMG turns every mask of
every tile into a whole-image mask before it filters any, so its time and memory per tile grow with
the image (4096^2, vit_t, 8 x 8 points: 39 min and 13.7 GB for micro-sam alone; at 16 x 16 it had not
finished after 82 min), and vit_b's encoder alone needs about 14 min per side at 4096^2.

Writes `<out>/vs_microsam.csv` and `.md` and prints the table.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch
import yaml
from _common import OUT, REPO

from tilesam.data.synthetic import SyntheticSpec, make_labels, render
from tilesam.models.spec import model_id, resolve_spec

STAGES = ("embedding", "segmentation", "merging", "total")
TILESAM_RULES = {"embedding": "embed", "segmentation": "segment", "merging": "stitch"}
DENSITY = 48 / (512 * 640)  # nuclei per pixel, as in the demo's large image
DEFAULT_VENV = Path(os.environ.get("TILESAM_MICROSAM_VENV", REPO / "benchmarks" / ".venv-microsam"))


@dataclass
class Measure:
    wall_s: float = float("nan")
    cpu_s: float = float("nan")
    peak_mb: float = float("nan")


@dataclass
class Result:
    tool: str
    stages: dict[str, Measure] = field(default_factory=dict)
    n_instances: int = -1
    labels: np.ndarray | None = None
    skipped: str = ""
    load: str = ""  # the 1-minute load average before -> after the run (the machine is shared)
    jobs: list[dict] = field(default_factory=list)  # tilesam: each job's rule, wall, CPU time and max RSS


def earlier_microsam(record: Path) -> Result:
    """With ``--only tilesam``: micro-sam's labels from an earlier run of the same case, to score against
    (its costs are not shown: they belong to that run, whose table has them)."""
    labels = record.with_suffix(".npy")
    if not labels.exists():
        return Result("micro-sam", skipped="--only tilesam")
    found = np.load(labels)
    return Result(
        "micro-sam", n_instances=int(len(np.unique(found[found > 0]))), labels=found, skipped="--only tilesam"
    )


def make_image(path: Path, size: int, seed: int = 7) -> Path:
    """Synthetic nuclei, size x size, uint8 stretched to 0..255 (both tools then see the same pixels)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    labels = make_labels(SyntheticSpec("vs", (size, size), max(1, int(DENSITY * size * size)), (9.0, 22.0), seed))
    image = render(labels, seed).astype(np.float32)
    image = np.round((image - image.min()) * (255.0 / max(float(image.max() - image.min()), 1.0))).astype(np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib")
    return path


def make_checkpoint(path: Path, architecture: str) -> Path:
    """A random-weight (seed 0) SAM state dict, as torch.save writes it; loadable by both tools."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    if architecture == "vit_t":
        from tilesam.models.load import build_sam

        sam = build_sam("vit_t")
    else:
        import segment_anything

        sam = getattr(segment_anything, f"build_sam_{architecture}")(None)
    torch.save(sam.state_dict(), path)
    return path


def parse_models(entries: list[str], work: Path) -> dict[str, tuple[str, Path]]:
    """name -> (micro-sam model_type, checkpoint); bare vit_b / vit_t are made with random weights."""
    models = {}
    for entry in entries:
        if "=" in entry:
            name, path = entry.split("=", 1)
            models[name] = (name[:5], Path(path).resolve())
        elif entry in ("vit_b", "vit_t", "vit_l", "vit_h"):
            models[entry] = (entry, make_checkpoint(work / "checkpoints" / f"{entry}_random.pt", entry))
        else:
            raise SystemExit(f"--models: {entry!r} is neither vit_b/vit_t/vit_l/vit_h nor NAME=PATH")
    return models


def run_microsam(args, image: Path, model_type: str, checkpoint: Path, method: str, out: Path) -> Result:
    """The driver in micro-sam's venv; its per-stage JSON, plus the whole process's wall time."""
    python = args.microsam_venv / "bin" / "python"
    if not python.exists():
        return Result(
            "micro-sam", skipped=f"no micro-sam venv at {args.microsam_venv}: run benchmarks/setup_microsam.sh"
        )
    if method in ("ais", "apg"):
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if not (isinstance(state, dict) and "decoder_state" in state):
            return Result("micro-sam", skipped=f"{method.upper()} needs a checkpoint with a decoder_state")
    out.parent.mkdir(parents=True, exist_ok=True)
    generate = {
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_score_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "with_background": True,
    }
    command = [
        str(python),
        str(REPO / "benchmarks" / "microsam_driver.py"),
        "--image", str(image), "--checkpoint", str(checkpoint), "--model-type", model_type, "--mode", method,
        "--tile", *map(str, args.tile), "--halo", *map(str, args.halo),
        "--points-per-side", str(args.points_per_side), "--points-per-batch", str(args.points_per_batch),
        "--threads", str(args.cores), "--out", str(out),
        "--generate", json.dumps({"amg": generate, "ais": ais_params(args), "apg": microsam_apg(args)}[method]),
    ]  # fmt: skip
    wall = time.perf_counter()
    with out.with_suffix(".log").open("w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            rc = driver.wait(timeout=args.microsam_timeout)
        except subprocess.TimeoutExpired:
            return Result("micro-sam", skipped=stopped(driver, time.perf_counter() - wall, out.with_suffix(".log")))
    wall = time.perf_counter() - wall
    if rc:
        return Result("micro-sam", skipped=f"driver failed ({rc}), see {out.with_suffix('.log')}")
    record = json.loads(out.read_text())
    stages = {r["stage"]: Measure(r["wall_s"], r["cpu_s"], r["peak_mb"]) for r in record["stages"]}
    # resetting the high-water mark per stage resets ru_maxrss too: the run's peak is the stages' largest
    stages["total"] = Measure(wall, record["cpu_s"], max(r["peak_mb"] for r in record["stages"]))
    return Result("micro-sam", stages, record["n_instances"], np.load(out.with_suffix(".npy")))


def stopped(driver: subprocess.Popen, wall: float, log: Path) -> str:
    """Stop a driver past `--microsam-timeout`: how long it ran, the peak memory of the stage it was in (the
    driver resets the high-water mark per stage) and its last progress line."""
    status = Path(f"/proc/{driver.pid}/status")
    peak = next((ln.split()[1] for ln in status.read_text().splitlines() if ln.startswith("VmHWM:")), None)
    driver.kill()
    driver.wait()
    last = log.read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-1:] or [""]
    peak_text = f"{int(peak) / 1024:.0f} MB" if peak else "unknown"
    return f"stopped unfinished after {wall:.0f} s (its stage's peak {peak_text}); its last output: {last[0][:120]!r}"


def tilesam_config(args, model: str, checkpoint: Path, method: str) -> dict:
    return {
        "datasets": {"vs": {"images": "data/*.tif", "ndim": 2}},
        "models": [str(checkpoint)],
        "device": "cpu",
        "offline": True,
        "segmentation": {
            "methods": [method],
            "tile_shape": list(args.tile),
            "halo": list(args.halo),
            "tiles_per_block": args.tiles_per_block,
            "min_blocks": 2,  # one image a run: a 1024^2 image's 4 tiles in two jobs, one per core
            **({"ais": ais_params(args)} if method == "ais" else {}),
            **({"apg": tiled_apg_params(args)} if method == "apg" else {}),
            "amg": {
                "points_per_side": args.points_per_side,
                "points_per_batch": args.points_per_batch,
                "pred_iou_thresh": args.pred_iou_thresh,
                "stability_score_thresh": args.stability_score_thresh,
                "box_nms_thresh": args.box_nms_thresh,
                "with_background": True,
            },
        },
        "embeddings": {"keep_embeddings": False, **({"batch_size": args.batch_size} if args.batch_size else {})},
    }


def read_benchmarks(work: Path) -> dict[str, list[dict]]:
    """Snakemake's benchmark rows per rule: s, max_rss (MB) and cpu_time of each job."""
    rules: dict[str, list[dict]] = {}
    root = work / "logs" / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rule = path.relative_to(root).parts[0]
        with path.open() as handle:
            for rec in csv.DictReader(handle, delimiter="\t"):
                rss = float(rec["max_rss"]) if rec["max_rss"] not in ("NA", "-") else float("nan")
                rules.setdefault(rule, []).append(
                    {"job": path.stem, "s": float(rec["s"]), "max_rss": rss, "cpu": float(rec["cpu_time"])}
                )
    return rules


def run_tilesam(args, image: Path, model: str, checkpoint: Path, method: str, work: Path) -> Result:
    """The workflow in a fresh run folder; stage costs from the jobs' benchmark files."""
    from tilesam import config as schema

    if method not in schema.METHODS:
        return Result("tilesam", skipped=f"tilesam has no segmentation method {method!r} (known: {schema.METHODS})")
    data = work / "data" / image.name
    data.parent.mkdir(parents=True, exist_ok=True)
    if not data.exists():
        data.symlink_to(image)
    config = tilesam_config(args, model, checkpoint, method)
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    model_dir = model_id(resolve_spec(str(checkpoint)))  # the workflow's id of a checkpoint file: <stem>-<hash>
    target = f"results/segmentation/vs/{image.stem}/{model_dir}/{method}/labels.ome.zarr"
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [
        str(snakemake if snakemake.exists() else "snakemake"),
        "-s", str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(work / "config.yaml"),
        "--cores", str(args.cores), "--forceall", target,
    ]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    wall, children = time.perf_counter(), os.times()
    with (work / "snakemake.log").open("w") as log:
        rc = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall, after = time.perf_counter() - wall, os.times()
    if rc:
        return Result("tilesam", skipped=f"snakemake failed ({rc}), see {work / 'snakemake.log'}")
    rules = read_benchmarks(work)
    stages = {}
    for stage, rule in TILESAM_RULES.items():
        jobs = rules.get(rule, [])
        stages[stage] = Measure(
            sum(j["s"] for j in jobs), sum(j["cpu"] for j in jobs), max((j["max_rss"] for j in jobs), default=np.nan)
        )
    cpu_total = (after.children_user + after.children_system) - (children.children_user + children.children_system)
    peak = max((j["max_rss"] for jobs in rules.values() for j in jobs), default=np.nan)
    stages["total"] = Measure(wall, cpu_total, peak)
    from tilesam.data import ome

    labels = np.asarray(ome.open_level0(work / target)[...])
    jobs = [{"rule": rule, **job} for rule, rule_jobs in rules.items() for job in rule_jobs]
    return Result("tilesam", stages, int(len(np.unique(labels[labels > 0]))), labels, jobs=jobs)


def agreement(ours: Result, theirs: Result, with_iou: bool, tile: tuple[int, int]) -> str:
    """Instance counts, and (`--iou`) the mSA of tilesam's labels against micro-sam's as reference and
    the other way round, F1 at IoU 0.5, and where the objects that differ lie (`border_misses`), each way."""
    text = f"{theirs.n_instances} / {ours.n_instances}"
    if with_iou and ours.labels is not None and theirs.labels is not None:
        from tilesam.metrics import segmentation_scores

        scores = segmentation_scores(theirs.labels, ours.labels, relabel=False)
        back = segmentation_scores(ours.labels, theirs.labels, relabel=False)
        text += (
            f" (mSA {scores.msa:.3f} against micro-sam's, {back.msa:.3f} against tilesam's; F1@0.5 {scores.f1:.3f};"
            f" micro-sam's objects: {border_misses(theirs.labels, ours.labels, tile)};"
            f" tilesam's: {border_misses(ours.labels, theirs.labels, tile)})"
        )
    return text


def border_misses(reference: np.ndarray, labels: np.ndarray, tile: tuple[int, int], below: float = 0.9) -> str:
    """How many reference objects have no match of IoU >= `below`, and how far the farthest of them lies
    from a tile border (0 where it crosses one)."""
    from skimage.measure import regionprops

    areas = np.bincount(labels.ravel())
    misses, objects = [], regionprops(reference)
    for obj in objects:
        inside = reference[obj.slice] == obj.label
        ids, overlap = np.unique(labels[obj.slice][inside], return_counts=True)
        keep = ids > 0
        iou = overlap[keep] / (obj.area + areas[ids[keep]] - overlap[keep])
        if iou.max(initial=0.0) < below:
            distance = min(
                0 if lo // t != (hi - 1) // t else min(lo % t, t - 1 - (hi - 1) % t)
                for lo, hi, t in zip(obj.bbox[:2], obj.bbox[2:], tile)
            )
            misses.append(distance)
    where = f", all within {max(misses)} px of a tile border" if misses else ""
    return f"{len(misses)} of {len(objects)} below IoU {below}{where}"


def with_load(run, *args) -> Result:
    """``run(*args)``, its Result noting the 1-minute load average before and after (`uptime`'s first figure)."""
    before = os.getloadavg()[0]
    print(f"load average before: {os.getloadavg()}", flush=True)
    result = run(*args)
    print(f"load average after: {os.getloadavg()}", flush=True)
    result.load = f"{before:.1f} -> {os.getloadavg()[0]:.1f}"
    return result


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 and np.isfinite(a) and np.isfinite(b) else "-"


def _mb(value: float) -> float:
    """Whole megabytes, NaN (a skipped side) kept as NaN."""
    return round(value) if np.isfinite(value) else value


def rows_for(size: int, model: str, method: str, ms: Result, ts: Result, agree: str) -> list[dict]:
    rows = []
    for stage in STAGES:
        m, t = ms.stages.get(stage, Measure()), ts.stages.get(stage, Measure())
        rows.append(
            {
                "size": size, "model": model, "method": method, "stage": stage,
                "microsam_wall_s": round(m.wall_s, 2), "tilesam_wall_s": round(t.wall_s, 2),
                "speedup_wall": ratio(m.wall_s, t.wall_s),
                "microsam_cpu_s": round(m.cpu_s, 2), "tilesam_cpu_s": round(t.cpu_s, 2),
                "speedup_cpu": ratio(m.cpu_s, t.cpu_s),
                "microsam_peak_mb": _mb(m.peak_mb), "tilesam_peak_mb": _mb(t.peak_mb),
                "instances_microsam_tilesam": agree if stage == "total" else "",
                "load_microsam_tilesam": f"{ms.load} / {ts.load}" if stage == "total" else "",
                "skipped": "; ".join(f"{r.tool}: {r.skipped}" for r in (ms, ts) if r.skipped),
            }
        )  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(r[k]) for k in head) + " |" for r in rows])


# -- AIS equality on one untiled image (issues 15, 16) ----------------------------------------------

AIS_PARAMS = {
    "center_distance_threshold": 0.65,
    "boundary_distance_threshold": 0.85,
    "foreground_threshold": 0.5,
    "foreground_smoothing": 1.0,
    "distance_smoothing": 1.6,
    "min_size": 0,
}
"""micro-sam's `generate` defaults except the seed thresholds: the fitted decoder's distance maps reach
only about 0.56-0.67 (centre) and 0.77-0.9 (boundary) inside the objects, so the default 0.5 finds no
seed; with these, 10 of the 14 objects (adjusted Rand index 0.92 against the truth)."""


def ais_params(args) -> dict:
    """The AIS post-processing both tools get: AIS_PARAMS with `--ais-params` on top."""
    return {**AIS_PARAMS, **json.loads(args.ais_params)}


# -- tiled APG (issue 29) ---------------------------------------------------------------------------

TILED_APG_PARAMS = {
    "center_distance_threshold": 0.65,
    "boundary_distance_threshold": 0.85,
    "foreground_threshold": 0.5,
    "min_size": 25,
    "multimasking": False,
    "nms_threshold": 0.9,
    "intersection_over_min": False,
    "prompts_per_batch": 32,
}
"""micro-sam's `TiledAutomaticPromptGenerator.generate` defaults (tilesam's schema's too) except the seed
thresholds, which the fitted decoders' maps need (as AIS_PARAMS); `prompts_per_batch` is micro-sam's
`batch_size`. No box refinement: micro-sam's tiled APG raises NotImplementedError for it."""


def tiled_apg_params(args) -> dict:
    """tilesam's `segmentation.apg`: TILED_APG_PARAMS with `--apg-params` on top."""
    return {**TILED_APG_PARAMS, **json.loads(args.apg_params)}


def microsam_apg(args) -> dict:
    """The same settings as micro-sam's `generate` keyword arguments."""
    params = tiled_apg_params(args)
    return {**{k: v for k, v in params.items() if k != "prompts_per_batch"}, "batch_size": params["prompts_per_batch"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--models", nargs="+", default=["vit_t"], help="vit_b, vit_t (random) or NAME=PATH")
    parser.add_argument("--methods", default="amg", help="comma-separated: amg,ais,apg")
    parser.add_argument("--points-per-side", type=int, default=4)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.88)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--tile", type=int, nargs=2, default=[512, 512])
    parser.add_argument("--halo", type=int, nargs=2, default=[64, 64])
    parser.add_argument("--tiles-per-block", type=int, default=16)
    parser.add_argument("--batch-size", default=None, help="tilesam embeddings.batch_size (default: the schema's)")
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores and micro-sam's torch threads")
    parser.add_argument("--iou", action="store_true", help="also score tilesam against micro-sam (real weights)")
    parser.add_argument("--microsam-venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--work", type=Path, default=Path("/tmp/vs_microsam"), help="run folders (outside the repo)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--only", choices=["microsam", "tilesam"], help="run one side only")
    parser.add_argument(
        "--microsam-timeout", type=float, default=None, help="stop micro-sam's driver after this many seconds"
    )
    parser.add_argument("--ais-equality", action="store_true", help="only the untiled AIS equality check")
    parser.add_argument(
        "--ais-params", default="{}", help="JSON overrides of AIS_PARAMS (both tools, tiled and untiled)"
    )
    parser.add_argument("--fit-steps", type=int, default=200, help="decoder fitting steps (equality check)")
    parser.add_argument(
        "--fit-crop",
        type=int,
        default=10,
        help="decoder fitting crop, embedding tokens (docs/benchmarks.md's equality run: 10)",
    )
    parser.add_argument(
        "--finetune-iterations", type=int, default=4, help="tilesam finetuning iterations (equality check; 0: skip)"
    )
    parser.add_argument("--apg-equality", action="store_true", help="only the untiled APG + AIS equality check")
    parser.add_argument("--apg-objects", type=int, default=60, help="objects of the APG equality image (>= 50)")
    parser.add_argument("--apg-params", default="{}", help="JSON overrides of every APG parameter set (both tools)")
    parser.add_argument(
        "--apg-shared-maps", action="store_true", help="APG equality: tilesam on micro-sam's embedding and maps"
    )
    args = parser.parse_args()
    if args.ais_equality:
        from ais_equality import ais_equality

        return ais_equality(args, ais_params(args), markdown)
    if args.apg_equality:
        from apg_equality import apg_equality

        return apg_equality(args, ais_params(args), markdown)
    if args.batch_size and args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    work = args.work.resolve()
    models = parse_models(args.models, work)
    rows, jobs = [], []
    for size in args.sizes:
        image = make_image(work / "images" / f"nuclei_{size}.tif", size)
        for name, (model_type, checkpoint) in models.items():
            for method in args.methods.split(","):
                case = f"{size}_{name}_{method}"
                print(f"== {case}", flush=True)
                ms = (
                    earlier_microsam(work / "microsam" / f"{case}.json")
                    if args.only == "tilesam"
                    else with_load(
                        run_microsam, args, image, model_type, checkpoint, method, work / "microsam" / f"{case}.json"
                    )
                )
                ts = (
                    Result("tilesam", skipped="--only microsam")
                    if args.only == "microsam"
                    else with_load(run_tilesam, args, image, name, checkpoint, method, work / "tilesam" / case)
                )
                jobs += [{"case": case, **job} for job in ts.jobs]
                rows += rows_for(size, name, method, ms, ts, agreement(ts, ms, args.iou, tuple(args.tile)))
                print(markdown(rows[-len(STAGES) :]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "vs_microsam.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    if jobs:  # every tilesam job's cost: the largest one's memory is the peak a tilesam user needs
        with (args.out / "vs_microsam_jobs.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(jobs[0]))
            writer.writeheader()
            writer.writerows(jobs)
    header = (
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        f"--cores {args.cores}; tile {args.tile} + halo {args.halo}, {args.points_per_side}^2 points; "
        f"speedup = micro-sam / tilesam"
        + (f"; APG {json.dumps(tiled_apg_params(args))}" if "apg" in args.methods.split(",") else "")
    )
    text = header + "\n\n" + markdown(rows)
    (args.out / "vs_microsam.md").write_text(text + "\n")
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
