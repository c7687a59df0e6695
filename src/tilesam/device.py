"""Which device a job runs on (placeholder until the layering branch lands)."""

from __future__ import annotations


def gpus_for(name: str) -> int:
    """GPUs a model job asks for."""
    if name == "cpu":
        return 0
    if name == "cuda":
        return 1
    import torch

    return int(torch.cuda.is_available())
