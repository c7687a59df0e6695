"""Which device a model job runs on, and how many GPUs it asks the scheduler for.

:func:`resolve_device` answers in the job that runs the model (it imports torch);
:func:`gpus_for` answers while the workflow is planned, where importing torch would cost
seconds and ~600 MB for every DAG build, so it asks the driver instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "Device", "gpus_for", "nvidia_gpu_visible", "resolve_device"]

Device = Literal["auto", "cpu", "cuda"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")  # one folder per GPU the NVIDIA driver knows


def resolve_device(name: str | torch.device | None = "auto") -> str:
    """The torch device for ``name``: ``auto`` (or None) is cuda where torch sees one, else cpu.

    Asking for cuda where torch sees none fails here, with a clear message, rather than at the
    first tensor copy. Other names (``cuda:1``, ``mps``) are passed on as they are.
    """
    import torch

    name = "auto" if name is None else str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.partition(":")[0] == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    return name


def gpus_for(name: str) -> int:
    """GPUs (0 or 1) that a model job on device ``name`` asks for, found without importing torch."""
    if name == "cpu":
        return 0
    if name == "cuda":
        return 1
    if name == "auto":
        return int(nvidia_gpu_visible())
    raise ValueError(f"unknown device {name!r}; expected one of {DEVICES}")


def nvidia_gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process: the driver lists one and CUDA_VISIBLE_DEVICES allows it."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return _driver_lists_gpus() or _nvidia_smi_lists_gpus()


def _driver_lists_gpus() -> bool:
    try:
        return any(NVIDIA_GPUS.iterdir())
    except OSError:  # no NVIDIA driver loaded (or no /proc)
        return False


def _nvidia_smi_lists_gpus() -> bool:
    """``nvidia-smi -L`` prints one ``GPU <i>: ...`` line per GPU (the fallback where /proc has no driver folder)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and any(line.startswith("GPU ") for line in done.stdout.splitlines())
