"""Benchmark figures as PNG: scores per model and method, scores over prompting iterations,
and a qualitative panel (image, ground truth, and each model's result on the same crop).

In-domain results (a model scored on data it was trained on) are hatched and labelled
"(in domain)"; the classical baseline is drawn as the floor line of each panel.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tilesam.data import ome  # noqa: E402


def _datasets_axes(n: int, width: float = 5.0, height: float = 3.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


BASELINE = "classical"  # the classical baseline's model (tilesam.segment.classical)
IN_DOMAIN = " (in domain)"


def msa_bars(table: pd.DataFrame, out: str | Path) -> None:
    """Grouped bars of mSA: one panel per dataset, methods on the x axis, one bar per model.

    In-domain bars are hatched; the classical baseline is a dashed line across the panel.
    """
    datasets = sorted(table["dataset"].unique())
    fig, axes = _datasets_axes(len(datasets))
    for ax, dataset in zip(axes, datasets):
        sub = table[table["dataset"] == dataset]
        floor = sub[sub["model"] == BASELINE]
        sub = sub[sub["model"] != BASELINE]
        in_domain = set(sub.loc[sub["in_domain"], "model"]) if "in_domain" in sub else set()
        if len(sub):
            pivot = sub.pivot_table(index="method", columns="model", values="mSA")
            pivot = pivot.rename(columns={m: m + IN_DOMAIN for m in in_domain})
            pivot.plot.bar(ax=ax, rot=30, width=0.8)
            for container, model in zip(ax.containers, pivot.columns):
                if model.endswith(IN_DOMAIN):
                    for bar in container:
                        bar.set_hatch("//")
        if len(floor):
            msa = float(floor["mSA"].iloc[0])
            ax.axhline(msa, color="k", linestyle="--", linewidth=1, label=f"classical baseline ({msa:.2f})")
        ax.set_title(dataset)
        ax.set_ylim(0, 1)
        ax.set_ylabel("mSA")
        ax.set_xlabel("")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, title=None)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def msa_iterations(
    iterations: pd.DataFrame, out: str | Path, in_domain: set[tuple[str, str]] | frozenset = frozenset()
) -> None:
    """mSA over the iterations of interactive prompting, one line per model and start prompt.

    in_domain: (dataset, model) pairs whose lines are dashed and labelled in domain. A run without
    iterative modes gets a figure that says so and how to ask for them, not empty axes.
    """
    if not len(iterations):
        fig, ax = plt.subplots(figsize=(6.4, 1.6))
        ax.axis("off")
        ax.text(
            0.5, 0.5, "No iterative prompting in this run.\nTo get these curves, add iterative_box and/or\n"
            "iterative_point to evaluation.prompts in the config.", ha="center", va="center", fontsize=11,
        )  # fmt: skip
        fig.savefig(out, dpi=110)
        plt.close(fig)
        return
    datasets = sorted(iterations["dataset"].unique())
    fig, axes = _datasets_axes(len(datasets))
    for ax, dataset in zip(axes, datasets):
        sub = iterations[iterations["dataset"] == dataset]
        for (model, method), grp in sub.groupby(["model", "method"]):
            inside = (dataset, model) in in_domain
            label = f"{model}{IN_DOMAIN if inside else ''}, {method}"
            ax.plot(grp["iteration"], grp["mSA"], marker="o", linestyle="--" if inside else "-", label=label)
        ax.set_title(dataset)
        ax.set_xlabel("iteration (0 = first prompt)")
        ax.set_ylabel("mSA")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _crop(shape: tuple[int, ...], gt: np.ndarray, size: int = 256) -> tuple[slice, slice]:
    """The size x size crop (or the whole image) holding the most ground-truth pixels."""
    h, w = shape[-2:]
    ch, cw = min(size, h), min(size, w)
    if gt is None or not gt.any():
        return slice(0, ch), slice(0, cw)
    ys, xs = np.nonzero(gt)
    cy = int(np.clip(np.median(ys) - ch // 2, 0, h - ch))
    cx = int(np.clip(np.median(xs) - cw // 2, 0, w - cw))
    return slice(cy, cy + ch), slice(cx, cx + cw)


def _colour(labels: np.ndarray) -> np.ndarray:
    """Labels as RGB, a pseudo-random colour per object (background black).

    Colours go by the index of an id among the crop's ids, not by the id: a table as long as the
    largest id would take 90 GB for one uint32 id near 4e9.
    """
    ids, index = np.unique(labels, return_inverse=True)
    lut = np.random.default_rng(0).uniform(0.2, 1.0, size=(ids.size, 3))
    lut[ids == 0] = 0
    return lut[index.reshape(labels.shape)]


Result = tuple[str, str]  # (model, method) of a segmentation result


def panel_titles(results: list[Result | str], in_domain: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """A title per result naming its model and its method (and "(in domain)" where the model was trained on
    the data), so that each panel says which row of the table it shows.

    A plain string names a result by itself (the classical baseline, whose model is its method).
    """
    titles = []
    for result in results:
        model, method = (result, None) if isinstance(result, str) else result
        name = model + IN_DOMAIN if model in in_domain else model
        titles.append(name if method is None or method == model else f"{name}\n{method}")
    return titles


def qualitative(
    image: str | Path,
    gt: str | Path | None,
    results: dict[Result | str, str | Path],
    out: str | Path,
    title: str = "",
    in_domain: set[str] | frozenset[str] = frozenset(),
) -> list[str]:
    """Image, ground truth and each result on the same crop (middle section of volumes); returns the titles.

    `results` maps (model, method) to a label image: one panel each, every (model, method) row of the
    table, titled with both (`panel_titles`); `in_domain` names the models trained on this dataset.
    """
    img = ome.open_level0(image)
    truth = ome.open_level0(gt) if gt else None
    ndim = len(truth.shape) if truth is not None else len(ome.open_level0(next(iter(results.values()))).shape)
    z = (truth.shape[0] // 2,) if (truth is not None and ndim == 3) else ()
    plane_gt = truth[z] if truth is not None else None
    shape = plane_gt.shape if plane_gt is not None else img.shape[-2:]
    ys, xs = _crop(shape, plane_gt)
    channels = img.ndim > ndim
    raw = img[(slice(None), *z, ys, xs)] if channels else img[(*z, ys, xs)]
    raw = np.moveaxis(raw, 0, -1) if channels else raw
    panels = [("image", raw)]
    if plane_gt is not None:
        panels.append(("ground truth", _colour(plane_gt[ys, xs])))
    for label, path in zip(panel_titles(list(results), in_domain), results.values()):
        panels.append((label, _colour(ome.open_level0(path)[(*z, ys, xs)])))
    # constrained layout keeps the figure's title above two-line (model, method) panel titles
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), squeeze=False, layout="constrained")
    for ax, (name, arr) in zip(axes[0], panels):
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [name for name, _ in panels]
