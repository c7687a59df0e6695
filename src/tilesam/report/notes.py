"""What the table's means must not hide: images whose ground truth has no object, and the warnings of import.

An image with no labelled object scores 1.0 where nothing is predicted and 0 otherwise: either way
its score is about the labels, not the model, and it moves the dataset's mean (AMG 0.0 -> 0.5 by
adding one). So such an image is an error for a scored dataset, unless the dataset is marked
`empty_labels: exclude`: then it is left out of every mean and named in the table's notes. Warnings
that import recorded (a constant image) reach the notes through the evaluation records' `notes`.
"""

from __future__ import annotations

from collections.abc import Collection

import pandas as pd


class EmptyGroundTruthError(ValueError):
    """Scored images whose ground truth has no labelled object; the message names them and the way out."""


def _source(rows: pd.DataFrame) -> str:
    """The labels file of an image's records, where the evaluation recorded it."""
    if "labels_source" not in rows:
        return ""
    sources = rows["labels_source"].dropna().unique()
    return f" ({sources[0]})" if len(sources) else ""


def screen(df: pd.DataFrame, exclude_empty: Collection[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """The per-image rows to average, and the notes of the table.

    df: per-image records (dataset, image, n_true, ... and optional `notes` lists, `labels_source`).
    exclude_empty: the datasets marked `empty_labels: exclude`. An image of another dataset whose ground
    truth has no object (n_true 0) raises EmptyGroundTruthError naming every such image.
    """
    empty = df[df["n_true"] == 0] if "n_true" in df else df.iloc[:0]
    images = sorted(set(zip(empty["dataset"], empty["image"])))
    scored = [(d, i) for d, i in images if d not in exclude_empty]
    if scored:
        named = "; ".join(
            f"dataset {d!r}, image {i!r}{_source(empty[(empty.dataset == d) & (empty.image == i)])}" for d, i in scored
        )
        raise EmptyGroundTruthError(
            f"ground truth with no labelled object: {named}. Its scores would be 1.0 or 0 whatever the model "
            "did; fix or remove the labels, or set `empty_labels: exclude` on the dataset to leave such images "
            "out of the means"
        )
    notes = [
        f"{d}: image {i!r} has no labelled object in its ground truth"
        f"{_source(empty[(empty.dataset == d) & (empty.image == i)])}; excluded from the means (empty_labels: exclude)"
        for d, i in images
    ]
    keep = ~pd.MultiIndex.from_frame(df[["dataset", "image"]]).isin(images) if images else slice(None)
    kept = df[keep]
    if "notes" in kept:
        seen = set()
        for d, i, listed in zip(kept["dataset"], kept["image"], kept["notes"]):
            for note in listed if isinstance(listed, list) else ():
                if (d, i, note) not in seen:
                    seen.add((d, i, note))
                    notes.append(f"{d}: image {i!r}: {note}")
    return kept, notes


def markdown(notes: list[str]) -> str:
    """The notes as a markdown section under the table ("" when there are none, so the table is as before)."""
    return "\nNotes:\n\n" + "".join(f"- {note}\n" for note in notes) if notes else ""
