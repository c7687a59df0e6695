"""Finetuning with the instance decoder (micro-sam's recipe): LiteMedSAM on real dsb2018 nuclei.

What must hold: a run that trains ``decoder`` writes micro-sam's checkpoint format, whose decoder loads
strictly and moved from its start; a base without a decoder starts a seeded fresh one, a base with one
starts from it (and passes it on when it is not trained); the decoder loss falls when it is optimised;
an interrupted run resumes to the uninterrupted weights, decoder and all.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.finetune import TINY, assert_same_weights, run
from tilesam.config import FinetuneConfig
from tilesam.finetune.cache import EmbeddingCache, view_embedding
from tilesam.finetune.card import register_finetuned, state_path
from tilesam.finetune.data import ImageSet, Sample
from tilesam.finetune.loss import instance_decoder_loss
from tilesam.finetune.trainer import EpochRecord, start_decoder
from tilesam.finetune.views import View, frame_targets, view_pixels
from tilesam.models import load_decoder_state, load_model, model_info, read_checkpoint, resolve
from tilesam.models.unetr import InstanceDecoder, load_decoder

# 4 x 4 embedding tokens per step (64 x 64 decoder output): a second per step on a CPU
WITH_DECODER = replace(
    TINY, train_parts=("mask_decoder", "prompt_encoder", "decoder"), decoder_crop=4, decoder_lr_factor=10.0
)


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def decoder_run(data, embeddings, tmp_path_factory):
    """An uninterrupted two-epoch run that trains the decoder too (LiteMedSAM has none: a fresh one)."""
    return run(data, tmp_path_factory.mktemp("decoder") / "ft.pth", embeddings, config=WITH_DECODER)


def test_schema_offers_the_decoder_and_its_crop():
    config = FinetuneConfig(train_parts=("decoder",))
    assert config.trains_decoder and config.encoder_frozen and config.decoder_crop == "auto"
    assert config.for_device("cpu").decoder_crop == 16 and config.for_device("cuda").decoder_crop is None
    with pytest.raises(ValueError, match="decoder_crop"):
        FinetuneConfig.from_dict({"decoder_crop": 0})  # the schema checks it


def test_a_fresh_decoder_is_seeded_and_leaves_the_global_random_state_alone(data, lite_medsam):
    before = torch.get_rng_state()
    first, origin = start_decoder("lite_medsam", WITH_DECODER, lite_medsam)
    assert torch.equal(torch.get_rng_state(), before)
    again, _ = start_decoder("lite_medsam", WITH_DECODER, lite_medsam)
    other, _ = start_decoder("lite_medsam", replace(WITH_DECODER, seed=4), lite_medsam)
    assert origin == "fresh" and not first.conv_transpose  # micro-sam's default for a new UNETR
    assert_same_weights(first.state_dict(), again.state_dict())
    assert not torch.equal(first.out_conv.weight, other.out_conv.weight)
    assert start_decoder("lite_medsam", TINY, lite_medsam) == (None, None)  # not trained, none to inherit


def test_run_writes_micro_sams_format_with_a_trained_decoder(decoder_run, lite_medsam):
    checkpoint = saved(decoder_run.checkpoint)
    assert set(checkpoint) == {"model_state", "decoder_state"}
    decoder = load_decoder(checkpoint["decoder_state"], source="finetuned", upscale=4)  # strict; LiteMedSAM: 4x
    assert not decoder.conv_transpose
    assert read_checkpoint(decoder_run.checkpoint).decoder_state.keys() == checkpoint["decoder_state"].keys()
    assert_same_weights(load_decoder_state(decoder_run.checkpoint), checkpoint["decoder_state"])

    start, _ = start_decoder("lite_medsam", WITH_DECODER, lite_medsam)
    moved = [k for k, v in start.state_dict().items() if not torch.equal(v, checkpoint["decoder_state"][k])]
    assert any(k.startswith("out_conv") for k in moved) and any(k.startswith("deconv1") for k in moved)

    base, tuned = lite_medsam.state_dict(), load_model(decoder_run.checkpoint, device="cpu").state_dict()
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"mask_decoder", "prompt_encoder"}  # the SAM parts train as before, the encoder stays

    card = json.loads(decoder_run.card.read_text())
    assert card["decoder"] == {"variant": "bilinear", "origin": "fresh", "trained": True}
    assert "decoder" in card["trained_parts"]
    losses = [e.decoder_loss for e in decoder_run.epochs]
    assert losses[0] is None and all(0 < x < 3 for x in losses[1:])  # three dice terms, each in [0, 1]
    log = Path(f"{decoder_run.checkpoint.with_suffix('')}.losses.csv").read_text().splitlines()
    header = log[0].split(",")
    assert "decoder_loss" in header
    assert all(float(row.split(",")[header.index("decoder_loss")]) > 0 for row in log[1:])


def test_training_only_the_decoder_leaves_sam_alone_and_skips_the_prompt_loss(data, embeddings, tmp_path, lite_medsam):
    result = run(data, tmp_path / "ft.pth", embeddings, config=replace(WITH_DECODER, train_parts=("decoder",)))
    checkpoint = saved(result.checkpoint)
    assert_same_weights(checkpoint["model_state"], lite_medsam.state_dict())
    start, _ = start_decoder("lite_medsam", WITH_DECODER, lite_medsam)
    assert not torch.equal(start.out_conv.weight, checkpoint["decoder_state"]["out_conv.weight"])
    log = Path(f"{result.checkpoint.with_suffix('')}.losses.csv").read_text().splitlines()
    header = log[0].split(",")
    rows = [dict(zip(header, row.split(","))) for row in log[1:]]
    assert rows and all(r["mask_loss"] == "" and float(r["decoder_loss"]) == float(r["loss"]) > 0 for r in rows)
    card = json.loads(result.card.read_text())  # strict JSON: no NaN for the losses not computed
    assert all(e["mask_loss"] is None and e["iou_loss"] is None for e in card["epochs"])


def test_the_registered_name_has_the_decoder(decoder_run):
    card = register_finetuned(decoder_run.card)
    assert card.decoder is not None and model_info(card.name)["has_decoder"]
    assert_same_weights(load_decoder_state(card.name), saved(decoder_run.checkpoint)["decoder_state"])
    assert_same_weights(load_model(card.name, device="cpu").state_dict(), saved(decoder_run.checkpoint)["model_state"])


def test_the_decoder_loss_falls_when_it_is_optimised(lite_medsam, data, embeddings):
    """The trainer's decoder loss on one real view, with the same window each step: its gradient lowers it."""
    images = ImageSet([Sample(im, lab) for im, lab in zip(*data)])
    cache = EmbeddingCache(lite_medsam, resolve("lite_medsam").sha256, embeddings)
    view = View(0, None, 0)
    embedding = view_embedding(lite_medsam, images, view, cache, grad=False)
    labels = frame_targets(view_pixels(images, view)[1], 256, 4).labels
    torch.manual_seed(0)
    decoder = InstanceDecoder(upscale=4).train()  # LiteMedSAM: 64 tokens for 256 pixels
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = instance_decoder_loss(decoder, embedding, labels, 256, np.random.default_rng(5), crop=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses


def test_whole_embedding_and_oversized_crops_are_the_same_loss():
    """crop None and a crop at least the embedding's side both decode the whole view, cropped to its frame."""
    torch.manual_seed(1)
    decoder = InstanceDecoder().eval()
    embedding = torch.randn(1, 256, 4, 4)
    labels = np.zeros((16, 12), np.int32)  # a 64-pixel model input with a 16 x 12 view frame
    labels[2:9, 3:10] = 1
    labels[10:15, 2:6] = 2
    rng = np.random.default_rng(0)
    whole = instance_decoder_loss(decoder, embedding, labels, 64, rng, crop=None)
    assert whole.item() == instance_decoder_loss(decoder, embedding, labels, 64, rng, crop=4).item()
    assert 0 < whole.item() < 3
    window = instance_decoder_loss(decoder, embedding, labels, 64, np.random.default_rng(0), crop=2)
    assert window.item() != whole.item()  # 2 x 2 tokens, 32 x 32 input pixels, holding objects


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_uninterrupted_weights_and_decoder(decoder_run, data, embeddings, tmp_path):
    out = tmp_path / "ft.pth"

    def stop_after_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(data, out, embeddings, config=WITH_DECODER, on_epoch_end=stop_after_first_epoch)
    state = saved(state_path(out))
    assert state["decoder"] is not None and "decoder" in {g["name"] for g in state["optimizer"]["param_groups"]}
    resumed = run(data, out, embeddings, config=WITH_DECODER)
    assert resumed.resumed_from == 1
    assert [e.decoder_loss for e in resumed.epochs] == [e.decoder_loss for e in decoder_run.epochs]
    got, want = saved(out), saved(decoder_run.checkpoint)
    assert_same_weights(got["model_state"], want["model_state"])
    assert_same_weights(got["decoder_state"], want["decoder_state"])


@pytest.fixture(scope="module")
def base_with_decoder(lite_medsam, tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """LiteMedSAM in micro-sam's format with a (random, seeded) decoder."""
    torch.manual_seed(7)
    decoder_state = InstanceDecoder(upscale=4).state_dict()
    path = tmp_path_factory.mktemp("base") / "base.pth"
    torch.save({"model_state": lite_medsam.state_dict(), "decoder_state": decoder_state}, path)
    return path, decoder_state


@pytest.mark.parametrize("trained", [True, False], ids=["trained", "inherited"])
def test_a_base_decoder_is_trained_from_or_passed_on(base_with_decoder, data, embeddings, tmp_path, trained):
    base, start = base_with_decoder
    config = WITH_DECODER if trained else TINY
    result = run(data, tmp_path / "ft.pth", embeddings, config=config, base=str(base))
    decoder_state = saved(result.checkpoint)["decoder_state"]
    load_decoder(decoder_state, upscale=4)  # strict
    same = all(torch.equal(v, decoder_state[k]) for k, v in start.items())
    assert same is not trained
    card = json.loads(result.card.read_text())
    assert card["decoder"] == {"variant": "bilinear", "origin": "base", "trained": trained}


def test_decoder_steps_add_updates_of_the_decoder_alone(data, embeddings, tmp_path, lite_medsam):
    """decoder_steps 3: each of the run's 2 steps updates the decoder 3 times and the SAM parts once."""
    config = replace(WITH_DECODER, decoder_steps=3)
    result = run(data, tmp_path / "ft.pth", embeddings, config=config, keep_state=True)
    optimizer = saved(state_path(result.checkpoint))["optimizer"]
    counts = {}
    for group in optimizer["param_groups"]:
        counts[group["name"]] = {int(optimizer["state"][i]["step"]) for i in group["params"]}
    assert counts == {"mask_decoder": {2}, "prompt_encoder": {2}, "decoder": {6}}
    once = saved(run(data, tmp_path / "once.pth", embeddings, config=WITH_DECODER).checkpoint)
    thrice = saved(result.checkpoint)
    assert not torch.equal(once["decoder_state"]["out_conv.weight"], thrice["decoder_state"]["out_conv.weight"])
    assert replace(TINY, decoder_steps=2).decoder_steps == 1  # no decoder to update: does not apply
    with pytest.raises(ValueError, match="decoder_steps > 1 needs"):
        replace(WITH_DECODER, decoder_steps=2, train_parts=("image_encoder", "decoder"))
