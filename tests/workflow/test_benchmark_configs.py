"""The reproduction configs under config/benchmarks/: valid, and the offline ones plan every job."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake.utils import validate

from helpers.snakemake_cli import REPO, job_counts, run_cli

CONFIGS = sorted((REPO / "config/benchmarks").glob("*.yaml"))


def dry_run(config: Path) -> subprocess.CompletedProcess:
    args = ["-n", "--cores", "2", "--configfile", str(config)]
    return run_cli(args, cwd=REPO, extra_env={"TILESAM_OFFLINE": "1"}, timeout=600)


def classical_evaluations(dry_run_output: str) -> int:
    """How many evaluate jobs of a dry run score the classical baseline."""
    return len(set(re.findall(r"results/evaluation/\S+/classical/classical\.json", dry_run_output)))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_is_valid(path):
    config = yaml.safe_load(path.read_text())
    if path.stem == "finetune_zero":  # goes on top of finetune_offline.yaml
        base = yaml.safe_load((path.parent / "finetune_offline.yaml").read_text())
        config = {**base, "finetune": {**base["finetune"], **config["finetune"]}}
        assert config["finetune"]["iterations"] == 0
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert config["datasets"] and config["models"]


def test_the_offline_configs_exist():
    assert {"shared_offline", "finetune_offline", "lm", "em_organelles", "em_boundaries"} <= {p.stem for p in CONFIGS}


def test_shared_offline_plans_the_whole_protocol(shared_dir):
    result = dry_run(REPO / "config/benchmarks/shared_offline.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    searches = sorted(set(re.findall(r"output: results/benchmark/(\w+)_search/", result.stdout)))
    # AMG for both models; AIS and APG for the finetuned one, whose `auto` takes the better of the two
    assert searches == ["ais", "amg", "apg"] and counts["search"] == 4 and counts["benchmark_table"] == 1
    assert counts["finetune"] == 1 and counts["finetuned_model"] == 1
    assert counts["qualitative_figure"] == 3  # dsb2018_test, epfl_mito, isbi2012; not the search's val split
    # the classical baseline: one row per scored image, its sigma and h searched on the AMG search's split;
    # per image vanilla AMG, finetuned AMG and finetuned AIS
    baseline = classical_evaluations(result.stdout)
    assert counts["classical_search"] == 1 and 3 * baseline == counts["evaluate"] - baseline
    # both models: every scored image x 4 prompt modes, except the ISBI volume: its own `prompts: [point, box]`
    assert counts["evaluate_prompts"] == 2 * (4 * (baseline - 1) + 2)
    for model, methods in (("lite_medsam", set()), ("lite_medsam-ft-dsb2018_train", {"auto"})):
        planned = set(re.findall(rf"results/evaluation/isbi2012/volume/{model}/(\w+)\.json", result.stdout))
        assert planned == {"amg", "point", "box"} | methods
    assert "make_synthetic" not in counts  # a --configfile replaces the default config


def test_finetune_offline_plans_training_then_the_comparison(shared_dir):
    result = dry_run(REPO / "config/benchmarks/finetune_offline.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["finetune"] == 1 and counts["finetuned_model"] == 1 and counts["fetch_model"] == 1
    # the test split only: AMG for both models and AIS and APG for the finetuned one (each searched on the
    # validation split), and box and point prompts each, per image; the classical baseline once per image,
    # searched on the finetuning's validation split
    baseline = classical_evaluations(result.stdout)
    searches = sorted(set(re.findall(r"output: results/benchmark/(\w+)_search/", result.stdout)))
    assert counts["classical_search"] == 1 and searches == ["ais", "apg"] and counts["search"] == 2
    assert 4 * baseline == counts["evaluate"] - baseline
    assert counts["evaluate_prompts"] == 2 * 2 * baseline
    for model, methods in (("lite_medsam", {"amg"}), ("lite_medsam-ft-dsb2018_train", {"amg", "ais", "apg"})):
        planned = set(re.findall(rf"results/evaluation/dsb2018_test/\w+/{model}/(\w+)\.json", result.stdout))
        assert planned == {"box", "point"} | methods


def test_online_configs_say_what_is_missing_offline():
    result = dry_run(REPO / "config/benchmarks/em_boundaries.yaml")
    if result.returncode == 0:
        pytest.skip("the isbi2012 dataset is already in resources/datasets")
    message = result.stdout + result.stderr
    assert "isbi2012" in message and "offline" in message and "sha256" in message


@pytest.mark.parametrize(("stem", "current"), [("lm", "vit_b_lm"), ("em_organelles", "vit_b_em_organelles")])
def test_reproduction_configs_give_ais_and_apg_to_micro_sams_current_model_only(stem, current):
    """Vanilla and the seed's v1 get AMG, the current model (which has a decoder) AMG, AIS and APG, each compared."""
    from tilesam.plan import has_decoder

    config = yaml.safe_load((REPO / f"config/benchmarks/{stem}.yaml").read_text())
    assert config["models"] == ["vit_b", current, f"{current}@v1"]
    assert [has_decoder(m) for m in config["models"]] == [False, True, False]
    methods = {"vit_b": ["amg"], current: ["amg", "ais", "apg"], f"{current}@v1": ["amg"]}
    assert config["segmentation"]["methods"] == methods
    searched = {config["segmentation"][f"{m}_search"]["dataset"] for m in ("amg", "ais", "apg")}
    assert len(searched) == 1  # all three searched on the validation split
    assert [pair["finetuned"] for pair in config["compare"]] == config["models"][1:]
