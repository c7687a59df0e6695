"""The workflow as a module of another folder, the way `snakedeploy deploy-workflow` sets it up.

snakedeploy writes `workflow/Snakefile` (the `module` declaration with `github(...)`, here this
checkout's path: the test has no network) and copies `config/`; the user edits the config and runs
`snakemake` in that folder. Also the workflow catalog's files: `config/README.md` names every
top-level key of the schema, and `.snakemake-workflow-catalog.yml` is the catalog's format.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from helpers.snakemake_cli import REPO, job_counts, run_cli, write_config
from tilesam import config
from tilesam.data import synthetic

#: what `snakedeploy deploy-workflow <repo> <dest> --tag <tag>` writes, with a local snakefile for github(...)
DEPLOYED_SNAKEFILE = """configfile: "config/config.yaml"


# declare {repo} as a module
module tilesam:
    snakefile:
        "{snakefile}"
    config:
        config


# use all rules from {repo}
use rule * from tilesam
"""

#: the workflow's entry: workflow/Snakefile where the catalog expects it, else the root Snakefile
SNAKEFILE = next(p for p in (REPO / "workflow/Snakefile", REPO / "Snakefile") if p.is_file())
SPEC = synthetic.SyntheticSpec("cells", (96, 96), 4, (8.0, 12.0), seed=4)
CONFIG = {
    "datasets": {"mine": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
    "models": ["lite_medsam"],
    "device": "cpu",
    "segmentation": {"tile_shape": [96, 96], "halo": [16, 16], "amg": {"points_per_side": 4}},
    "baseline": {"classical": False},
}


def deploy(dest: Path) -> Path:
    """An empty folder set up as snakedeploy does: workflow/Snakefile, config/ copied, then the user's own config."""
    (dest / "workflow").mkdir(parents=True)
    (dest / "workflow/Snakefile").write_text(DEPLOYED_SNAKEFILE.format(repo=REPO, snakefile=SNAKEFILE))
    shutil.copytree(REPO / "config", dest / "config")
    synthetic.write_demo(SPEC, dest / "data/images/cells.tif", dest / "data/labels/cells.tif")
    write_config(dest, CONFIG)
    return dest


def test_a_deployed_folder_dry_runs_with_its_own_config(tmp_path):
    workdir = deploy(tmp_path / "analysis")
    result = run_cli(["-n", "--cores", "2"], cwd=workdir)  # snakemake finds workflow/Snakefile itself
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["embed"] == counts["segment"] == counts["stitch"] == counts["evaluate"] == 1
    assert counts["fetch_model"] == counts["benchmark_table"] == 1 and "make_synthetic" not in counts
    assert "results/segmentation/mine/cells/lite_medsam/amg/labels.ome.zarr" in result.stdout
    assert not (REPO / "results/segmentation/mine").exists()


@pytest.mark.slow
def test_a_deployed_folder_runs(tmp_path):
    workdir = deploy(tmp_path / "analysis")
    result = run_cli(["--cores", "2"], cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert (
        list(zip(table.model, table.method)) == [("lite_medsam", "amg")]
        and table.n_objects[0] == synthetic.make_labels(SPEC).max()
    )
    assert (workdir / "results/benchmark/qualitative_mine.png").stat().st_size > 0
    # the report finds the module's captions (paths relative to its rule files, not to this folder)
    report = run_cli(["--report", "report.html"], cwd=workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    assert "results/benchmark/table.csv" in html and "averaged over images" in html  # workflow/report/table.rst


def test_catalog_files():
    catalog = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text())
    usage = catalog["usage"]
    assert set(usage) <= {"mandatory-flags", "software-stack-deployment", "report"}
    assert usage["software-stack-deployment"]["conda"] is True and usage["report"] is True
    readme = (REPO / "config/README.md").read_text()
    for key in config.schema()["properties"]:
        assert f"`{key}`" in readme, f"config/README.md does not mention the config key {key!r}"
    assert "docs/configuration.md" in readme and "tilesam init" in readme
