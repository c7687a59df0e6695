"""Fixtures of the finetuning tests: the real dsb2018 images, one embedding cache, one reference run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from helpers.finetune import NAMES, run


@contextmanager
def isolated_model_cache(tmp_path_factory) -> Iterator[None]:
    """Finetuned models are linked into the model cache: keep it out of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TILESAM_CACHEDIR", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory):
    """Per module, so the variable is unset again for the tests outside this folder."""
    with isolated_model_cache(tmp_path_factory):
        yield


@pytest.fixture(scope="session")
def data(shared_dir) -> tuple[list[Path], list[Path]]:
    folder = shared_dir / "data" / "dsb2018"
    return [folder / "images" / f"{n}.tif" for n in NAMES], [folder / "labels" / f"{n}.tif" for n in NAMES]


@pytest.fixture(scope="session")
def embeddings(tmp_path_factory) -> Path:
    """One embedding cache for all runs: each image is encoded once in these tests."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="session")
def reference(data, embeddings, tmp_path_factory):
    """An uninterrupted two-epoch run (one iteration per epoch), shared by the trainer's and the card's tests."""
    with isolated_model_cache(tmp_path_factory):  # set up before any module's _model_cache, so set here too
        return run(data, tmp_path_factory.mktemp("reference") / "ft.pth", embeddings)


@pytest.fixture
def colour_image(tmp_path) -> tuple[Path, Path]:
    """A channel-first colour image of 300x520 with one object at its left, and its label file."""
    rgb = np.zeros((3, 300, 520), np.uint8)  # channel-first colour: read as channels-last RGB
    rgb[1, :, :] = np.linspace(0, 200, 520, dtype=np.uint8)
    labels = np.zeros((300, 520), np.uint16)
    labels[20:60, 20:60] = 5  # only the left part of the image has an object
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    return tmp_path / "a.tif", tmp_path / "a_labels.tif"
