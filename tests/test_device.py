"""Device resolution for model jobs, and the GPU count the workflow asks for without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tilesam import device
from tilesam.device import gpus_for, nvidia_gpu_visible, resolve_device


@pytest.fixture
def cuda(monkeypatch):
    """Set whether torch sees a CUDA device."""

    def set_available(available: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)

    return set_available


@pytest.mark.parametrize("available, expected", [(True, "cuda"), (False, "cpu")])
def test_auto_is_cuda_where_torch_sees_one(cuda, available, expected):
    cuda(available)
    assert resolve_device("auto") == resolve_device(None) == resolve_device() == expected


def test_explicit_devices_are_kept(cuda):
    cuda(True)
    assert resolve_device("cpu") == "cpu" and resolve_device("cuda") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device(torch.device("cpu")) == "cpu" and resolve_device(torch.device("cuda", 0)) == "cuda:0"
    cuda(False)
    assert resolve_device("cpu") == "cpu"


@pytest.mark.parametrize("name", ["cuda", "cuda:0", torch.device("cuda")])
def test_cuda_without_a_cuda_device_is_a_clear_error(cuda, name):
    cuda(False)
    with pytest.raises(RuntimeError, match="cuda was asked for, but torch sees no CUDA device"):
        resolve_device(name)


@pytest.fixture
def probes(monkeypatch, tmp_path):
    """A machine without GPUs: an empty driver folder, no nvidia-smi, CUDA_VISIBLE_DEVICES unset."""
    gpus = tmp_path / "gpus"
    gpus.mkdir()
    monkeypatch.setattr(device, "NVIDIA_GPUS", gpus)
    monkeypatch.setattr(device.shutil, "which", lambda exe: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return gpus


def test_cpu_and_cuda_are_answered_as_asked(probes):
    assert gpus_for("cpu") == 0 and gpus_for("cuda") == 1
    (probes / "0000:01:00.0").mkdir()
    assert gpus_for("cpu") == 0


def test_auto_asks_for_a_gpu_where_the_driver_lists_one(probes, monkeypatch):
    assert gpus_for("auto") == 0
    (probes / "0000:01:00.0").mkdir()
    assert gpus_for("auto") == 1 and nvidia_gpu_visible()
    for hidden in ("", "-1", " -1 "):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert gpus_for("auto") == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert gpus_for("auto") == 1


def test_a_missing_driver_folder_means_no_gpu(probes, monkeypatch, tmp_path):
    monkeypatch.setattr(device, "NVIDIA_GPUS", tmp_path / "absent")
    assert gpus_for("auto") == 0


def _fake_smi(monkeypatch, returncode: int, stdout: str, calls: list) -> None:
    monkeypatch.setattr(device.shutil, "which", lambda exe: "/usr/bin/nvidia-smi" if exe == "nvidia-smi" else None)

    def run(args, **kwargs):
        calls.append(args)
        return subprocess.CompletedProcess(args, returncode, stdout=stdout, stderr="")

    monkeypatch.setattr(device.subprocess, "run", run)


def test_auto_falls_back_to_nvidia_smi(probes, monkeypatch):
    calls: list = []
    _fake_smi(monkeypatch, 0, "GPU 0: NVIDIA H200 (UUID: GPU-1234)\n", calls)
    assert gpus_for("auto") == 1 and calls == [["/usr/bin/nvidia-smi", "-L"]]
    _fake_smi(monkeypatch, 0, "No devices found.\n", calls)
    assert gpus_for("auto") == 0
    _fake_smi(monkeypatch, 9, "GPU 0: broken driver\n", calls)
    assert gpus_for("auto") == 0


def test_a_hanging_nvidia_smi_means_no_gpu(probes, monkeypatch):
    monkeypatch.setattr(device.shutil, "which", lambda exe: "/usr/bin/nvidia-smi")

    def hang(args, **kwargs):
        raise subprocess.TimeoutExpired(args, kwargs["timeout"])

    monkeypatch.setattr(device.subprocess, "run", hang)
    assert gpus_for("auto") == 0


def test_unknown_device_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown device 'gpu'; expected one of \('auto', 'cpu', 'cuda'\)"):
        gpus_for("gpu")


def test_gpus_for_does_not_import_torch():
    code = "import sys; from tilesam.device import gpus_for; gpus_for('auto'); assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
