"""A finished run's card, loss log and plot; the checkpoint loads by path and by its registered name.

What must hold: the card records the base, the data and the epochs; the checkpoint loads in a fresh
process by path and by name; a checkpoint that differs from its card is refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers.finetune import assert_same_weights, weights
from tilesam.finetune.card import BaseModel, register_finetuned, state_path, trained_on
from tilesam.models import load_model, resolve


def test_outputs_card_loss_log_and_plot(reference, data):
    card = json.loads(reference.card.read_text())
    assert card["name"] == "lite_medsam-ft-dsb2018" == reference.name
    assert card["base"] == "lite_medsam@v1" and card["base_sha256"] == resolve("lite_medsam").sha256
    assert card["architecture"] == "lite_medsam_tinyvit" and card["image_size"] == 256
    assert card["train_images"] == [str(p.resolve()) for p in data[0]] and card["val_images"] == []
    assert card["iterations"] == 2 and card["seed"] == 3 and card["best_epoch"] == 2
    assert card["trained_parts"] == ["mask_decoder", "prompt_encoder"]
    assert card["trained_on"][-1] == card["dataset"] == "dsb2018"  # benchmarks mark it in domain there
    assert card["arithmetic"]["threads"] == torch.get_num_threads() and card["arithmetic"]["device"] == "cpu"
    assert [e["epoch"] for e in card["epochs"]] == [0, 1, 2] and card["epochs"][2]["train_loss"] > 0
    stem = reference.checkpoint.with_suffix("")
    log_lines = Path(f"{stem}.losses.csv").read_text().splitlines()
    assert log_lines[0] == "iteration,epoch,loss,mask_loss,iou_loss,decoder_loss,lr" and len(log_lines) == 3
    assert Path(f"{stem}.losses.png").read_bytes()[:4] == b"\x89PNG"
    assert not state_path(reference.checkpoint).exists()  # a finished run leaves no training state


def test_checkpoint_loads_in_a_fresh_process_by_path_and_by_name(reference, tmp_path):
    script = f"""
import sys, torch
from tilesam.finetune.card import register_finetuned
from tilesam.models import load_model
saved = torch.load({str(reference.checkpoint)!r}, map_location="cpu", weights_only=True)
by_path = load_model({str(reference.checkpoint)!r}, device="cpu")
card = register_finetuned({str(reference.card)!r})
by_name = load_model(card.name, device="cpu")
for model in (by_path, by_name):
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert model.image_encoder.img_size == 256 and float(model.pixel_std[0]) == 255.0
print(card.name)
"""
    env = {**os.environ, "TILESAM_CACHEDIR": str(tmp_path / "fresh-cache")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "lite_medsam-ft-dsb2018"


def test_registered_name_resolves_and_a_changed_checkpoint_is_refused(reference, tmp_path):
    card = register_finetuned(reference.card)
    assert resolve("lite_medsam-ft-dsb2018") == card and card.sha256 is not None
    assert_same_weights(load_model("lite_medsam-ft-dsb2018", device="cpu").state_dict(), weights(reference.checkpoint))
    copy = tmp_path / "ft.pth"
    state = weights(reference.checkpoint)
    state["mask_decoder.iou_token.weight"] += 1
    torch.save(state, copy)
    (tmp_path / "ft.json").write_text(reference.card.read_text())
    with pytest.raises(Exception, match="sha256"):
        register_finetuned(tmp_path / "ft.json")


def test_a_model_finetuned_from_a_finetuned_checkpoint_inherits_its_training_data(tmp_path):
    (tmp_path / "first.pth").write_bytes(b"weights")
    (tmp_path / "first.json").write_text(json.dumps({"trained_on": ["livecell", "dsb2018"]}))
    base = BaseModel(str(tmp_path / "first.pth"), "first", "0" * 64, "vit_b")
    assert trained_on(base, "mine") == ["livecell", "dsb2018", "mine"]
    assert trained_on(base, "dsb2018") == ["livecell", "dsb2018"]  # once each
    bare = BaseModel(str(tmp_path / "bare.pth"), "bare", "0" * 64, "vit_b")
    (tmp_path / "bare.pth").write_bytes(b"weights")
    assert trained_on(bare, "mine") == ["mine"]  # a checkpoint without a card: only what tilesam trained it on
