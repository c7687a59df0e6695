"""A job's fixed cost: each model rule's job on a one-tile block, its CPU and wall seconds by phase.

Runs `tilesam embed`, `segment` (amg, ais), `prompt-eval`, `stitch` and `evaluate` the way the rules
do (one process each, on one 512 x 512 tile of a synthetic image, with LiteMedSAM and a random-weight
vit_b checkpoint, each with a random instance decoder) and reports, per job, wall and CPU seconds from
process start to exit (the parent's `wait4`) split into:

- startup: the interpreter's own start, before the first line of the job runs;
- imports: every module import (the outermost `__import__`, so a module's imports count once);
- model load: `load_model`/`load_parts`, the decoder state and module;
- store checks: the model record's check (its files' xxh128), image info, opening/checking/finishing block
  stores, the encoder's identity hash (embed: checked against the record);
- tile work: the block function (embed_block, segment_block, stitch, scores, prompts) less the above;
- other: the rest (argument parsing, the settings schema, writing results);
- exit: after the job's last line until the process ended (interpreter and library teardown).

fixed = total - tile work: the cost a job pays before and after its tiles, what `tiles_per_block`
must amortise. Each job runs in a child process (`--child`) that times these phases by wrapping the
functions named in PHASES (only those that exist, so a renamed function shows up as "other").

    python benchmarks/job_overhead.py                      # both models, every job
    python benchmarks/job_overhead.py --models lite_medsam --jobs embed stitch --threads 1

Run it with `nice` on a shared machine: CPU seconds are what contention changes least.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

#: phase -> the functions whose time (less their nested phases) is charged to it
PHASES: dict[str, tuple[str, ...]] = {
    "model load": (
        "tilesam.models.load:load_model",
        "tilesam.models.load:load_parts",
        "tilesam.models.load:load_decoder_state",
        "tilesam.models.unetr:load_decoder",
    ),
    "store checks": (
        "tilesam.data.io:read_info",
        "tilesam.data.stores:open_partial",
        "tilesam.data.stores:open_done",
        "tilesam.data.stores:finish",
        "tilesam.models.record:read_checked",
        "tilesam.models.load:encoder_sha256",
    ),
    "tile work": (
        "tilesam.embed:embed_block",
        "tilesam.segment.blocks:segment_block",
        "tilesam.stitch.tiles:stitch",
        "tilesam.metrics:segmentation_scores",
        "tilesam.interactive.evaluate:evaluate_prompts",
    ),
}
ORDER = ("startup", "imports", "model load", "store checks", "tile work", "other")
COLUMNS = (*ORDER, "exit")
MODEL_JOBS = ("embed", "segment-amg", "segment-ais", "prompt-eval")
JOBS = (*MODEL_JOBS, "stitch", "evaluate")


# --- the child: one job, timed by phase ----------------------------------------------------------
class PhaseClock:
    """Exclusive CPU and wall seconds per phase of the main thread (nested phases are not double counted)."""

    def __init__(self) -> None:
        self.cpu = dict.fromkeys(ORDER, 0.0)
        self.wall = dict.fromkeys(ORDER, 0.0)
        self.stack = ["other"]
        self.main = threading.main_thread()
        self.last_cpu, self.last_wall = time.process_time(), time.perf_counter()

    def _charge(self) -> None:
        cpu, wall = time.process_time(), time.perf_counter()
        self.cpu[self.stack[-1]] += cpu - self.last_cpu
        self.wall[self.stack[-1]] += wall - self.last_wall
        self.last_cpu, self.last_wall = cpu, wall

    def run(self, phase: str, func, *args, **kwargs):
        if threading.current_thread() is not self.main:
            return func(*args, **kwargs)
        self._charge()
        self.stack.append(phase)
        try:
            return func(*args, **kwargs)
        finally:
            self._charge()
            self.stack.pop()


def _instrument(clock: PhaseClock) -> None:
    """Wrap imports and the PHASES functions (each as soon as its module is imported)."""
    targets = {spec: phase for phase, specs in PHASES.items() for spec in specs}
    done: set[str] = set()
    original_import, original_import_module = builtins.__import__, importlib.import_module

    def wrap(func, phase):
        def timed(*args, **kwargs):
            return clock.run(phase, func, *args, **kwargs)

        timed.__wrapped__ = func
        return timed

    def patch() -> None:
        for spec, phase in targets.items():
            module_name, _, attr = spec.partition(":")
            module = sys.modules.get(module_name)
            if spec in done or module is None or not hasattr(module, attr):
                continue
            setattr(module, attr, wrap(getattr(module, attr), phase))
            done.add(spec)

    def timed_import(*args, **kwargs):
        if clock.stack[-1] == "imports" or threading.current_thread() is not clock.main:
            return original_import(*args, **kwargs)
        module = clock.run("imports", original_import, *args, **kwargs)
        patch()
        return module

    def timed_import_module(*args, **kwargs):
        module = clock.run("imports", original_import_module, *args, **kwargs)
        patch()
        return module

    builtins.__import__ = timed_import
    importlib.import_module = timed_import_module


def child(out: str, argv: list[str]) -> None:
    """Run `tilesam <argv>` in this process, timed by phase; write the phases as JSON to `out`; end as `tilesam` does."""
    startup_cpu = time.process_time()  # the interpreter's start and this script's stdlib imports
    clock = PhaseClock()
    _instrument(clock)
    from tilesam import cli

    code = cli.main(argv)
    clock._charge()
    clock.cpu["startup"] = startup_cpu
    Path(out).write_text(json.dumps({"cpu": clock.cpu, "wall": clock.wall, "code": code}))
    cli._exit(code)  # the command line's own end (no interpreter teardown)


# --- the parent: inputs, jobs, table --------------------------------------------------------------
def _tilesam(*args: str) -> list[str]:
    return [sys.executable, "-m", "tilesam.cli", *args]


def _run_quiet(cmd: list[str], env: dict) -> None:
    import subprocess

    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")


def _checkpoint(architecture: str, path: Path) -> None:
    """A training checkpoint of `architecture` (LiteMedSAM: its real weights; vit_b: random) with a random decoder."""
    import torch

    from tilesam.models.load import build_sam, load_model
    from tilesam.models.unetr import InstanceDecoder, decoder_upscale

    torch.manual_seed(0)
    sam = load_model("lite_medsam", device="cpu") if architecture == "lite_medsam" else build_sam(architecture)
    decoder = InstanceDecoder(upscale=decoder_upscale(sam))
    torch.save({"model_state": sam.state_dict(), "decoder_state": decoder.state_dict()}, path)


def prepare(work: Path, models: list[str], env: dict) -> dict[str, Path]:
    """A one-tile synthetic image (and labels) imported, and a model record per model; reused when present."""
    from tilesam.data import synthetic

    work.mkdir(parents=True, exist_ok=True)
    image, gt = work / "one_tile.ome.zarr", work / "one_tile_gt.ome.zarr"
    if not image.exists() or not gt.exists():
        spec = synthetic.SyntheticSpec("one_tile", (512, 512), 40, (9.0, 22.0), seed=5)
        synthetic.write_demo(spec, work / "one_tile.tif", work / "one_tile_gt.tif")
        tif = str(work / "one_tile.tif")
        _run_quiet(_tilesam("import-image", tif, str(image), "--ndim", "2", "--config", json.dumps(CONFIG)), env)
        _run_quiet(_tilesam("import-labels", str(work / "one_tile_gt.tif"), str(gt), "--image", str(image)), env)
    paths = {"image": image, "gt": gt}
    for name in models:
        ckpt, record = work / f"{name}.pt", work / f"{name}.json"
        if not ckpt.exists():
            _checkpoint(name, ckpt)
        if not record.exists():
            _run_quiet(_tilesam("models", "fetch", str(ckpt), "--record", str(record)), env)
        paths[name] = record
    return paths


#: the default run's AMG (config/config.yaml: an 8 x 8 box grid), on one 512-pixel tile
CONFIG = {
    "segmentation": {
        "tile_shape": [512, 512],
        "tiles_per_block": 1,
        "halo": [64, 64],
        "amg": {"prompt": "box", "box_sizes": [0.12], "points_per_side": 8, "pred_iou_thresh": 0.8,
                "stability_score_thresh": 0.9},
    }
}  # fmt: skip


def job_args(job: str, model: str, paths: dict[str, Path], work: Path, threads: int) -> list[str]:
    """The `tilesam` arguments of `job` as its rule writes them (outputs under `work/out/<model>`)."""
    out = work / "out" / model
    image, gt, record = str(paths["image"]), str(paths["gt"]), str(paths.get(model, ""))
    emb, seg = str(out / "block0.emb.zarr"), str(out / "ais" / "block0.zarr")
    spec = ["--spec", str((work / f"{model}.pt").resolve())]  # the config's model: its checkpoint file
    device = ["--config", json.dumps(CONFIG), *spec, "--device", "cpu", "--threads", str(threads)]
    if job == "embed":
        return ["embed", "--image", image, "--model", record, "--block", "0", "--out", emb, *device]
    if job.startswith("segment-"):
        method = job.partition("-")[2]
        dst = str(out / method / "block0.zarr")
        return ["segment", "--image", image, "--model", record, "--block", "0", "--embeddings", emb,
                "--method", method, "--out", dst, *device]  # fmt: skip
    if job == "prompt-eval":
        return ["prompt-eval", "--image", image, "--model", record, "--gt", gt, "--mode", "box",
                "--embeddings", emb, "--out", str(out / "box.json"), *device]  # fmt: skip
    if job == "stitch":
        return ["stitch", "--image", image, "--blocks", seg, "--out", str(out / "labels.ome.zarr"),
                "--config", json.dumps(CONFIG)]  # fmt: skip
    if job == "evaluate":
        return ["evaluate", "--pred", str(out / "labels.ome.zarr"), "--gt", gt, "--blocks", seg,
                "--out", str(out / "scores.json")]  # fmt: skip
    raise ValueError(f"unknown job {job!r}; known: {', '.join(JOBS)}")


def _clear(args: list[str]) -> None:
    """Remove the job's output (and a partial store), so that every run does its tile again."""
    import shutil

    out = Path(args[args.index("--out") + 1])
    for path in (out, out.with_name(out.name + ".partial"), out.parent / f".{out.name}.partial"):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def measure(argv: list[str], env: dict, work: Path) -> dict:
    """One job in a child process: its phases, and wall and CPU seconds from its start to its exit."""
    _clear(argv)
    phases_file = work / "phases.json"
    cmd = [sys.executable, __file__, "--child", str(phases_file), "--", *argv]
    t0 = time.perf_counter()
    proc = __import__("subprocess").Popen(cmd, env=env, stderr=open(work / "job.log", "w"))
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(argv)} failed: see {work / 'job.log'}")
    phases = json.loads(phases_file.read_text())
    cpu = usage.ru_utime + usage.ru_stime
    tile = phases["cpu"]["tile work"]
    row = {"wall": wall, "cpu": cpu, "fixed_cpu": cpu - tile, "fixed_wall": wall - phases["wall"]["tile work"],
           "max_rss_mb": usage.ru_maxrss / 1024, **{k: phases["cpu"][k] for k in ORDER}}  # fmt: skip
    row["exit"] = cpu - sum(phases["cpu"][k] for k in ORDER)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lite_medsam", "vit_b"], choices=["lite_medsam", "vit_b"])
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=JOBS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tilesam_job_overhead"))
    parser.add_argument("--threads", type=int, default=1, help="the model jobs' torch threads (the rules' default 1)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    paths = prepare(args.work, args.models, env)
    rows = []
    for model in args.models:
        for job in args.jobs:
            if job not in MODEL_JOBS and model != args.models[0]:
                continue  # stitch and evaluate load no model: once is enough
            row = {"job": job, "model": model if job in MODEL_JOBS else "-"}
            row.update(measure(job_args(job, model, paths, args.work, args.threads), env, args.work))
            rows.append(row)
            print(_line(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


def _line(row: dict) -> str:
    cols = " ".join(f"{k} {row[k]:.2f}" for k in COLUMNS)
    return (f"{row['job']:12s} {row['model']:12s} wall {row['wall']:6.2f} cpu {row['cpu']:6.2f} "
            f"fixed cpu {row['fixed_cpu']:5.2f} | {cols} | rss {row['max_rss_mb']:.0f} MB")  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:] if sys.argv[3] == "--" else sys.argv[3:])
    main()
