import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from tilesam.data import ome
from tilesam.report import figures
from tilesam.report import tables as benchmark


def _records(tmp_path):
    rows = []
    rng = np.random.default_rng(0)
    for model in ("vit_b", "vit_b_lm"):
        for image in ("a", "b"):
            for method, iters in (("amg", [0]), ("box", [0]), ("iterative_box", [0, 1, 2])):
                for it in iters:
                    msa = float(rng.uniform(0.1, 0.9))
                    rows.append(
                        {
                            "dataset": "d",
                            "image": image,
                            "model": model,
                            "method": method,
                            "iteration": it,
                            "n_true": 10,
                            "n_pred": 9,
                            "msa": msa,
                            "sa50": msa + 0.05,
                            "sa75": msa - 0.05,
                            "precision": 0.8,
                            "recall": 0.7,
                            "f1": 0.75,
                            "encoder_s_per_tile": 1.0,
                            "segment_s_per_image": 2.0,
                            "peak_mem_mb": 100.0 + it,
                            "device": "cpu",
                        }
                    )
    paths = []
    for i, row in enumerate(rows):
        p = tmp_path / f"{i}.json"
        p.write_text(json.dumps([row]))
        paths.append(p)
    return rows, paths


def test_table_averages_images_and_reports_the_last_iteration(tmp_path):
    rows, paths = _records(tmp_path)
    table = benchmark.write_tables(paths, tmp_path / "out", [{"vanilla": "vit_b", "finetuned": "vit_b_lm"}])
    assert len(table) == 6  # 2 models x 3 methods
    row = table[(table.model == "vit_b") & (table.method == "iterative_box")].iloc[0]
    last = [r["msa"] for r in rows if r["model"] == "vit_b" and r["method"] == "iterative_box" and r["iteration"] == 2]
    assert row.mSA == pytest.approx(np.mean(last))
    assert row.n_images == 2 and row.n_objects == 20 and row.peak_mem_mb == 102.0
    it = pd.read_csv(tmp_path / "out/iterations.csv")
    assert sorted(it.iteration.unique()) == [0, 1, 2]
    comp = pd.read_csv(tmp_path / "out/comparison.csv")
    r = comp[comp.method == "amg"].iloc[0]
    assert r.mSA_diff == pytest.approx(r.mSA_finetuned - r.mSA_vanilla)
    for name in ("table.md", "comparison.md", "per_image.csv"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_model_against_itself_differs_by_exactly_zero(tmp_path):
    _, paths = _records(tmp_path)
    table = benchmark.summarize(benchmark.per_image(paths))
    comp = benchmark.compare(table, [{"vanilla": "vit_b", "finetuned": "vit_b"}])
    diffs = comp[[c for c in comp.columns if c.endswith("_diff")]].to_numpy()
    assert len(comp) == 3 and (diffs == 0).all()


def test_figures_are_written(tmp_path):
    _, paths = _records(tmp_path)
    df = benchmark.per_image(paths)
    figures.msa_bars(benchmark.summarize(df), tmp_path / "bars.png")
    figures.msa_iterations(benchmark.iterations(df), tmp_path / "it.png")
    figures.msa_iterations(benchmark.iterations(df.iloc[:0]), tmp_path / "empty.png")
    image = ome.create(tmp_path / "img.ome.zarr", (300, 280), "uint8", (128, 128))
    image[:] = np.random.default_rng(1).integers(0, 255, (300, 280))
    gt = ome.create(tmp_path / "gt.ome.zarr", (300, 280), "uint32", (128, 128))
    gt[100:140, 100:150] = 1
    for path in ("bars.png", "it.png", "empty.png"):
        assert imread(tmp_path / path).shape[0] > 100
    empty = imread(tmp_path / "empty.png")
    assert empty.shape[1] > 3 * empty.shape[0]  # a one-line note on what to configure, not an empty panel
    figures.qualitative(
        tmp_path / "img.ome.zarr",
        tmp_path / "gt.ome.zarr",
        {"a": tmp_path / "gt.ome.zarr"},
        tmp_path / "q.png",
        title="t",
    )
    assert imread(tmp_path / "q.png").shape[1] > imread(tmp_path / "q.png").shape[0]  # panels side by side


def _with_baseline(tmp_path, paths):
    """The records plus the classical baseline's amg-like row on dataset d (two images)."""
    extra = []
    for image, msa in (("a", 0.2), ("b", 0.4)):
        row = {"dataset": "d", "image": image, "model": "classical", "method": "classical", "iteration": 0}
        row.update({"n_true": 10, "n_pred": 8, "msa": msa, "sa50": msa, "sa75": msa, "precision": 0.5})
        row.update({"recall": 0.5, "f1": 0.5, "params": json.dumps({"sigma": 1.0, "h": 2.0})})
        p = tmp_path / f"classical_{image}.json"
        p.write_text(json.dumps(row))
        extra.append(p)
    return [*paths, *extra]


def test_in_domain_column_and_the_baseline_floor_in_the_comparison(tmp_path):
    _, paths = _records(tmp_path)
    pairs = [{"vanilla": "vit_b", "finetuned": "vit_b_lm"}]
    table = benchmark.write_tables(_with_baseline(tmp_path, paths), tmp_path / "out", pairs, [["d", "vit_b_lm"]])
    saved = pd.read_csv(tmp_path / "out/table.csv")
    assert list(saved.columns[:4]) == ["dataset", "model", "method", "in_domain"]
    marked = saved.set_index(["model", "method"])["in_domain"]
    assert marked[("vit_b_lm", "amg")] and not marked[("vit_b", "amg")] and not marked[("classical", "classical")]
    floor = table[table.model == "classical"].iloc[0]
    assert floor.method == "classical" and floor.mSA == pytest.approx(0.3) and floor.n_images == 2
    comp = pd.read_csv(tmp_path / "out/comparison.csv")
    assert (comp.in_domain_finetuned & ~comp.in_domain_vanilla).all()
    assert comp.mSA_classical.tolist() == pytest.approx([0.3] * 3)  # the floor beside every method's pair
    assert "classical" not in set(comp.method)


def test_figures_mark_in_domain_and_draw_the_floor(tmp_path, monkeypatch):
    _, paths = _records(tmp_path)
    df = benchmark.per_image(_with_baseline(tmp_path, paths))
    table = benchmark.mark_in_domain(benchmark.summarize(df), [["d", "vit_b_lm"]])
    fig_calls = {}
    real_savefig = figures.plt.Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        fig_calls["labels"] = [t.get_text() for t in ax.get_legend().get_texts()]
        fig_calls["hatches"] = {p.get_hatch() for p in ax.patches}
        fig_calls["lines"] = [line.get_ydata()[0] for line in ax.get_lines()]
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(figures.plt.Figure, "savefig", spy)
    figures.msa_bars(table, tmp_path / "bars.png")
    assert "vit_b_lm (in domain)" in fig_calls["labels"] and "vit_b" in fig_calls["labels"]
    assert "//" in fig_calls["hatches"]
    assert fig_calls["lines"] == pytest.approx([0.3])  # the classical baseline, not a bar
    assert any(label.startswith("classical baseline") for label in fig_calls["labels"])
    assert imread(tmp_path / "bars.png").shape[0] > 100
    figures.msa_iterations(benchmark.iterations(df), tmp_path / "it.png", {("d", "vit_b_lm")})


def test_encoder_seconds_per_tile_are_over_all_tiles_not_a_mean_of_images(tmp_path):
    rows, _ = _records(tmp_path)
    amg = [r for r in rows if r["method"] == "amg" and r["model"] == "vit_b"]  # images a and b
    for row, (seconds, tiles) in zip(amg, ((4.0, 1), (0.0, 3))):
        row.update(encoder_s_per_tile=seconds, n_tiles=tiles)
    paths = [tmp_path / f"w{i}.json" for i in range(len(amg))]
    for path, row in zip(paths, amg):
        path.write_text(json.dumps(row))
    table = benchmark.summarize(benchmark.per_image(paths))
    assert table.encoder_s_per_tile.tolist() == [1.0]  # 4 s over 4 tiles (the mean of the images' is 2)


def test_ais_rows_beside_amg_in_table_comparison_and_figure(tmp_path):
    """AIS rows in the tables, the comparison and the bar figure: nothing there is method-specific."""
    paths = []
    for k, (model, method, msa) in enumerate(
        [("vit_b", "amg", 0.2), ("vit_b_lm", "amg", 0.3), ("vit_b_lm", "ais", 0.45), ("vit_b_lm-ft", "ais", 0.5)]
    ):
        params = {"center_distance_threshold": 0.4, "min_size": 100} if method == "ais" else {"prompt": "point"}
        row = {
            "dataset": "d", "image": "a", "model": model, "method": method, "iteration": 0, "n_true": 10,
            "msa": msa, "sa50": msa, "sa75": msa, "precision": 0.5, "recall": 0.5, "f1": 0.5,
            "encoder_s_per_tile": 1.0, "segment_s_per_image": 0.2 if method == "ais" else 3.0, "peak_mem_mb": 50.0,
            "device": "cpu", "params": json.dumps(params),
        }  # fmt: skip
        paths.append(tmp_path / f"{k}.json")
        paths[-1].write_text(json.dumps(row))
    table = benchmark.write_tables(paths, tmp_path / "out", [{"vanilla": "vit_b_lm", "finetuned": "vit_b_lm-ft"}])
    ais = table[table.method == "ais"].set_index("model")
    assert list(ais.index) == ["vit_b_lm", "vit_b_lm-ft"] and ais.loc["vit_b_lm", "mSA"] == 0.45
    assert json.loads(ais.loc["vit_b_lm", "params"])["min_size"] == 100
    assert ais.loc["vit_b_lm", "segment_s_per_image"] == 0.2
    comparison = pd.read_csv(tmp_path / "out/comparison.csv")
    assert list(comparison.method) == ["ais"] and comparison.mSA_diff.iloc[0] == 0.05
    figures.msa_bars(table, tmp_path / "bars.png")
    assert imread(tmp_path / "bars.png").shape[0] > 100


def test_auto_row_compares_amg_of_a_base_with_ais_of_its_finetuned_model():
    """Methods [auto]: the base has only AMG, its finetuned model only AIS; one row pairs them."""
    rows = [
        {"dataset": "d", "model": model, "method": method, **dict.fromkeys(benchmark.SCORES, score)}
        for model, method, score in [
            ("base", "amg", 0.1), ("base", "box", 0.5), ("ft", "ais", 0.6), ("ft", "box", 0.7),
            ("classical", "classical", 0.3),
        ]
    ]  # fmt: skip
    comp = benchmark.compare(pd.DataFrame(rows), [{"vanilla": "base", "finetuned": "ft"}])
    assert list(comp.method) == ["box", "auto (amg -> ais)"]
    auto = comp.iloc[1]
    assert (auto.mSA_vanilla, auto.mSA_finetuned, auto.mSA_classical) == (0.1, 0.6, 0.3)
    assert auto.mSA_diff == pytest.approx(0.5)
    # both models with a decoder: auto is ais for both, which the same-method row already compares
    both = pd.DataFrame([*rows, {**rows[2], "model": "base"}])
    assert "auto" not in " ".join(benchmark.compare(both, [{"vanilla": "base", "finetuned": "ft"}]).method)


def test_apg_rows_carry_their_stage_seconds_per_tile_over_all_tiles(tmp_path):
    """APG's maps, prompts-and-masks and NMS seconds a tile: weighted by each image's tiles; none for AIS."""
    paths = []
    for k, (method, image, tiles, stages) in enumerate(
        [("apg", "a", 1, (1.0, 8.0, 0.5)), ("apg", "b", 3, (0.2, 4.0, 0.1)), ("ais", "a", 1, None)]
    ):
        row = {
            "dataset": "d", "image": image, "model": "ft", "method": method, "iteration": 0, "n_true": 10,
            "msa": 0.5, "sa50": 0.5, "sa75": 0.5, "precision": 0.5, "recall": 0.5, "f1": 0.5,
            "encoder_s_per_tile": 1.0, "segment_s_per_image": 2.0, "peak_mem_mb": 50.0, "n_tiles": tiles,
        }  # fmt: skip
        if stages:
            row.update(dict(zip(benchmark.APG_STAGE_COSTS, stages)))
        paths.append(tmp_path / f"{k}.json")
        paths[-1].write_text(json.dumps(row))
    table = benchmark.write_tables(paths, tmp_path / "out").set_index("method")
    apg = table.loc["apg", benchmark.APG_STAGE_COSTS].tolist()
    assert apg == pytest.approx([(1.0 + 3 * 0.2) / 4, (8.0 + 3 * 4.0) / 4, (0.5 + 3 * 0.1) / 4])
    assert table.loc["ais", benchmark.APG_STAGE_COSTS].isna().all()
    written = pd.read_csv(tmp_path / "out/table.csv")
    assert set(benchmark.APG_STAGE_COSTS) <= set(written.columns)
