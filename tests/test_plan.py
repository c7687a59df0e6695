"""The workflow's plan, without Snakemake: images, models, finetuned names, blocks, outputs, resources."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import tifffile

from tilesam import config as schema
from tilesam.plan import CLASSICAL, Plan, PlanError, dataset_key, split_finetuned
from tilesam.resources import MODEL_MEMORY, architecture_of


def full_config(**changes) -> dict:
    """A config as Snakemake hands it over: every section present, defaults filled in."""
    top = schema.defaults()
    cfg = {
        "datasets": {"demo": {"source": "synthetic"}},
        "models": ["lite_medsam"],
        "device": top["device"],
        "offline": True,
        "segmentation": {
            **schema.defaults("segmentation"),
            "amg": schema.defaults("segmentation", "amg"),
            "amg_search": schema.defaults("segmentation", "amg_search"),
        },
        "embeddings": schema.defaults("embeddings"),
        "stitch": schema.defaults("stitch"),
        "finetune": schema.defaults("finetune"),
        "compare": [],
        "evaluation": schema.defaults("evaluation"),
    }
    for key, value in changes.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and key != "datasets" else value
    return copy.deepcopy(cfg)


def test_synthetic_images_blocks_and_outputs():
    plan = Plan.from_config(
        full_config(segmentation={"tile_shape": [256, 256], "halo": [32, 32], "tiles_per_block": 8})
    )
    assert sorted(plan.images) == [("demo", "nuclei_large"), ("demo", "nuclei_small"), ("demo", "nuclei_stack")]
    assert plan.models_of == {"demo": ["lite_medsam"]} and plan.specs == {"lite_medsam": "lite_medsam"}
    grid = plan.grid("demo", "nuclei_large")
    assert grid.n_tiles == 6 and plan.n_blocks("demo", "nuclei_large") == 1  # at most 8 tiles a block
    split = Plan.from_config(
        full_config(segmentation={"tile_shape": [256, 256], "tiles_per_block": 8, "min_blocks": 2})
    )
    assert split.n_blocks("demo", "nuclei_large") == 2  # at least min_blocks: two jobs of 3 tiles
    stores = plan.block_stores("demo", "nuclei_large", "lite_medsam", "amg")
    assert stores[0] == "results/segmentation/demo/nuclei_large/lite_medsam/amg/block0.zarr"
    assert len(plan.embedding_stores("demo", "nuclei_large", "lite_medsam")) == len(stores)
    assert plan.evaluations() == [
        f"results/evaluation/demo/{i}/lite_medsam/amg.json" for i in ("nuclei_large", "nuclei_small", "nuclei_stack")
    ]
    assert "results/benchmark/qualitative_demo.png" in plan.all_outputs()


def test_prompt_modes_per_dataset_else_the_evaluation_section():
    cfg = full_config(evaluation={"prompts": ["box"]})
    cfg["datasets"]["other"] = {"source": "synthetic", "prompts": ["point"]}
    plan = Plan.from_config(cfg)
    assert plan.prompt_modes("demo") == ["box"] and plan.prompt_modes("other") == ["point"]
    assert sum(p.endswith("/box.json") for p in plan.evaluations()) == 3
    assert sum(p.endswith("/point.json") for p in plan.evaluations()) == 3


def labelled_images(folder, n: int) -> dict:
    """A glob dataset of `n` 2D images with labels."""
    for k in range(n):
        for part in ("images", "labels"):
            (folder / part).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(folder / part / f"im{k}.tif", np.full((64, 64), k, np.uint8))
    return {"images": str(folder / "images/*.tif"), "labels": str(folder / "labels/*.tif")}


def test_finetuned_names_plan_the_base_and_skip_the_training_data(tmp_path):
    cfg = full_config(models=["lite_medsam-ft-train"], finetune={"val_dataset": "val"})
    cfg["datasets"] = {
        "train": labelled_images(tmp_path / "train", 3),
        "val": labelled_images(tmp_path / "val", 2),
        "test": {"source": "synthetic"},
    }
    plan = Plan.from_config(cfg)
    assert plan.finetuned == {"lite_medsam-ft-train": ("lite_medsam", "train")}
    assert plan.specs["lite_medsam"] == "lite_medsam"  # the base is fetched even if not listed
    assert plan.is_tuning("train") and plan.is_tuning("val") and not plan.is_tuning("test")
    assert {p.split("/")[2] for p in plan.evaluations()} == {"test"}
    inputs = plan.finetune_inputs("train", "lite_medsam")
    assert len(inputs["images"]) == 3 and len(inputs["val_images"]) == 2
    assert inputs["model"] == "resources/models/lite_medsam.json"
    assert plan.resources.memory("lite_medsam-ft-train") == MODEL_MEMORY["lite_medsam_tinyvit"]
    assert len(plan.finetune_inputs("test", "lite_medsam")["images"]) == 3  # a TIFF volume trains by section
    unlabelled = {"images": str(tmp_path / "train" / "images" / "*.tif")}
    with pytest.raises(PlanError, match="'bare' has no labelled images"):  # said at planning, not by a rule
        Plan.from_config(
            {**cfg, "models": ["lite_medsam-ft-bare"], "datasets": {**cfg["datasets"], "bare": unlabelled}}
        )


def test_a_name_with_ft_of_no_dataset_is_an_ordinary_model_name():
    assert split_finetuned("vit_b-ft-elsewhere", {"demo": {}}) is None
    with pytest.raises(PlanError, match="vit_b-ft-elsewhere"):
        Plan.from_config(full_config(models=["vit_b-ft-elsewhere"]))


def test_auto_picks_by_modality():
    cfg = full_config(models=["auto"])
    cfg["datasets"] = {
        "cells": {"source": "synthetic", "modality": "lm"},
        "mito": {"source": "synthetic", "modality": "em_organelles"},
    }
    plan = Plan.from_config(cfg)
    assert plan.models_of["cells"] != plan.models_of["mito"]


def test_search_dataset_is_tuning_and_feeds_the_other_datasets():
    cfg = full_config(segmentation={"amg_search": {**schema.defaults("segmentation", "amg_search"), "dataset": "val"}})
    cfg["datasets"] = {"val": {"source": "synthetic"}, "test": {"source": "synthetic"}}
    plan = Plan.from_config(cfg)
    assert plan.search_result("test", "lite_medsam") == ["results/benchmark/amg_search/lite_medsam.csv"]
    assert plan.search_result("val", "lite_medsam") == []
    images = plan.search_images("lite_medsam")
    assert [i["image"] for i in images] == [
        f"results/images/val/{n}.ome.zarr" for n in ("nuclei_large", "nuclei_small", "nuclei_stack")
    ]
    assert images[0]["embeddings"] == plan.embedding_stores("val", "nuclei_large", "lite_medsam")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"segmentation": {"amg_search": {"dataset": "nowhere"}}}, "amg_search: dataset 'nowhere' is not in datasets"),
        ({"finetune": {"val_dataset": "nowhere"}}, "finetune.val_dataset: 'nowhere'"),
        ({"compare": [{"vanilla": "lite_medsam", "finetuned": "nope"}]}, "compare: finetuned model 'nope'"),
        ({"models": ["no_such_model"]}, "config error in models"),
        ({"datasets": {"x": {"images": "nothing/here/*.tif"}}}, "nothing/here/\\*.tif"),
    ],
)
def test_bad_configs_fail_naming_the_key(changes, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_config(full_config(**changes))


def test_a_search_dataset_without_labels_is_an_error(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((64, 64), np.uint8))
    cfg = full_config(segmentation={"amg_search": {"dataset": "raw"}})
    cfg["datasets"]["raw"] = {"images": str(tmp_path / "*.tif")}
    with pytest.raises(PlanError, match="needs labels"):
        Plan.from_config(cfg)


def test_resources_follow_the_architecture_and_the_work():
    plan = Plan.from_config(full_config(segmentation={"tiles_per_block": 4}, embeddings={"batch_size": 2}))
    lite = MODEL_MEMORY["lite_medsam_tinyvit"]
    window_mpx = 512 * 640 / 1e6  # tile + halo (640 x 640) clipped to the largest image, 512 x 640
    res = plan.resources
    assert res.embed_mb("lite_medsam") == int(lite.load_mb + 2 * lite.per_tile_mb + 50 * 4 * window_mpx)
    assert res.embed_mb("lite_medsam", attempt=2) == int(
        2 * (lite.load_mb + 2 * lite.per_tile_mb + 50 * 4 * window_mpx)
    )
    assert res.image_mb("demo", "nuclei_large") > 2000
    vanilla = Plan.from_config(full_config(models=["vit_b"], segmentation={"tiles_per_block": 4}))
    assert vanilla.resources.segment_minutes("vit_b") == 10 + 2 * 4  # 32 x 32 points: 2 minutes a tile


def test_a_checkpoint_files_architecture_is_told_by_its_size(tmp_path):
    small = tmp_path / "tiny.pth"
    small.write_bytes(b"0" * 1000)
    assert architecture_of(str(small)) == "vit_t"
    assert architecture_of("vit_b_lm") == "vit_b" and architecture_of("vit_h") == "vit_h"


def _checkpoint(path, size: int = 1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"0" * size)
    return path


def test_two_checkpoints_with_one_file_name_are_two_models(tmp_path):
    """Issue 17 item 1: `run1/best.pt` and `run2/best.pt` (micro-sam's default name) used to collapse into `best`."""
    one, two = _checkpoint(tmp_path / "run1" / "best.pt"), _checkpoint(tmp_path / "run2" / "best.pt")
    plan = Plan.from_config(full_config(models=[str(one), str(two)]))
    ids = plan.models_of["demo"]
    assert len(ids) == 2 and len(set(ids)) == 2 and all(re.fullmatch(r"best-[0-9a-f]{6}", i) for i in ids)
    assert {plan.specs[i] for i in ids} == {str(one.resolve()), str(two.resolve())}
    assert len(plan.evaluations()) == 2 * 3  # each image scored once per model, not twice for one


def test_a_file_named_like_a_registry_model_is_another_model(tmp_path):
    mine = _checkpoint(tmp_path / "x" / "lite_medsam.pth")
    plan = Plan.from_config(full_config(models=["lite_medsam", str(mine)]))
    registry, own = plan.models_of["demo"]
    assert registry == "lite_medsam" and own.startswith("lite_medsam-") and own != registry
    assert plan.specs == {"lite_medsam": "lite_medsam", own: str(mine.resolve())}


def test_the_same_model_twice_is_an_error_naming_both_entries(tmp_path, monkeypatch):
    best = _checkpoint(tmp_path / "run1" / "best.pt")
    monkeypatch.chdir(tmp_path)
    for models, said in (
        ([str(best), "run1/best.pt"], "'run1/best.pt' is the same model as '" + str(best) + "'"),
        (["lite_medsam", "lite_medsam"], "'lite_medsam' is listed more than once"),
    ):
        cfg = full_config(models=models)
        cfg["datasets"]["more"] = {"source": "synthetic"}
        with pytest.raises(PlanError, match=re.escape(said)):
            Plan.from_config(cfg)
    plan = Plan.from_config(full_config(models=["./run1/../run1/best.pt"]))
    assert plan.specs == {plan.models_of["demo"][0]: str(best.resolve())}


def test_a_checkpoint_with_its_decoder_file_is_a_model(tmp_path):
    best, decoder = _checkpoint(tmp_path / "best.pt"), _checkpoint(tmp_path / "decoder.pt")
    plan = Plan.from_config(full_config(models=[f"{best}+{decoder}", str(best)]))
    pair, alone = plan.models_of["demo"]
    assert pair != alone and pair.startswith("best-") and plan.specs[pair] == f"{best.resolve()}+{decoder.resolve()}"
    assert architecture_of(plan.specs[pair]) == "vit_t"  # told by the checkpoint's size, not the decoder's
    with pytest.raises(PlanError, match="no such decoder file .*missing.pt"):
        Plan.from_config(full_config(models=[f"{best}+{tmp_path / 'missing.pt'}"]))


def test_compare_pairs_may_name_checkpoints_as_the_models_list_does(tmp_path):
    one, two = _checkpoint(tmp_path / "run1" / "best.pt"), _checkpoint(tmp_path / "run2" / "best.pt")
    cfg = full_config(models=[str(one), str(two)], compare=[{"vanilla": str(one), "finetuned": str(two)}])
    plan = Plan.from_config(cfg)
    (pair,) = plan.config["compare"]
    assert [plan.specs[pair["vanilla"]], plan.specs[pair["finetuned"]]] == [str(one.resolve()), str(two.resolve())]
    assert cfg["compare"][0]["vanilla"] == str(
        one
    )  # the config as written is left as it is: the rules read plan.config


# --- the classical baseline and in_domain ---------------------------------------------------------
def test_classical_baseline_is_scored_on_every_scored_image_and_searched_on_validation(tmp_path):
    cfg = full_config(models=["lite_medsam-ft-train"], finetune={"val_dataset": "val"})
    cfg["datasets"] = {
        "train": labelled_images(tmp_path / "train", 2),
        "val": labelled_images(tmp_path / "val", 2),
        "test": labelled_images(tmp_path / "test", 3),
    }
    plan = Plan.from_config(cfg)
    assert plan.classical  # on by default: every table has its floor
    assert plan.classical_evaluations() == [f"results/evaluation/test/im{k}/classical/classical.json" for k in range(3)]
    # no AMG search here: the finetuning's validation dataset is the baseline's
    assert plan.classical_search_dataset == "val"
    assert [i["gt"] for i in plan.classical_search_images()] == [
        "results/labels/val/im0.ome.zarr",
        "results/labels/val/im1.ome.zarr",
    ]
    assert plan.classical_search_result("test") == ["results/benchmark/classical_search.csv"]
    assert plan.classical_search_result("val") == []
    shown = plan.qualitative("test")
    assert shown["results"][-1] == "results/segmentation/test/im0/classical/classical/labels.ome.zarr"
    assert (shown["models"][-1], shown["methods"][-1]) == ("classical", "classical")
    cfg["baseline"] = {"classical": False}
    off = Plan.from_config(cfg)
    assert off.classical_evaluations() == [] and off.classical_search_dataset is None
    assert CLASSICAL not in str(off.qualitative("test")["results"])


def test_classical_search_prefers_its_own_then_the_amg_search_dataset():
    cfg = full_config(segmentation={"amg_search": {**schema.defaults("segmentation", "amg_search"), "dataset": "val"}})
    cfg["datasets"] = {"val": {"source": "synthetic"}, "test": {"source": "synthetic"}}
    assert Plan.from_config(cfg).classical_search_dataset == "val"
    cfg["baseline"] = {"search": {"dataset": "test"}}  # a scored dataset: tuning on it would be unfair
    with pytest.raises(PlanError, match="baseline.search: dataset 'test' is scored"):
        Plan.from_config(cfg)
    cfg["baseline"] = {"search": {"dataset": "nowhere"}}
    with pytest.raises(PlanError, match="'nowhere' is not in datasets"):
        Plan.from_config(cfg)


def test_a_checkpoint_called_classical_is_not_the_baseline(tmp_path):
    checkpoint = tmp_path / "classical"
    checkpoint.write_bytes(b"\0" * 100)
    (model,) = Plan.from_config(full_config(models=[str(checkpoint)])).models_of["demo"]
    assert model.startswith("classical-") and model != "classical"  # a file's id carries its path's hash


def test_in_domain_pairs_from_cards_and_finetuning(tmp_path, monkeypatch):
    from tilesam.models import registry

    real = registry.resolve

    class Card:  # a registry card that lists its training data, as micro-sam's generalists do
        def __init__(self, card):
            self.card = card
            self.trained_on = ("DSB2018", "LIVECell") if card.name == "lite_medsam" else ()

        def __getattr__(self, name):
            return getattr(self.card, name)

    monkeypatch.setattr(registry, "resolve", lambda name: Card(real(name)))
    cfg = full_config(models=["lite_medsam", "lite_medsam-ft-train"])
    cfg["datasets"] = {
        "train": {**labelled_images(tmp_path / "cells", 10), "split": "train"},
        "test": {**labelled_images(tmp_path / "cells", 10), "split": "test"},  # the same data, another split
        "other": labelled_images(tmp_path / "other", 2),
        "dsb": {"source": "synthetic"},  # the public-dataset id decides; here `synthetic`: not DSB
    }
    plan = Plan.from_config(cfg)
    assert plan.dataset_identity("train") == plan.dataset_identity("test") != plan.dataset_identity("other")
    assert plan.trained_on("lite_medsam") == {"dsb2018", "livecell"}
    assert plan.trained_on("lite_medsam-ft-train") == {"dsb2018", "livecell", plan.dataset_identity("train")}
    assert plan.in_domain() == [["test", "lite_medsam-ft-train"]]
    assert plan.in_domain_models("test") == ["lite_medsam-ft-train"] and plan.in_domain_models("other") == []
    assert dataset_key("DSB-2018") == dataset_key("dsb_2018") == "dsb2018"
    plan.config["datasets"]["dsb"] = {"source": "dsb2018"}  # identity only: nothing is fetched here
    assert plan.dataset_identity("dsb") in plan.trained_on("lite_medsam")


def test_a_halo_larger_than_the_tile_fails_planning():
    with pytest.raises(PlanError, match=r"config error: segmentation\.halo \[300, 300\] is larger than tile_shape"):
        Plan.from_config(full_config(segmentation={"tile_shape": [256, 256], "halo": [300, 300]}))


@pytest.mark.parametrize(("parts", "shared"), [(["mask_decoder", "decoder"], True), (["image_encoder"], False)])
def test_a_finetuned_model_with_a_frozen_encoder_reads_its_bases_embeddings(parts, shared):
    cfg = full_config(models=["lite_medsam", "lite_medsam-ft-demo_train"])
    cfg["datasets"] = {"demo": {"source": "synthetic"}, "demo_train": {"source": "synthetic_train"}}
    cfg["finetune"]["train_parts"] = parts
    plan = Plan.from_config(cfg)
    base, tuned = (plan.embedding_stores("demo", "nuclei_small", m) for m in plan.models_of["demo"])
    assert (base == tuned) is shared and plan.encoder_model("lite_medsam-ft-demo_train") == (
        "lite_medsam" if shared else "lite_medsam-ft-demo_train"
    )


def test_the_synthetic_sources_are_one_dataset_and_train_only_trains():
    cfg = full_config(models=["lite_medsam", "lite_medsam-ft-demo_train"])
    cfg["datasets"] = {"demo": {"source": "synthetic"}, "demo_train": {"source": "synthetic_train"}}
    plan = Plan.from_config(cfg)
    assert plan.dataset_identity("demo") == plan.dataset_identity("demo_train") == "synthetic"
    assert plan.in_domain() == [["demo", "lite_medsam-ft-demo_train"]]  # other images of the same kind
    assert {d for d, _ in plan.scored()} == {"demo"}
