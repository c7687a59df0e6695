"""Training the real LiteMedSAM on real nuclei (dsb2018) for a few iterations.

What must hold: training changes the trained parts (and only those) and lowers the loss; zero
iterations give the base weights bit for bit; an interrupted run resumes to exactly the weights of
an uninterrupted one; the same seed gives the same weights; the learning rate warms up, then decays.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import pytest
import torch

from helpers.finetune import TINY, assert_same_weights, run, weights
from tilesam.cli import main as cli_main
from tilesam.config import FinetuneConfig
from tilesam.finetune.cache import EmbeddingCache
from tilesam.finetune.card import state_path
from tilesam.finetune.data import FinetuneError, ImageSet, Sample
from tilesam.finetune.loss import prompt_loss
from tilesam.finetune.trainer import EpochRecord, _save_atomic, lr_schedule
from tilesam.models import load_model, resolve


def test_finetuning_changes_the_trained_parts_and_lowers_the_loss(reference, lite_medsam, data, embeddings):
    base, tuned = lite_medsam.state_dict(), weights(reference.checkpoint)
    assert base.keys() == tuned.keys()
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"mask_decoder", "prompt_encoder"}  # the frozen image encoder is untouched
    assert reference.best_epoch == 2 and [e.iterations for e in reference.epochs] == [0, 1, 2]

    # the training loss (boxes or points, iterative) on the same objects and prompts, before and after
    images = ImageSet([Sample(im, lab) for im, lab in zip(*data)])
    cache = EmbeddingCache(lite_medsam, resolve("lite_medsam").sha256, embeddings)  # the encoder is shared
    tuned_model = load_model(reference.checkpoint, device="cpu")
    probe = replace(TINY, objects_per_image=4)
    before = prompt_loss(lite_medsam, images, probe, cache, seed=11)
    after = prompt_loss(tuned_model, images, probe, cache, seed=11)
    assert after < before - 0.03, f"training loss {before:.3f} -> {after:.3f}"


def test_zero_iterations_give_the_base_weights_exactly(data, embeddings, lite_medsam, tmp_path):
    out = tmp_path / "zero.pth"
    argv = [
        "finetune",
        "--model",
        "lite_medsam",
        "--images",
        *map(str, data[0]),
        "--labels",
        *map(str, data[1]),
        "--out",
        str(out),
        "--iterations",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--embedding-cache",
        str(embeddings),
    ]
    assert cli_main(argv) == 0
    saved = weights(out)  # the schema's default trains an instance decoder: micro-sam's format, a fresh decoder
    assert saved.keys() == {"model_state", "decoder_state"}
    base, tuned = lite_medsam.state_dict(), saved["model_state"]
    assert base.keys() == tuned.keys()
    difference = max(float((base[k].double() - tuned[k].double()).abs().max()) for k in base if base[k].numel())
    assert difference == 0.0
    assert_same_weights(base, tuned)


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_uninterrupted_weights(reference, data, embeddings, tmp_path):
    out = tmp_path / "ft.pth"

    def stop_after_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(data, out, embeddings, on_epoch_end=stop_after_first_epoch)
    assert state_path(out).is_file() and not out.exists()
    with pytest.raises(FinetuneError, match="other settings"):  # another seed never continues this state
        run(data, out, embeddings, config=replace(TINY, seed=4))
    resumed = run(data, out, embeddings)
    assert resumed.resumed_from == 1 and [e.epoch for e in resumed.epochs] == [0, 1, 2]
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in reference.epochs]
    assert_same_weights(weights(out), weights(reference.checkpoint))


def test_same_seed_gives_the_same_weights(reference, data, embeddings, tmp_path):
    again = run(data, tmp_path / "again.pth", embeddings)
    assert_same_weights(weights(again.checkpoint), weights(reference.checkpoint))
    assert [e.train_loss for e in again.epochs] == [e.train_loss for e in reference.epochs]


def test_schedule_warms_up_then_decays():
    factor = lr_schedule(FinetuneConfig(iterations=100, warmup_fraction=0.1, min_lr_factor=0.1))
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(50) < 1.0 and factor(100) == pytest.approx(0.1)


def test_epoch_score_is_the_mean_of_box_and_point_iou():
    assert EpochRecord(epoch=0, iterations=0).score is None  # no validation data: the last epoch is kept
    val = {"box_iou": 0.8, "point_iou": 0.4, "box_dice": 0.0, "point_dice": 0.0}
    assert EpochRecord(epoch=1, iterations=5, val=val).score == pytest.approx(0.6)


def test_checkpoint_bytes_do_not_depend_on_the_writing_process(tmp_path, monkeypatch):
    """Same weights, same file: the sha256 on the card is reproducible (it named the pid before)."""
    state = {"w": torch.arange(6.0), "b": torch.ones(2, 3)}
    digests = []
    for pid in (101, 202):
        monkeypatch.setattr(os, "getpid", lambda pid=pid: pid)
        out = tmp_path / str(pid) / "ft.pth"
        out.parent.mkdir()
        _save_atomic(state, out)
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
        assert [p.name for p in out.parent.iterdir()] == ["ft.pth"]  # no temporary left behind
    assert digests[0] == digests[1]
