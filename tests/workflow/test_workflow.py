"""The real workflow, run with the `snakemake` command on tiny configs.

Most tests marked slow read one finished run (`finished_run`, tests/workflow/conftest.py); AMG and AIS
from one embedding, on a checkpoint with an instance decoder fitted on its one image (helpers.decoder_fit),
are tested on the run of tests/workflow/test_bad_input.py (`test_amg_and_auto_give_amg_and_ais_rows`).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from helpers.snakemake_cli import REPO, job_counts, run_cli, snakemake, write_config
from tilesam.data import synthetic

TINY = {
    "datasets": {"tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
    "models": ["lite_medsam"],
    "device": "cpu",
    "segmentation": {
        "tile_shape": [128, 128],
        "halo": [24, 24],
        "tiles_per_block": 4,
        "amg": {
            "prompt": "box",
            "box_sizes": [0.12, 0.24],
            "points_per_side": 8,
            "pred_iou_thresh": 0.8,
            "stability_score_thresh": 0.9,
        },
    },
}


@pytest.mark.slow
def test_run_writes_the_benchmark_table(finished_run):
    workdir, n_objects, base = finished_run.workdir, finished_run.n_objects, finished_run.base
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert list(table.columns[:10]) == [
        "dataset",
        "model",
        "method",
        "in_domain",
        "n_images",
        "n_objects",
        "mSA",
        "SA50",
        "SA75",
        "precision",
    ]
    # the validation dataset is searched on, the training one trained on, neither is scored;
    # amg and the two prompt modes are, for each model
    assert set(table.dataset) == {"tiny"}
    # the classical baseline's row (no model), then each model's
    assert list(table.model) == ["classical"] + [base] * 3 + [finished_run.finetuned] * 3
    assert list(table.method) == ["classical"] + ["amg", "box", "iterative_box"] * 2
    # the 0-iteration finetuned model learnt from `train`, not from `tiny`: nothing is in domain
    assert not table.in_domain.any()
    assert json.loads(table.iloc[0].params).keys() >= {"sigma", "h"}  # searched on `val`
    assert json.loads(table.iloc[3].params)["feed_logits"] is False  # iterative_box: micro-sam's default
    row = table.iloc[1]
    assert (row.dataset, row.model, row.method, row.n_images) == ("tiny", "lite_medsam", "amg", 1)
    assert (table.n_objects == n_objects).all()
    assert 0.0 < row.mSA <= 1.0 and row.SA50 >= row.SA75
    # the search's best thresholds are the ones the test dataset was segmented with
    search = pd.read_csv(workdir / "results/benchmark/amg_search/lite_medsam.csv")
    assert len(search) == 4 and search.mSA.is_monotonic_decreasing
    params = json.loads(row.params)
    assert (params["pred_iou_thresh"], params["stability_score_thresh"]) == (
        search.pred_iou_thresh[0],
        search.stability_score_thresh[0],
    )
    assert table[table.model == base].set_index("method").mSA["box"] > 0.7  # LiteMedSAM answers box prompts well
    iterations = pd.read_csv(workdir / "results/benchmark/iterations.csv")
    assert list(iterations.model) == [base] * 8 + [finished_run.finetuned] * 8
    assert list(iterations.iteration) == list(range(8)) * 2 and set(iterations.method) == {"iterative_box"}
    assert "mSA" in (workdir / "results/benchmark/table.md").read_text()
    assert (workdir / "logs/embed/tiny/cells/lite_medsam/block0.log").exists()
    bench = pd.read_csv(workdir / "logs/benchmarks/embed/tiny/cells/lite_medsam/block0.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] > 0
    # embeddings are temporary by default
    assert not (workdir / "results/embeddings/tiny/cells/lite_medsam/block0.zarr").exists()
    # the finetuned model froze its encoder: its segment and prompt jobs read the base's embeddings
    assert not (workdir / f"logs/embed/tiny/cells/{finished_run.finetuned}").exists()


@pytest.mark.slow
def test_finetuned_model_runs_like_any_model_and_zero_iterations_change_nothing(finished_run):
    """`<base>-ft-<dataset>` is finetuned, recorded, segmented, prompted and compared; with 0
    iterations it is the base model, so every difference of the comparison is exactly zero."""
    workdir, finetuned = finished_run.workdir, finished_run.finetuned
    card = json.loads((workdir / "results/finetuned/train/lite_medsam.json").read_text())
    assert card["name"] == finetuned and card["iterations"] == 0
    record = json.loads((workdir / f"resources/models/{finetuned}.json").read_text())
    assert Path(record["load"]) == (workdir / "results/finetuned/train/lite_medsam.pth").resolve()
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert set(table.dataset) == {"tiny"}  # the training dataset is not scored
    assert set(table.model) == {"classical", "lite_medsam", finetuned}
    comparison = pd.read_csv(workdir / "results/benchmark/comparison.csv")
    assert sorted(comparison.method) == ["amg", "box", "iterative_box"]
    diffs = comparison[[c for c in comparison.columns if c.endswith("_diff")]]
    assert (diffs.to_numpy() == 0).all()
    assert (comparison.mSA_vanilla > 0).all()  # not zero because nothing was found


@pytest.mark.slow
def test_rerun_does_nothing_and_deleting_an_output_reruns_only_its_dependants(finished_run, tmp_path):
    workdir = tmp_path / "run"  # a copy (modification times and .snakemake/ included): the run stays as it was
    shutil.copytree(finished_run.workdir, workdir, symlinks=True)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout
    # the stitched labels of one image: only stitching and what reads its result run again
    shutil.rmtree(workdir / "results/segmentation/tiny/cells/lite_medsam/amg/labels.ome.zarr")
    counts = job_counts(snakemake(workdir, "-n").stdout)
    assert counts == {"stitch": 1, "evaluate": 1, "qualitative_figure": 1, "benchmark_table": 1, "all": 1}
    snakemake(workdir)
    assert "Nothing to be done" in snakemake(workdir, "-n").stdout


def test_unknown_config_key_fails_before_any_job(tmp_path):
    write_config(tmp_path, {**TINY, "segmentation": {**TINY["segmentation"], "tile_shap": [64, 64]}})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "tile_shap" in result.stderr + result.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "logs").exists()


def test_wrong_type_fails_naming_the_key(tmp_path):
    write_config(tmp_path, {**TINY, "segmentation": {**TINY["segmentation"], "tiles_per_block": "many"}})
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0 and "many" in result.stderr and "tiles_per_block" in result.stderr


def test_glob_matching_nothing_fails_before_any_job(tmp_path):
    write_config(tmp_path, TINY)
    result = snakemake(tmp_path, check=False)
    assert result.returncode != 0
    assert "data/images/*.tif" in result.stderr and "matches no file" in result.stderr
    assert not (tmp_path / "results").exists()


def test_lint_is_clean():
    result = run_cli(["--lint"], cwd=REPO)
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr, result.stdout


def test_default_config_plans_the_demo_jobs():
    out = run_cli(["-n", "--cores", "2", "--directory", str(REPO / "config/.."), "--forceall"], cwd=REPO).stdout
    counts = job_counts(out)
    n = len(synthetic.DEMO)
    # the demo and its training images are made; each demo image: the vanilla model's AMG, the finetuned
    # model's AIS (`auto`) and APG, the classical baseline's segmentation, each stitched and scored; the
    # finetuned model froze its encoder, so it reads the vanilla model's embeddings (one embed job each)
    assert counts["make_synthetic"] == n + len(synthetic.TRAIN)
    assert counts["finetune"] == 1 and counts["fetch_model"] == 1 and counts["embed"] == n
    assert counts["segment"] == 3 * n and counts["stitch"] == 4 * n and counts["evaluate"] == 4 * n
    assert counts["evaluate_prompts"] == 2 * n and counts["benchmark_table"] == 1
    for model, methods in (("lite_medsam", {"amg"}), ("lite_medsam-ft-demo_train", {"ais", "apg"})):
        assert set(re.findall(rf"results/evaluation/demo/\w+/{model}/(\w+)\.json", out)) == {"box"} | methods
    # on 2 cores two model jobs run at a time, one thread each (snakemake lists threads only above 1)
    model_jobs = [b for b in out.split("rule ")[1:] if b.split(":")[0] in ("embed", "segment", "finetune")]
    assert len(model_jobs) == 4 * n + 1 and not any("threads:" in b for b in model_jobs)


def test_ais_for_a_model_without_a_decoder_fails_before_any_job(tmp_path):
    spec = synthetic.SyntheticSpec("cells", (64, 64), 3, (6.0, 9.0), seed=1)
    synthetic.write_demo(spec, tmp_path / "data/images/cells.tif", tmp_path / "data/labels/cells.tif")
    config = {
        "datasets": {"tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
        "models": ["lite_medsam"],
        "segmentation": {"methods": ["ais"]},
    }
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr  # snakemake prints workflow errors on stdout with -n
    assert "model 'lite_medsam'" in output and "no instance-segmentation decoder" in output
    assert not (tmp_path / "results").exists()
