"""AIS rows in the tables, the comparison and the bar figure: nothing there is method-specific."""

import json

import pandas as pd
from matplotlib.image import imread

from tilesam.report import figures
from tilesam.report import tables as benchmark


def test_ais_rows_beside_amg_in_table_comparison_and_figure(tmp_path):
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
