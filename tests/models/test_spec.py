"""Model ids: a registry name is its own id; a checkpoint file's id follows its path and its content."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import torch

from tilesam.models.spec import FINGERPRINT_BYTES, content_fingerprint, files_of, model_id, resolve_spec


def _save(path, value: float, n: int = 2**19) -> str:
    """A zip checkpoint of about 2 MB (> the fingerprint's two ends) whose tensor holds ``value``."""
    torch.save({"image_encoder.w": torch.full((n,), value)}, path)
    return resolve_spec(str(path))


def _overwrite_keeping_size_and_mtime(path, write) -> None:
    """Rewrite ``path`` as a user restoring a file would: same size, the old mtime put back."""
    before = path.stat()
    write()
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_registry_name_is_its_own_id():
    assert model_id("lite_medsam") == "lite_medsam" and files_of("lite_medsam") == []


def test_the_same_file_keeps_its_id_through_a_touch_and_a_copy_elsewhere_differs(tmp_path):
    spec = _save(tmp_path / "best.pt", 1.0)
    first = model_id(spec)
    assert first.startswith("best-") and model_id(spec) == first
    os.utime(spec, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert model_id(spec) == first  # the mtime is not the content
    (tmp_path / "other").mkdir()
    copy = shutil.copy2(spec, tmp_path / "other" / "best.pt")
    assert model_id(resolve_spec(str(copy))) != first  # another path: another model, as before


def test_an_overwritten_checkpoint_gets_a_new_id_even_with_size_and_mtime_kept(tmp_path):
    """Issue 30 case 1: new weights at the same path are a new model (a zip's tail has each member's CRC-32)."""
    path = tmp_path / "best.pt"
    spec = _save(path, 1.0)
    old = model_id(spec)
    _overwrite_keeping_size_and_mtime(path, lambda: _save(path, 2.0))
    assert model_id(spec) != old


@pytest.mark.parametrize("where", ["head", "middle", "tail"])
def test_the_fingerprint_sees_a_byte_changed_at_either_end(tmp_path, where):
    path = tmp_path / "raw.bin"
    data = bytearray(os.urandom(3 * FINGERPRINT_BYTES))
    path.write_bytes(data)
    before = content_fingerprint(path)
    at = {"head": 10, "middle": len(data) // 2, "tail": len(data) - 10}[where]
    data[at] ^= 0xFF
    _overwrite_keeping_size_and_mtime(path, lambda: path.write_bytes(data))
    # the middle of a file that is not a zip is the one blind spot: the record's full hash covers it
    assert (content_fingerprint(path) != before) == (where != "middle")


def test_a_decoder_file_is_part_of_the_id(tmp_path):
    weights = _save(tmp_path / "best.pt", 1.0)
    decoder = tmp_path / "decoder.pt"
    torch.save({"base.w": torch.zeros(4)}, decoder)
    spec = resolve_spec(f"{weights}+{decoder}")
    assert files_of(spec) == [tmp_path / "best.pt", decoder]
    old = model_id(spec)
    assert old != model_id(weights)
    torch.save({"base.w": torch.ones(4)}, decoder)
    assert model_id(spec) != old


def test_planning_a_large_checkpoint_reads_only_its_ends(tmp_path):
    """A sparse 4 GB file: its id costs two reads of 1 MB, not the file."""
    path = tmp_path / "huge.pt"
    with path.open("wb") as f:
        f.truncate(4 * 2**30)
    start = time.perf_counter()
    model_id(resolve_spec(str(path)))
    assert time.perf_counter() - start < 0.5
