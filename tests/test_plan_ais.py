"""The plan's AIS parts: which method each model gets, the decoder check, per-model AIS settings, the search."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_plan import full_config, labelled_images

from tilesam import config as schema
from tilesam import plan as plan_module
from tilesam.models.spec import model_id, resolve_spec
from tilesam.plan import Plan, PlanError, has_decoder


@pytest.fixture
def decoder_checkpoint(tmp_path):
    """A training checkpoint with a decoder state (what micro-sam's training writes), and one without."""
    with_decoder, without = tmp_path / "withdec.pt", tmp_path / "plain.pt"
    torch.save({"model_state": {"a": torch.zeros(2)}, "decoder_state": {"base.w": torch.zeros(2)}}, with_decoder)
    torch.save({"image_encoder.x": torch.zeros(2)}, without)
    return str(with_decoder), str(without)


def mid(path: str) -> str:
    """The plan's id of a checkpoint file."""
    return model_id(resolve_spec(path))


def test_decoders_are_found_without_loading_the_model(decoder_checkpoint):
    with_decoder, without = decoder_checkpoint
    assert has_decoder(with_decoder) and not has_decoder(without)
    assert not has_decoder("lite_medsam")


def test_auto_is_ais_with_a_decoder_and_amg_without(decoder_checkpoint):
    with_decoder, without = decoder_checkpoint
    plan = Plan.from_config(
        full_config(models=[with_decoder, without, "lite_medsam"], segmentation={"methods": ["amg", "auto"]})
    )
    dec, plain = mid(with_decoder), mid(without)
    assert plan.methods_of(dec) == ["amg", "ais"]
    assert plan.methods_of(plain) == plan.methods_of("lite_medsam") == ["amg"]
    evaluations = plan.evaluations()
    assert f"results/evaluation/demo/nuclei_small/{dec}/ais.json" in evaluations
    assert not any(f"/{plain}/ais" in e or "/lite_medsam/ais" in e for e in evaluations)
    assert len([e for e in evaluations if f"/{dec}/" in e]) == 2 * len([e for e in evaluations if f"/{plain}/" in e])
    assert f"results/segmentation/demo/nuclei_stack/{dec}/ais/labels.ome.zarr" in plan.all_outputs()


def test_ais_for_a_model_without_a_decoder_is_an_error_naming_it(decoder_checkpoint):
    with_decoder, _ = decoder_checkpoint
    with pytest.raises(PlanError, match="model 'lite_medsam' .*no instance-segmentation decoder"):
        Plan.from_config(full_config(models=[with_decoder, "lite_medsam"], segmentation={"methods": ["ais"]}))
    assert Plan.from_config(full_config(models=[with_decoder], segmentation={"methods": ["ais"]}))


def test_a_cards_ais_defaults_apply_unless_the_user_set_the_key(monkeypatch):
    card = SimpleNamespace(decoder=object(), ais={"center_distance_threshold": 0.4, "min_size": 100})
    monkeypatch.setattr(plan_module, "_card", lambda spec: card)
    monkeypatch.setattr(plan_module, "has_decoder", lambda spec: True)
    defaults = schema.defaults("segmentation", "ais")
    written = {"datasets": {"demo": {"source": "synthetic"}}, "models": ["lite_medsam"], "offline": True}
    cfg = {**written, "segmentation": {"methods": ["ais"], "ais": {"min_size": 0}}}
    settings = Plan.from_config(cfg).settings("lite_medsam", "ais")
    assert settings == {**defaults, "center_distance_threshold": 0.4, "min_size": 0}
    # nothing written: the card's defaults; every key written (as a filled-in config): the config's
    settings = Plan.from_config(written).settings("lite_medsam", "ais")
    assert settings["center_distance_threshold"] == 0.4 and settings["min_size"] == 100
    assert Plan.from_config(full_config()).settings("lite_medsam", "ais")["center_distance_threshold"] == 0.4
    filled = full_config(segmentation={"ais": defaults})
    assert Plan.from_config(filled).settings("lite_medsam", "ais")["center_distance_threshold"] == 0.5
    # what the segment job is given
    segment = Plan.from_config(written).segment_config("lite_medsam")
    assert (
        set(segment) == {"segmentation", "embeddings", "stitch"} and segment["segmentation"]["ais"]["min_size"] == 100
    )
    assert schema.build(schema.AisParams, segment["segmentation"]["ais"]).center_distance_threshold == 0.4


def test_a_cards_unknown_ais_key_is_an_error(monkeypatch):
    monkeypatch.setattr(plan_module, "_card", lambda spec: SimpleNamespace(ais={"centre": 0.4}))
    with pytest.raises(PlanError, match="unknown ais defaults"):
        Plan.from_config(full_config()).settings("lite_medsam", "ais")


def test_ais_search_is_tuning_and_feeds_only_ais(decoder_checkpoint):
    with_decoder, _ = decoder_checkpoint
    cfg = full_config(models=[with_decoder], segmentation={"methods": ["amg", "ais"], "ais_search": {"dataset": "val"}})
    cfg["datasets"] = {"val": {"source": "synthetic"}, "test": {"source": "synthetic"}}
    plan, dec = Plan.from_config(cfg), mid(with_decoder)
    assert plan.is_tuning("val") and not plan.is_tuning("test")
    assert plan.search_result("test", dec, "ais") == [f"results/benchmark/ais_search/{dec}.csv"]
    assert plan.search_result("test", dec, "amg") == [] and plan.search_result("val", dec, "ais") == []
    images = plan.search_images(dec, "ais")
    assert [i["gt"] for i in images][0] == "results/labels/val/nuclei_large.ome.zarr"
    assert plan.search_images(dec, "amg") == []
    with pytest.raises(PlanError, match="ais_search: dataset 'nowhere'"):
        Plan.from_config(full_config(segmentation={"ais_search": {"dataset": "nowhere"}}))


def test_ais_segment_memory_follows_the_decoder_batch(decoder_checkpoint):
    with_decoder, _ = decoder_checkpoint
    cfg = full_config(models=[with_decoder], segmentation={"methods": ["ais"]})
    one = Plan.from_config({**cfg, "segmentation": {**cfg["segmentation"], "ais": {"tiles_per_batch": 1}}})
    four = Plan.from_config({**cfg, "segmentation": {**cfg["segmentation"], "ais": {"tiles_per_batch": 4}}})
    dec = mid(with_decoder)
    one, four = one.resources, four.resources
    assert four.segment_mb(dec, "ais") - one.segment_mb(dec, "ais") == 3 * 2000
    assert abs(one.segment_mb(dec, "ais", attempt=2) - 2 * one.segment_mb(dec, "ais")) <= 1


def test_a_cards_amg_defaults_apply_to_its_finetuned_models_too(monkeypatch, tmp_path):
    """A box-only model's card asks for a box grid; the config's own AMG keys still win."""
    card = SimpleNamespace(decoder=None, amg={"prompt": "box", "points_per_side": 64})
    monkeypatch.setattr(plan_module, "_card", lambda spec: card)
    cfg = {"models": ["lite_medsam", "lite_medsam-ft-train"], "offline": True}
    cfg["datasets"] = {"demo": {"source": "synthetic"}, "train": labelled_images(tmp_path, 2)}
    plan = Plan.from_config({**cfg, "segmentation": {"amg": {"points_per_side": 4}}})
    for model in ("lite_medsam", "lite_medsam-ft-train"):
        amg = plan.segment_config(model)["segmentation"]["amg"]
        assert amg["prompt"] == "box" and amg["points_per_side"] == 4
    unset = Plan.from_config(cfg)
    assert unset.segment_config("lite_medsam")["segmentation"]["amg"]["points_per_side"] == 64
    assert unset.resources.segment_minutes("lite_medsam") > plan.resources.segment_minutes(
        "lite_medsam"
    )  # 64 x 64 vs 4 x 4


def test_a_finetuned_model_has_a_decoder_when_finetuning_trains_one_or_its_base_has_one(monkeypatch, tmp_path):
    cfg = full_config(models=["lite_medsam", "lite_medsam-ft-train"], segmentation={"methods": ["auto"]})
    cfg["datasets"]["train"] = labelled_images(tmp_path, 2)
    plan = Plan.from_config(cfg)  # the default trains a decoder
    assert plan.methods_of("lite_medsam-ft-train") == ["ais"] and plan.methods_of("lite_medsam") == ["amg"]
    cfg["finetune"]["train_parts"] = ["mask_decoder", "prompt_encoder"]
    assert Plan.from_config(cfg).methods_of("lite_medsam-ft-train") == ["amg"]
    cfg["finetune"]["train_parts"] = ["mask_decoder"]  # a base with a decoder passes it on untrained
    monkeypatch.setattr(plan_module, "has_decoder", lambda spec: spec == "lite_medsam")
    assert Plan.from_config(cfg).methods_of("lite_medsam-ft-train") == ["ais"]


def test_a_finetuned_model_of_a_checkpoint_file_is_planned_under_its_base_files_id(decoder_checkpoint, tmp_path):
    """`<file>-ft-<dataset>` with `auto`: planned as `<base id>-ft-<dataset>` (was a FileNotFoundError)."""
    with_decoder, without = decoder_checkpoint
    cfg = full_config(models=[without, f"{without}-ft-train", f"{with_decoder}-ft-train"])
    cfg["segmentation"]["methods"] = ["auto"]
    cfg["compare"] = [{"vanilla": without, "finetuned": f"{without}-ft-train"}]
    cfg["datasets"]["train"] = labelled_images(tmp_path / "train", 2)
    cfg["finetune"]["train_parts"] = ["mask_decoder", "prompt_encoder"]  # no decoder trained: the base's decides
    plan = Plan.from_config(cfg)
    plain, dec = f"{mid(without)}-ft-train", f"{mid(with_decoder)}-ft-train"
    assert plan.finetuned == {plain: (mid(without), "train"), dec: (mid(with_decoder), "train")}
    assert plan.models_of["demo"] == [mid(without), plain, dec]
    assert plan.methods_of(plain) == ["amg"] and plan.methods_of(dec) == ["ais"]  # the base's decoder
    assert plan.config["compare"] == [{"vanilla": mid(without), "finetuned": plain}]
    assert plan.finetune_inputs("train", mid(without))["model"] == f"resources/models/{mid(without)}.json"
    assert f"results/evaluation/demo/nuclei_small/{dec}/ais.json" in plan.evaluations()


def test_a_finetuned_model_of_a_missing_file_is_an_error_naming_the_file(tmp_path):
    cfg = full_config(models=[f"{tmp_path}/gone.pt-ft-train"], segmentation={"methods": ["auto"]})
    cfg["datasets"]["train"] = labelled_images(tmp_path / "train", 2)
    with pytest.raises(
        PlanError, match=f"finetuned from '{tmp_path}/gone.pt'.*no such checkpoint file {tmp_path}/gone.pt"
    ):
        Plan.from_config(cfg)


def test_the_rules_filling_in_the_config_leaves_the_cards_settings_in_force():
    """common.smk does `config.update(PLAN.config)`: the plan keeps its own copy of the config as written."""
    written = {"datasets": {"demo": {"source": "synthetic"}}, "models": ["lite_medsam"], "offline": True}
    plan = Plan.from_config(written)
    written.update(plan.config)
    assert plan.settings("lite_medsam", "amg")["prompt"] == "box"  # LiteMedSAM's card: a box grid
    assert plan.segment_config("lite_medsam")["segmentation"]["amg"]["prompt"] == "box"


def test_auto_compares_ais_and_apg_where_there_is_validation_data(decoder_checkpoint):
    with_decoder, _ = decoder_checkpoint
    cfg = full_config(models=[with_decoder, "lite_medsam"], segmentation={"methods": ["auto"]})
    cfg["datasets"] = {"val": {"source": "synthetic"}, "test": {"source": "synthetic"}}
    dec = mid(with_decoder)
    assert Plan.from_config(cfg).methods_of(dec) == ["ais"]  # no validation data: micro-sam's default
    cfg["segmentation"]["ais_search"] = {"dataset": "val"}
    plan = Plan.from_config(cfg)
    assert plan.methods_of(dec) == ["auto"] and plan.methods_of("lite_medsam") == ["amg"]
    assert plan.search_result("test", dec, "auto") == [
        f"results/benchmark/ais_search/{dec}.csv",
        f"results/benchmark/apg_search/{dec}.csv",
    ]
    with pytest.raises(PlanError, match="'lite_medsam' .* has no instance-segmentation decoder, which apg needs"):
        Plan.from_config(full_config(segmentation={"methods": ["apg"]}))


def test_methods_per_model_give_apg_to_the_finetuned_model_only(tmp_path):
    """A mapping by model: the base without a decoder keeps auto (amg), its finetuned model adds apg."""
    methods = {"lite_medsam": ["auto"], "lite_medsam-ft-train": ["auto", "apg"]}
    cfg = full_config(models=["lite_medsam", "lite_medsam-ft-train"], segmentation={"methods": methods})
    cfg["datasets"]["train"] = labelled_images(tmp_path, 2)
    plan = Plan.from_config(cfg)
    assert plan.methods_of("lite_medsam") == ["amg"] and plan.methods_of("lite_medsam-ft-train") == ["ais", "apg"]
    assert plan.listed_methods() == ["auto", "apg"]
    assert "results/evaluation/demo/nuclei_small/lite_medsam-ft-train/apg.json" in plan.evaluations()
    assert not any("/lite_medsam/apg" in e for e in plan.evaluations())
    shown = plan.qualitative("demo")
    assert list(zip(shown["models"], shown["methods"])) == [
        ("lite_medsam", "amg"), ("lite_medsam-ft-train", "ais"), ("lite_medsam-ft-train", "apg"), ("classical", "classical")
    ]  # fmt: skip
    # the list form still gives every model the same methods (apg for lite_medsam: the decoder check)
    cfg["segmentation"]["methods"] = ["auto", "apg"]
    with pytest.raises(PlanError, match="model 'lite_medsam' .*no instance-segmentation decoder, which apg"):
        Plan.from_config(cfg)
    cfg["segmentation"]["methods"] = {"lite_medsam": ["apg"], "lite_medsam-ft-train": ["auto"]}
    with pytest.raises(PlanError, match="model 'lite_medsam' .*no instance-segmentation decoder, which apg"):
        Plan.from_config(cfg)


def test_methods_per_model_name_every_model_and_no_other(decoder_checkpoint):
    with_decoder, _ = decoder_checkpoint
    cfg = full_config(models=[with_decoder, "lite_medsam"], segmentation={"methods": {"lite_medsam": ["amg"]}})
    with pytest.raises(PlanError, match=f"segmentation.methods: .*every model of models.*missing: '{with_decoder}'"):
        Plan.from_config(cfg)
    cfg["segmentation"]["methods"] = {with_decoder: ["ais"], "lite_medsam": ["amg"], "vit_b": ["amg"]}
    with pytest.raises(PlanError, match="segmentation.methods: model 'vit_b' is not in models"):
        Plan.from_config(cfg)
    # a checkpoint named by its id works as by its path; both is one model named twice
    dec = mid(with_decoder)
    cfg["segmentation"]["methods"] = {dec: ["ais"], "lite_medsam": ["amg"]}
    assert Plan.from_config(cfg).methods_of(dec) == ["ais"]
    cfg["segmentation"]["methods"][with_decoder] = ["amg"]
    with pytest.raises(PlanError, match="named twice"):
        Plan.from_config(cfg)
    cfg["segmentation"]["methods"] = {dec: ["ais", "nms"], "lite_medsam": ["amg"]}
    with pytest.raises(PlanError, match="config error in segmentation.methods"):
        Plan.from_config(cfg)


def test_auto_in_one_models_methods_pairs_the_searches(decoder_checkpoint):
    """`auto` listed for one model only still makes a validation dataset of ais the apg search's too."""
    with_decoder, _ = decoder_checkpoint
    dec = mid(with_decoder)
    methods = {with_decoder: ["auto"], "lite_medsam": ["amg"]}
    cfg = full_config(models=[with_decoder, "lite_medsam"], segmentation={"methods": methods})
    cfg["datasets"] = {"val": {"source": "synthetic"}, "test": {"source": "synthetic"}}
    cfg["segmentation"]["ais_search"] = {"dataset": "val"}
    plan = Plan.from_config(cfg)
    assert plan.search_datasets == {"ais": "val", "apg": "val"} and plan.methods_of(dec) == ["auto"]
