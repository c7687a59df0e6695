"""`snakemake --report report.html` after a run: every table and figure of the run, each with its caption."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from helpers.snakemake_cli import REPO, snakemake

#: Tables and figures the rules do not mark for the report yet (their captions are in workflow/report/);
#: the lead wires them in workflow/rules/report.smk, then this set goes.


def _results(html: str) -> dict[str, dict]:
    """The report's results (path -> name, caption, labels, ...): the JSON the HTML report embeds."""
    found = re.search(r"^\s*var results = (\{.*\});\s*$", html, re.M)
    assert found, "no `var results = {...};` in the report: Snakemake's report format changed"
    return json.loads(found[1])


def _text(caption_html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", caption_html).split())


@pytest.mark.slow
def test_the_report_lists_every_table_and_figure_with_a_caption(finished_run, tmp_path):
    workdir = tmp_path / "run"  # a copy: the shared run stays as it was
    shutil.copytree(finished_run.workdir, workdir, symlinks=True)
    snakemake(workdir, "--report", "report.html")
    results = _results((workdir / "report.html").read_text())

    benchmark = workdir / "results/benchmark"
    made = {p.relative_to(workdir).as_posix() for p in benchmark.rglob("*") if p.suffix in (".csv", ".png")}
    expected = set(made)
    assert set(results) == expected
    # the run's own: the table and comparison, the three figures, the searches of its AMG and baseline
    assert {
        "results/benchmark/table.csv",
        "results/benchmark/comparison.csv",
        "results/benchmark/msa_bars.png",
        "results/benchmark/msa_iterations.png",
        "results/benchmark/qualitative_tiny.png",
        f"results/benchmark/amg_search/{finished_run.base}.csv",
        "results/benchmark/classical_search.csv",
    } <= expected

    captions = {path: _text(r["caption"]) for path, r in results.items()}
    sources = {p.stem: " ".join(p.read_text().split()) for p in (REPO / "workflow/report").glob("*.rst")}
    for path, caption in captions.items():
        assert len(caption) > 40 and "{{" not in caption, f"{path}: caption {caption!r}"
    assert captions["results/benchmark/table.csv"].startswith(sources["table"][:60])
    # templated captions are rendered with the job's wildcards
    assert f"model {finished_run.base}" in captions[f"results/benchmark/amg_search/{finished_run.base}.csv"]
