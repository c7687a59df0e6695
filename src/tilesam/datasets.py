"""Datasets of the config: which images (and ground-truth labels) a dataset has.

The workflow plans its tile jobs when it starts, so each image's shape is read
here from the file header (never the pixels). Images and labels are paired by
file name; anything that does not pair up is an error before any job runs.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from tilesam import io, synthetic


class DatasetError(ValueError):
    """A dataset entry of the config that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ImageRecord:
    dataset: str
    name: str  # unique within the dataset: the file name without its suffixes
    image: str  # source path
    labels: str | None
    shape: tuple[int, ...]  # spatial shape: (Y, X) or (Z, Y, X)
    key: str | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)


def stem(path: str | Path) -> str:
    """File name without suffixes (`a.ome.tif` -> `a`), used to pair images with labels."""
    name = Path(str(path).rstrip("/")).name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".tiff", ".tif", ".png", ".jpg", ".jpeg", ".h5", ".hdf5"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expand(pattern: str, dataset: str, what: str, base: Path) -> list[str]:
    full = pattern if Path(pattern).is_absolute() else str(base / pattern)
    files = sorted(glob.glob(full))
    if not files:
        raise DatasetError(f"dataset {dataset!r}: the {what} glob {pattern!r} matches no file (looked in {base})")
    return files


def images_of(dataset: str, cfg: dict, base: str | Path = ".", synthetic_dir: str = "results/synthetic") -> list[ImageRecord]:
    """The image records of one dataset entry (`source: synthetic` or `images`/`labels` globs).

    Synthetic images do not exist yet when the workflow starts: their records
    point to where the workflow's `make_synthetic` rule writes them.
    """
    base = Path(base)
    if cfg.get("source") == "synthetic":
        out = f"{synthetic_dir}/{dataset}"
        return [
            ImageRecord(dataset, s.name, f"{out}/images/{s.name}.tif", f"{out}/labels/{s.name}.tif", s.shape)
            for s in synthetic.DEMO
        ]
    if "images" not in cfg:
        raise DatasetError(f"dataset {dataset!r}: needs `images` (a glob) or `source: synthetic`")
    ndim = int(cfg.get("ndim", 2))
    key = cfg.get("key")
    images = _expand(cfg["images"], dataset, "images", base)
    labels = {}
    if cfg.get("labels"):
        for path in _expand(cfg["labels"], dataset, "labels", base):
            labels[stem(path)] = path
    records, seen = [], {}
    for path in images:
        name = stem(path)
        if name in seen:
            raise DatasetError(f"dataset {dataset!r}: {path} and {seen[name]} have the same name {name!r}")
        seen[name] = path
        if labels and name not in labels:
            raise DatasetError(f"dataset {dataset!r}: image {path} has no labels named {name!r} in {cfg['labels']!r}")
        try:
            shape = io.probe(path, ndim, key)
        except io.InputError as err:
            raise DatasetError(f"dataset {dataset!r}: {err}") from err
        records.append(ImageRecord(dataset, name, path, labels.get(name), shape, key))
    extra = sorted(set(labels) - set(seen))
    if extra:
        raise DatasetError(f"dataset {dataset!r}: labels without an image: {', '.join(extra[:5])}")
    return records
