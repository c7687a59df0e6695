"""Planning's look at a model: its card and whether it has a decoder, in bounded time and memory."""

from __future__ import annotations

import time
import tracemalloc
import zipfile

import pytest
import torch

from helpers.checkpoints import write_zip_bomb
from tilesam.models.inspect import PICKLE_LIMIT, CheckpointInspectionError, card_of, has_decoder
from tilesam.models.spec import resolve_spec

BOMB_SIZE = 1536 * 2**20  # what the crafted file of issue 30 case 10 inflated to


@pytest.fixture
def checkpoints(tmp_path):
    """A training checkpoint with a decoder state, a plain state dict, and the two in the legacy format."""
    with_decoder = {"model_state": {"a": torch.zeros(2)}, "decoder_state": {"base.w": torch.zeros(2)}}
    plain = {"image_encoder.x": torch.zeros(2)}
    paths = {}
    for name, obj in (("withdec", with_decoder), ("plain", plain)):
        paths[name] = tmp_path / f"{name}.pt"
        torch.save(obj, paths[name])
        paths[f"{name}_legacy"] = tmp_path / f"{name}_legacy.pt"
        torch.save(obj, paths[f"{name}_legacy"], _use_new_zipfile_serialization=False)
    return {name: str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    return write_zip_bomb(tmp_path_factory.mktemp("bomb") / "bomb.pth", BOMB_SIZE)


def test_decoders_are_found_without_loading_the_model(checkpoints):
    assert has_decoder(checkpoints["withdec"]) and has_decoder(checkpoints["withdec_legacy"])
    assert not has_decoder(checkpoints["plain"]) and not has_decoder(checkpoints["plain_legacy"])


def test_registry_models_answer_from_their_card():
    assert not has_decoder("lite_medsam") and has_decoder("vit_b_lm")
    assert card_of("vit_b_lm").decoder is not None and card_of("/x/best.pt") is None


def test_a_checkpoint_with_a_decoder_file_has_one(checkpoints):
    spec = resolve_spec(f"{checkpoints['plain']}+{checkpoints['withdec']}")
    assert has_decoder(spec)


def test_a_zip_bomb_costs_little_and_is_refused(bomb):
    assert bomb.stat().st_size < 2 * 2**20
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(CheckpointInspectionError) as info:
        has_decoder(str(bomb))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 0.5 and peak < 8 * 2**20, (seconds, peak)
    message = str(info.value)
    assert str(bomb) in message and "data.pkl" in message and str(BOMB_SIZE) in message


def test_a_pickle_within_the_limit_is_read_to_its_end(tmp_path):
    """A long pickle below the limit whose key comes late is still found: the whole pickle was read."""
    path = tmp_path / "late.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", bytes(PICKLE_LIMIT - 100) + b"decoder_state")
    assert has_decoder(str(path))


def test_a_key_across_a_chunk_boundary_is_found(tmp_path):
    path = tmp_path / "edge.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", bytes(2**20 - 5) + b"decoder_state" + bytes(10))
    assert has_decoder(str(path))


def test_an_unreadable_checkpoint_names_the_file(tmp_path):
    path = tmp_path / "cut.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 1000)
    data = path.read_bytes()
    path.write_bytes(data[:40] + data[-200:])  # the member list survives, the member's bytes do not
    with pytest.raises(CheckpointInspectionError, match=str(path)):
        has_decoder(str(path))
