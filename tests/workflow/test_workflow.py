"""The real workflow, run with the `snakemake` command on a tiny config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tilesam.data import synthetic

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


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


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] != "total"}


#: TINY plus a validation dataset for the AMG threshold search and prompted evaluation
FULL = {
    **TINY,
    "datasets": {**TINY["datasets"], "val": {"images": "data/val/*.tif", "labels": "data/val_labels/*.tif"}},
    "segmentation": {
        **TINY["segmentation"],
        "amg_search": {"dataset": "val", "pred_iou_thresh": [0.6, 0.9, 0.3], "stability_score_thresh": [0.6, 0.9, 0.3]},
    },
    "evaluation": {"prompts": ["box", "iterative_box"]},
}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    spec = synthetic.SyntheticSpec("cells", (200, 260), 16, (9.0, 18.0), seed=11)
    synthetic.write_demo(spec, workdir / "data/images/cells.tif", workdir / "data/labels/cells.tif")
    val = synthetic.SyntheticSpec("v", (120, 150), 8, (9.0, 18.0), seed=3)
    synthetic.write_demo(val, workdir / "data/val/v.tif", workdir / "data/val_labels/v.tif")
    write_config(workdir, FULL)
    snakemake(workdir)
    return workdir, int(synthetic.make_labels(spec).max())


@pytest.mark.slow
def test_run_writes_the_benchmark_table(finished_run):
    workdir, n_objects = finished_run
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert list(table.columns[:9]) == [
        "dataset",
        "model",
        "method",
        "n_images",
        "n_objects",
        "mSA",
        "SA50",
        "SA75",
        "precision",
    ]
    # the validation dataset is searched on, not scored; amg and the two prompt modes are
    assert list(table.method) == ["amg", "box", "iterative_box"] and set(table.dataset) == {"tiny"}
    row = table.iloc[0]
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
    assert table.set_index("method").mSA["box"] > 0.7  # LiteMedSAM answers box prompts well
    iterations = pd.read_csv(workdir / "results/benchmark/iterations.csv")
    assert list(iterations.iteration) == list(range(8)) and set(iterations.method) == {"iterative_box"}
    assert "mSA" in (workdir / "results/benchmark/table.md").read_text()
    assert (workdir / "logs/embed/tiny/cells/lite_medsam/block0.log").exists()
    bench = pd.read_csv(workdir / "logs/benchmarks/embed/tiny/cells/lite_medsam/block0.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] > 0
    # embeddings are temporary by default
    assert not (workdir / "results/embeddings/tiny/cells/lite_medsam/block0.zarr").exists()


@pytest.mark.slow
def test_rerun_does_nothing_and_deleting_an_output_reruns_only_its_dependants(finished_run):
    workdir, _ = finished_run
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
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, capture_output=True, text=True, env=env)
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr, result.stdout


def test_default_config_plans_the_demo_jobs():
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(
        [str(BIN / "snakemake"), "-n", "--cores", "2", "--directory", str(REPO / "config/.."), "--forceall"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    counts = job_counts(out)
    n = len(synthetic.DEMO)
    assert counts["make_synthetic"] == n and counts["stitch"] == n and counts["evaluate"] == n
    assert counts["benchmark_table"] == 1 and counts["fetch_model"] == 1


@pytest.mark.slow
def test_finetuned_model_runs_like_any_model_and_zero_iterations_change_nothing(tmp_path):
    """`<base>-ft-<dataset>` is finetuned, recorded, segmented, prompted and compared; with 0
    iterations it is the base model, so every difference of the comparison is exactly zero."""
    for name, seed in (("a", 5), ("b", 6)):
        spec = synthetic.SyntheticSpec(name, (96, 96), 5, (8.0, 14.0), seed=seed)
        synthetic.write_demo(spec, tmp_path / f"data/train/{name}.tif", tmp_path / f"data/train_labels/{name}.tif")
    spec = synthetic.SyntheticSpec("t", (120, 150), 8, (9.0, 16.0), seed=7)
    synthetic.write_demo(spec, tmp_path / "data/images/t.tif", tmp_path / "data/labels/t.tif")
    finetuned = "lite_medsam-ft-train"
    config = {
        **TINY,
        "datasets": {**TINY["datasets"], "train": {"images": "data/train/*.tif", "labels": "data/train_labels/*.tif"}},
        "models": ["lite_medsam", finetuned],
        "segmentation": {**TINY["segmentation"], "amg": {**TINY["segmentation"]["amg"], "points_per_side": 4}},
        "finetune": {"iterations": 0, "augment_variants": 1},
        "evaluation": {"prompts": ["box", "point"]},
        "compare": [{"vanilla": "lite_medsam", "finetuned": finetuned}],
    }
    write_config(tmp_path, config)
    snakemake(tmp_path)
    card = json.loads((tmp_path / "results/finetuned/train/lite_medsam.json").read_text())
    assert card["name"] == finetuned and card["iterations"] == 0
    record = json.loads((tmp_path / f"resources/models/{finetuned}.json").read_text())
    assert Path(record["load"]) == (tmp_path / "results/finetuned/train/lite_medsam.pth").resolve()
    table = pd.read_csv(tmp_path / "results/benchmark/table.csv")
    assert set(table.dataset) == {"tiny"}  # the training dataset is not scored
    assert set(table.model) == {"lite_medsam", finetuned}
    comparison = pd.read_csv(tmp_path / "results/benchmark/comparison.csv")
    assert sorted(comparison.method) == ["amg", "box", "point"]
    diffs = comparison[[c for c in comparison.columns if c.endswith("_diff")]]
    assert (diffs.to_numpy() == 0).all()
    assert (comparison.mSA_vanilla > 0).any()  # not zero because nothing was found
