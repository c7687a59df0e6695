"""Benchmark tables and figures from per-image evaluation records.

Each evaluation file holds one record or a list of records (dataset, image,
model, method, iteration, scores, costs). The table has one row per
dataset x model x method: scores are averaged over images (micro-sam's
protocol), object counts summed; iterative prompting is reported at its last
iteration in the table and per iteration in `iterations.csv`.

Two marks keep the numbers honest: `in_domain` says a model was trained on (a part of) the
dataset it is scored on, so a win there is not generalisation; the classical baseline's row
(model and method `classical`, no model at all) is the floor every SAM row should beat, and
the comparison carries it beside each vanilla-vs-finetuned pair.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from tilesam.report import notes

KEYS = ["dataset", "model", "method"]
BASELINE = "classical"  # the classical baseline's model and method (tilesam.segment.classical)
SCORES = ["mSA", "SA50", "SA75", "precision", "recall", "f1"]
#: APG's seconds a tile per stage (`tilesam.segment.results.APG_STAGES`): the decoder's maps, the prompts decoded
#: into masks, their NMS; empty for the other methods
APG_STAGE_COSTS = ["maps_s_per_tile", "prompts_masks_s_per_tile", "nms_s_per_tile"]
COSTS = ["encoder_s_per_tile", "segment_s_per_image", "peak_mem_mb", *APG_STAGE_COSTS]
PER_TILE = ["encoder_s_per_tile", *APG_STAGE_COSTS]  # seconds a tile: over all tiles, not a mean of the images'

#: column names of the tables for the keys of `tilesam.metrics.Scores.as_dict`
COLUMNS = {"msa": "mSA", "sa50": "SA50", "sa75": "SA75"}


def per_image(evaluations: list[str | Path]) -> pd.DataFrame:
    rows = []
    for path in evaluations:
        data = json.loads(Path(path).read_text())
        rows.extend(data if isinstance(data, list) else [data])
    df = pd.DataFrame(rows).rename(columns=COLUMNS)
    if "iteration" not in df:
        df["iteration"] = 0
    df["iteration"] = df["iteration"].fillna(0).astype(int)
    return df


def _final_iteration(df: pd.DataFrame) -> pd.DataFrame:
    last = df.groupby(KEYS)["iteration"].transform("max")
    return df[df["iteration"] == last]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Mean scores per dataset x model x method, with counts, parameters and costs."""
    final = _final_iteration(df)
    grouped = final.groupby(KEYS, sort=True)
    table = grouped[SCORES].mean()
    table.insert(0, "n_objects", grouped["n_true"].sum())
    table.insert(0, "n_images", grouped["image"].nunique())
    for col in COSTS:
        if col in final:
            table[col] = grouped[col].mean() if col != "peak_mem_mb" else grouped[col].max()
    for col in PER_TILE:  # per tile of all images, not a mean of means
        if col in final and "n_tiles" in final:
            timed = final[col].notna()
            weighted = final.assign(_s=final[col] * final["n_tiles"], _n=final["n_tiles"].where(timed))
            grouped_w = weighted.groupby(KEYS, sort=True)
            table[col] = grouped_w["_s"].sum(min_count=1) / grouped_w["_n"].sum()
    for col in ("device", "params"):
        if col in final:
            table[col] = grouped[col].first()
    return table.reset_index()


def mark_in_domain(table: pd.DataFrame, in_domain: list[tuple[str, str]] | list[list[str]]) -> pd.DataFrame:
    """The table with an `in_domain` column: True where (dataset, model) is a pair the model was trained on."""
    pairs = {(str(d), str(m)) for d, m in in_domain}
    out = table.copy()
    position = out.columns.get_loc("method") + 1
    out.insert(position, "in_domain", [(d, m) in pairs for d, m in zip(out["dataset"], out["model"])])
    return out


def iterations(df: pd.DataFrame) -> pd.DataFrame:
    """Mean mSA per iteration of the iterative prompting methods."""
    it = df[df["method"].str.startswith("iterative")]
    return it.groupby([*KEYS, "iteration"], sort=True)[SCORES].mean().reset_index()


AUTOMATIC = ("auto", "ais", "apg", "amg")
"""The automatic methods in the order `auto` prefers them (the searched choice, else ais where a model has a
decoder, else amg)."""


def _automatic(rows: pd.DataFrame, dataset: str) -> str | None:
    """The method `auto` gives a model on a dataset: its first automatic method in the table."""
    methods = set(rows.loc[dataset].index) if dataset in rows.index.get_level_values(0) else set()
    return next((m for m in AUTOMATIC if m in methods), None)


def compare(table: pd.DataFrame, pairs: list[dict]) -> pd.DataFrame:
    """For each {vanilla, finetuned} pair: both scores and finetuned - vanilla, per dataset and method.

    Besides the methods both models ran, a row `auto` compares each model's automatic segmentation
    where they differ (a base without a decoder has AMG, its finetuned model AIS): the answer to
    "how much better does the finetuned model segment on its own", which no same-method row gives.
    """
    rows = []
    floor = table[table["model"] == BASELINE].set_index("dataset")["mSA"]
    for pair in pairs:
        van = table[table["model"] == pair["vanilla"]].set_index(["dataset", "method"])
        fin = table[table["model"] == pair["finetuned"]].set_index(["dataset", "method"])
        keys = [(key, key, key[1]) for key in sorted(set(van.index) & set(fin.index))]
        for dataset in sorted(set(van.index.get_level_values(0)) & set(fin.index.get_level_values(0))):
            v, f = _automatic(van, dataset), _automatic(fin, dataset)
            if v and f and v != f:
                keys.append(((dataset, v), (dataset, f), f"auto ({v} -> {f})"))
        for vkey, fkey, method in keys:
            row = {"dataset": vkey[0], "method": method, "vanilla": pair["vanilla"], "finetuned": pair["finetuned"]}
            if "in_domain" in table:
                row["in_domain_vanilla"] = bool(van.loc[vkey, "in_domain"])
                row["in_domain_finetuned"] = bool(fin.loc[fkey, "in_domain"])
            for score in SCORES:
                row[f"{score}_vanilla"] = van.loc[vkey, score]
                row[f"{score}_finetuned"] = fin.loc[fkey, score]
                row[f"{score}_diff"] = fin.loc[fkey, score] - van.loc[vkey, score]
            row[f"mSA_{BASELINE}"] = floor.get(vkey[0], float("nan"))  # the floor both should beat
            rows.append(row)
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, floatfmt=".3f") + "\n"


def write_tables(
    evaluations: list[str | Path],
    out_dir: str | Path,
    pairs: list[dict] | None = None,
    in_domain: list[tuple[str, str]] | list[list[str]] = (),
    exclude_empty: Collection[str] = (),
) -> pd.DataFrame:
    """table.csv/.md, per_image.csv, iterations.csv, and comparison.csv/.md when pairs are given.

    in_domain: the (dataset, model) pairs where the model was trained on the dataset.
    exclude_empty: the datasets marked `empty_labels: exclude`, whose images without a labelled object
    are left out of the means; elsewhere such an image is an error (tilesam.report.notes.screen).
    The notes (excluded images, import's warnings) follow the table in table.md.
    """
    out_dir = Path(out_dir)
    df = per_image(evaluations)
    scored, table_notes = notes.screen(df, exclude_empty)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "per_image.csv", index=False)
    table = mark_in_domain(summarize(scored), in_domain)
    table.to_csv(out_dir / "table.csv", index=False, float_format="%.4f")
    (out_dir / "table.md").write_text(_markdown(table) + notes.markdown(table_notes))
    iterations(scored).to_csv(out_dir / "iterations.csv", index=False, float_format="%.4f")
    comparison = compare(table, pairs or [])
    comparison.to_csv(out_dir / "comparison.csv", index=False, float_format="%.4f")
    (out_dir / "comparison.md").write_text(_markdown(comparison) if len(comparison) else "no compare pairs\n")
    return table
