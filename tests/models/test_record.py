"""The workflow's model record: made from the config and the files, refused when it disagrees with either."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import pytest
import torch

from tilesam.download import ChecksumError
from tilesam.models import fetch, load_model
from tilesam.models.record import ModelRecord, RecordError, finetuned_record, make_record, read_checked
from tilesam.models.spec import model_id, resolve_spec

LITE_SHA = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TILESAM_CACHEDIR", str(tmp_path / "cache"))


@pytest.fixture
def checkpoint(tmp_path) -> str:
    """A user's own checkpoint file (LiteMedSAM's weights as a plain state dict), as the plan resolves it."""
    path = tmp_path / "my model.pth"
    torch.save(torch.load(fetch("lite_medsam"), weights_only=True), path)
    return resolve_spec(str(path))


def _written(spec: str, folder, *, trust_pickle: bool = False):
    record = make_record(spec, model_id(spec), trust_pickle=trust_pickle)
    return record, record.write(folder / "resources" / "models" / f"{record.id}.json")


def _edit(record_file, **changes) -> None:
    data = json.loads(record_file.read_text())
    data.update(changes)
    record_file.write_text(json.dumps(data))


def test_a_file_record_round_trips_and_passes_its_check(checkpoint, tmp_path):
    record, path = _written(checkpoint, tmp_path)
    assert ModelRecord.read(path) == record
    assert record.load == record.path == checkpoint and record.decoder is None and not record.trust_pickle
    sha = hashlib.sha256(open(checkpoint, "rb").read()).hexdigest()
    assert record.sha256 == sha and record.checksum == f"sha256:{sha}"
    assert record.architecture == "lite_medsam_tinyvit" and list(record.xxh128) == [checkpoint]
    assert read_checked(path, checkpoint, trust_pickle=False) == record


def test_a_registry_record_is_the_cards_and_never_trusted(tmp_path):
    record, path = _written("lite_medsam", tmp_path, trust_pickle=True)
    assert record.load == "lite_medsam@v1" and not record.trust_pickle and record.sha256 == LITE_SHA
    for trust in (False, True):  # the config's trust_pickle is for the user's own files only
        assert read_checked(path, "lite_medsam", trust_pickle=trust) == record


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"load": "/elsewhere/evil.pth"}, "load is '/elsewhere/evil.pth', but the config gives"),
        ({"trust_pickle": True}, "trust_pickle is True, but the config gives False"),
        ({"sha256": "0" * 64}, f"sha256 is {'0' * 64}, but"),
    ],
)
def test_an_edited_file_record_is_refused_naming_it_and_the_field(checkpoint, tmp_path, edit, field):
    """Issue 30 case 2: the record is derived data, never an instruction."""
    _, path = _written(checkpoint, tmp_path)
    _edit(path, **edit)
    with pytest.raises(RecordError, match=f"model record {path}: {field}.*delete {path} and rerun"):
        read_checked(path, checkpoint, trust_pickle=False)


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"checksum": "sha256:" + "0" * 64}, "checksum"),
        ({"name": "vit_h"}, "name"),
        ({"load": "lite_medsam@v0"}, "load"),
        ({"trust_pickle": True}, "trust_pickle"),
    ],
)
def test_an_edited_registry_record_is_refused(tmp_path, edit, field):
    _, path = _written("lite_medsam", tmp_path)
    _edit(path, **edit)
    with pytest.raises(RecordError, match=f"model record {path}: {field} is"):
        read_checked(path, "lite_medsam", trust_pickle=False)


def test_a_record_made_for_another_config_is_refused(checkpoint, tmp_path):
    _, path = _written(checkpoint, tmp_path)
    with pytest.raises(RecordError, match="trust_pickle is False, but the config gives True"):
        read_checked(path, checkpoint, trust_pickle=True)
    with pytest.raises(RecordError, match="load is .* but the config gives 'lite_medsam@v1'"):
        read_checked(path, "lite_medsam", trust_pickle=False)


class _Marker:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_an_edited_record_cannot_make_a_job_unpickle_a_file(checkpoint, tmp_path):
    """The attack of issue 30 case 2: load and trust_pickle pointed at a file that runs code."""
    evil, marker = tmp_path / "evil.pth", tmp_path / "ran"
    with evil.open("wb") as f:
        pickle.dump({"model_state": _Marker(str(marker))}, f)
    _, path = _written(checkpoint, tmp_path)
    _edit(path, load=str(evil), path=str(evil), trust_pickle=True, xxh128={str(evil): "0" * 32})
    with pytest.raises(RecordError, match="load is"):
        read_checked(path, checkpoint, trust_pickle=False)
    assert not marker.exists()


def _overwrite_keeping_size_and_mtime(path: str) -> None:
    before = os.stat(path)
    state = torch.load(path, weights_only=True)
    state["mask_decoder.iou_token.weight"] = state["mask_decoder.iou_token.weight"] + 1
    torch.save(state, path)
    assert os.stat(path).st_size == before.st_size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_an_overwritten_checkpoint_is_refused_before_loading(checkpoint, tmp_path):
    """Issue 30 case 1: new weights at the same path (size and mtime kept) are not the recorded model."""
    _, path = _written(checkpoint, tmp_path)
    _overwrite_keeping_size_and_mtime(checkpoint)
    with pytest.raises(RecordError, match=f"the checkpoint {checkpoint} changed since its record {path} was made"):
        read_checked(path, checkpoint, trust_pickle=False)


def test_a_checkpoint_overwritten_after_the_check_is_refused_by_the_load(checkpoint, tmp_path):
    """The load re-checks the record's xxh128: free when the file is unchanged, a ChecksumError when not."""
    _, path = _written(checkpoint, tmp_path)
    record = read_checked(path, checkpoint, trust_pickle=False)
    assert load_model(record.load, device="cpu", sha256=record.weights_checksum) is not None
    _overwrite_keeping_size_and_mtime(checkpoint)
    with pytest.raises(ChecksumError, match=checkpoint):
        load_model(record.load, device="cpu", sha256=record.weights_checksum)


def test_the_check_hashes_each_file_once_and_the_load_reuses_it(checkpoint, tmp_path, monkeypatch):
    import pooch

    _, path = _written(checkpoint, tmp_path)
    calls = []
    real = pooch.file_hash
    monkeypatch.setattr(pooch, "file_hash", lambda *a, **k: calls.append(k.get("alg")) or real(*a, **k))
    record = read_checked(path, checkpoint, trust_pickle=False)
    assert calls == ["xxh128"]  # the sha256 is the cache's, for the content the xxh128 just proved
    load_model(record.load, device="cpu", sha256=record.weights_checksum)
    assert calls == ["xxh128"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"name": "lite_medsam", "load": "lite_medsam", "sha256": "x"}', r"no .*xxh128 \(made by an older tilesam"),
        ("not json", "cannot be read"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_an_unreadable_or_old_record_names_the_file(tmp_path, content, message):
    path = tmp_path / "m.json"
    path.write_text(content)
    with pytest.raises(RecordError, match=f"model record {path}: {message}"):
        ModelRecord.read(path)


def test_a_field_of_the_wrong_type_is_refused(checkpoint, tmp_path):
    _, path = _written(checkpoint, tmp_path)
    _edit(path, trust_pickle="no")
    with pytest.raises(RecordError, match="wrong type of trust_pickle"):
        ModelRecord.read(path)
    _edit(path, trust_pickle=False, xxh128={})
    with pytest.raises(RecordError, match="xxh128 must name exactly its files"):
        ModelRecord.read(path)


def test_a_finetuned_record_comes_from_its_card(checkpoint, tmp_path):
    from tilesam.download import file_sha256

    folder = tmp_path / "results" / "finetuned" / "train"
    folder.mkdir(parents=True)
    weights = folder / "lite_medsam.pth"
    shutil.copy(checkpoint, weights)
    card = folder / "lite_medsam.json"
    fields = {"name": "lite_medsam-ft-train", "architecture": "lite_medsam_tinyvit", "version": "v1"}
    convention = {"pixel_mean": [0.0] * 3, "pixel_std": [255.0] * 3, "image_size": 256}
    origin = {"base": "lite_medsam", "dataset": "train", "checkpoint": weights.name}
    card.write_text(json.dumps({**fields, **convention, **origin, "sha256": file_sha256(weights)}))
    record = finetuned_record(card, "lite_medsam-ft-train")
    out = record.write(tmp_path / "lite_medsam-ft-train.json")
    assert record.load == str(weights.resolve()) and record.sha256 == file_sha256(checkpoint)
    assert read_checked(out, str(weights), trust_pickle=False) == record
