"""The workflow's plan, without Snakemake: images, models, finetuned names, blocks, outputs, resources."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tifffile

from tilesam import config as schema
from tilesam.plan import MODEL_MEMORY, Plan, PlanError, architecture_of, split_finetuned


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
    assert plan.n_blocks("demo", "nuclei_large") == -(-grid.n_tiles // 8)
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
    assert plan.memory("lite_medsam-ft-train") == MODEL_MEMORY["lite_medsam_tinyvit"]
    with pytest.raises(PlanError, match="'test' is not 2D"):
        plan.finetune_inputs("test", "lite_medsam")  # the synthetic demo has a volume
    with pytest.raises(PlanError, match="'test' is not 2D"):
        plan.finetune_inputs("test", "lite_medsam")  # the synthetic demo has a volume


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
    window_mpx = (512 + 128) ** 2 / 1e6
    assert plan.mem_mb_embed("lite_medsam") == int(lite.load_mb + 2 * lite.per_tile_mb + 50 * 4 * window_mpx)
    assert plan.mem_mb_embed("lite_medsam", attempt=2) == int(
        2 * (lite.load_mb + 2 * lite.per_tile_mb + 50 * 4 * window_mpx)
    )
    assert plan.mem_mb_image("demo", "nuclei_large") > 2000
    assert plan.runtime_segment() == 10 + 2 * 4  # 32 x 32 points: 2 minutes a tile


def test_a_checkpoint_files_architecture_is_told_by_its_size(tmp_path):
    small = tmp_path / "tiny.pth"
    small.write_bytes(b"0" * 1000)
    assert architecture_of(str(small)) == "vit_t"
    assert architecture_of("vit_b_lm") == "vit_b" and architecture_of("vit_h") == "vit_h"


def test_a_halo_larger_than_the_tile_fails_planning():
    with pytest.raises(PlanError, match=r"config error: segmentation\.halo \[300, 300\] is larger than tile_shape"):
        Plan.from_config(full_config(segmentation={"tile_shape": [256, 256], "halo": [300, 300]}))
