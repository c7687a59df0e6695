"""The schema's finetune defaults: a model named `<base>-ft-<dataset>` with no `finetune` settings gets an
instance decoder (AIS), trained in a budget sized to the device the job runs on.

What must hold: the defaults, resolved for a CPU and for a GPU, train the decoder with many more updates than
prompt steps; the plan gives such a model AIS; one real (short) step with the defaults writes micro-sam's
checkpoint with a trained fresh decoder, and the card records the settings as resolved for the CPU.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_plan import full_config, labelled_images

from helpers.finetune import run, weights
from tilesam import config as schema
from tilesam.config import FinetuneConfig
from tilesam.finetune.trainer import start_decoder
from tilesam.models import load_decoder_state
from tilesam.plan import Plan


@pytest.mark.parametrize(("device", "crop"), [("cpu", 16), ("cuda", None), ("cuda:1", None)])
def test_the_schema_defaults_train_a_decoder_on_every_device(device, crop):
    section = schema.defaults("finetune")  # what the finetune rule passes when the config has no `finetune`
    config = schema.build(FinetuneConfig, section)
    assert config.auto_keys == ("decoder_crop",)
    resolved = config.for_device(device)
    assert resolved.trains_decoder and resolved.trains_sam and resolved.encoder_frozen and not resolved.auto_keys
    assert resolved.decoder_crop == crop  # 16 x 16-token windows on a CPU, the whole embedding on a GPU
    assert resolved.decoder_steps * resolved.iterations >= 2000  # a fresh decoder needs thousands of updates


def test_auto_where_a_key_does_not_offer_it_is_an_error_naming_the_key():
    with pytest.raises(ValueError, match="finetune.iterations: 'auto' is not a value of it"):
        FinetuneConfig(iterations="auto")
    with pytest.raises(ValueError, match="finetune.decoder_crop: 'big'"):
        FinetuneConfig(decoder_crop="big")
    with pytest.raises(ValueError, match="train_parts"):  # the resolved settings are checked for every device
        FinetuneConfig.from_dict({"train_parts": ["encoder"]})


def test_a_config_that_only_names_a_finetuned_model_plans_ais_for_it(tmp_path):
    cfg = full_config(models=["lite_medsam-ft-train"], segmentation={"methods": ["auto"]})
    cfg["datasets"]["train"] = labelled_images(tmp_path, 2)
    assert Plan.from_config(cfg).methods_of("lite_medsam-ft-train") == ["ais"]


def test_one_step_with_the_defaults_trains_a_fresh_decoder(data, embeddings, tmp_path, lite_medsam):
    one_step = replace(FinetuneConfig(), iterations=1, objects_per_image=2, sub_iterations=1, decoder_steps=2)
    result = run(data, tmp_path / "ft.pth", embeddings, config=one_step)  # on the CPU

    card = json.loads(result.card.read_text())
    assert card["decoder"] == {"variant": "bilinear", "origin": "fresh", "trained": True}
    assert card["config"]["decoder_crop"] == 16 and card["config"]["decoder_steps"] == 2  # auto, for the CPU
    assert result.epochs[-1].decoder_loss is not None
    saved = weights(result.checkpoint)
    assert saved.keys() == {"model_state", "decoder_state"}
    fresh, _ = start_decoder("lite_medsam", one_step, lite_medsam)
    moved = [k for k, v in fresh.state_dict().items() if not torch.equal(v.cpu(), saved["decoder_state"][k])]
    assert moved  # trained, not only carried
    assert load_decoder_state(result.name) is not None  # registered: AIS finds the decoder by the model's name
