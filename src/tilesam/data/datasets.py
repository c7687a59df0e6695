"""Datasets of the config: which images (and ground-truth labels) a dataset has.

The workflow plans its tile jobs when it starts, so each image's shape is read
here from the file header (never the pixels). Images and labels are paired by
file name (or the config names the one image and its labels file); anything that does not pair up,
or pairs twice, is an error before any job runs.
A public `source` is fetched and converted here (tilesam.data.public_datasets), and
any dataset can be restricted to a deterministic train/val/test split, so that
tuning on val and scoring on test never share an image.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilesam import config
from tilesam.data import headers, io, public_datasets, synthetic
from tilesam.data.public_datasets import PARTS


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
    for suffix in (
        ".ome.zarr",
        ".ome.tiff",
        ".ome.tif",
        ".zarr",
        ".tiff",
        ".tif",
        ".png",
        ".jpg",
        ".jpeg",
        ".h5",
        ".hdf5",
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _expand(pattern: str, dataset: str, what: str, base: Path) -> list[str]:
    full = pattern if Path(pattern).is_absolute() else str(base / pattern)
    files = sorted(glob.glob(full))
    if not files:
        raise DatasetError(f"dataset {dataset!r}: the {what} glob {pattern!r} matches no file ({_where(full)})")
    return files


def _where(full: str) -> str:
    """Where a glob that matched nothing looked: its deepest folder without wildcards, absolute."""
    folder = Path(full).absolute().parent
    while any(c in str(folder) for c in "*?["):
        folder = folder.parent
    return f"looked in {folder}" if folder.is_dir() else f"there is no folder {folder}"


def check_name(dataset: str, name: str, path: str) -> None:
    """An image's name becomes a folder or file name in results/ and logs/: refuse what is not a safe one.

    `..` (from `...tif`) would put its results beside its dataset's, `a/b` is two folders, and a
    leading dot hides the outputs; control characters break logs and shells.
    """
    why = None
    if not name:
        why = "an empty name"
    elif name.startswith("."):
        why = "a name starting with a dot (`..` is the parent folder, `.x` a hidden one)"
    elif "/" in name or "\\" in name:
        why = "a name with a path separator"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "a name with a control character"
    if why:
        raise DatasetError(
            f"dataset {dataset!r}: image {path} would be named {name!r}, {why}, which is not a safe file name "
            f"for its results; rename the file"
        )


def images_of(
    dataset: str,
    cfg: dict,
    base: str | Path = ".",
    synthetic_dir: str = "results/synthetic",
    *,
    offline: bool | None = None,
    datasets_root: str = public_datasets.ROOT,
) -> list[ImageRecord]:
    """The image records of one dataset entry, restricted to its `split` (default: all images).

    `source` is `synthetic` (the demo images) or `synthetic_train` (training images like them), a public dataset (fetched into ``<datasets_root>/<name>/`` now, at
    planning time, so the jobs see plain files), or absent with `images`/`labels` globs.
    Synthetic images do not exist yet when the workflow starts: their records point to where
    the workflow's `make_synthetic` rule writes them.
    """
    base = Path(base)
    source = cfg.get("source")
    membership: dict[str, list[str]] = {}
    if source in synthetic.SOURCES:
        out = f"{synthetic_dir}/{dataset}"
        specs = synthetic.SOURCES[source]
        pairs = [(s.name, f"{out}/images/{s.name}.tif", f"{out}/labels/{s.name}.tif") for s in specs]
        shapes = {s.name: s.shape for s in specs}
        return [ImageRecord(dataset, n, i, lab, shapes[n]) for n, i, lab in _restrict(dataset, pairs, cfg, base, {})]
    if source is not None:
        record = public_datasets.read_record(_fetch_public(dataset, source, base / datasets_root, offline))
        modality = record["modality"]
        if cfg.get("modality", "other") not in ("other", modality):
            raise DatasetError(f"dataset {dataset!r}: modality {cfg['modality']} contradicts {source}'s {modality}")
        membership = record["membership"]
        folder = f"{datasets_root}/{source}"  # relative to base, like the globs
        cfg = {**cfg, "images": f"{folder}/images/*.tif", "labels": f"{folder}/labels/*.tif", "key": None}
        cfg["ndim"] = record["ndim"]
    elif "images" not in cfg:
        raise DatasetError(f"dataset {dataset!r}: needs `images` (a glob) or `source`")
    ndim = int(cfg.get("ndim", 2))
    key = cfg.get("key")
    records = []
    for name, path, labels in _restrict(dataset, _pairs(dataset, cfg, base), cfg, base, membership):
        try:
            shape = headers.probe(path, ndim, key)
            if labels is not None:
                headers.probe_labels(labels, shape, path, key)
        except io.InputError as err:
            raise DatasetError(f"dataset {dataset!r}: {err}") from err
        records.append(ImageRecord(dataset, name, path, labels, shape, key))
    return records


def _fetch_public(dataset: str, source: str, root: Path, offline: bool | None) -> Path:
    try:
        return public_datasets.fetch_dataset(source, root, offline=offline)
    except (ValueError, RuntimeError, OSError) as err:
        raise DatasetError(f"dataset {dataset!r} (source: {source}): {err}") from err


def _pairs(dataset: str, cfg: dict, base: Path) -> list[tuple[str, str, str | None]]:
    """(name, image, labels or None) of the globs, paired by name; anything unpaired is an error."""
    images = _expand(cfg["images"], dataset, "images", base)
    labels: dict[str, str] = {}
    if cfg.get("labels"):
        label_files = _expand(cfg["labels"], dataset, "labels", base)
        for path in label_files:
            other = labels.setdefault(stem(path), path)
            if other != path:
                raise DatasetError(
                    f"dataset {dataset!r}: {other} and {path} are both labels named {stem(path)!r}; "
                    "keep one, or narrow the labels glob"
                )
        if _literal(cfg["images"]) and _literal(cfg["labels"]):  # the config names both files: they pair
            labels = {stem(images[0]): label_files[0]}
    pairs, seen = [], {}
    for path in images:
        name = stem(path)
        check_name(dataset, name, path)
        if name in seen:
            raise DatasetError(f"dataset {dataset!r}: {path} and {seen[name]} have the same name {name!r}")
        seen[name] = path
        if labels and name not in labels:
            hint = ""
            if len(images) == len(labels) == 1:
                hint = f" (the only labels file is {next(iter(labels.values()))}: name both files without wildcards to pair them)"
            raise DatasetError(
                f"dataset {dataset!r}: image {path} has no labels named {name!r} in {cfg['labels']!r}{hint}"
            )
        pairs.append((name, path, labels.get(name)))
    extra = sorted(set(labels) - set(seen))
    if extra:
        raise DatasetError(f"dataset {dataset!r}: labels without an image: {', '.join(extra[:5])}")
    return pairs


def _literal(pattern: str) -> bool:
    """A glob without wildcards: the config names one file, not a set of files to pair by name."""
    return not any(c in pattern for c in "*?[")


def _restrict(dataset: str, pairs: list, cfg: dict, base: Path, membership: dict[str, list[str]]) -> list:
    """The pairs of the entry's `split`; the split is computed (and checked) even for `all`."""
    names = [p[0] for p in pairs]
    if cfg.get("split_files"):
        parts = split_from_files(dataset, names, {k: base / v for k, v in cfg["split_files"].items()})
    else:
        fractions = cfg.get("split_fractions", DEFAULT_FRACTIONS)
        parts = split_names(dataset, names, fractions, cfg.get("split_seed", 0), membership)
    split = cfg.get("split", "all")
    if split == "all":
        return pairs
    keep = set(parts[split])
    if not keep:
        raise DatasetError(f"dataset {dataset!r}: its {split} split is empty ({len(names)} images in all)")
    return [p for p in pairs if p[0] in keep]


DEFAULT_FRACTIONS: dict[str, float] = config.defaults("datasets", "*")["split_fractions"]


def split_names(
    dataset: str,
    names: list[str],
    fractions: dict[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    membership: dict[str, list[str]] | None = None,
) -> dict[str, list[str]]:
    """Deterministic train/val/test parts of ``names`` (each sorted), the same on every machine.

    Without ``membership`` the sorted names are permuted with ``seed`` and cut by ``fractions``
    (missing parts count 0; test and val are rounded half up, train takes the rest). A dataset's own
    published ``membership`` wins: its test stays test, its val (if any) stays val, and otherwise
    val is ``val / (train + val)`` of its train part, so train:val keep the ratio of ``fractions``.
    """
    f = {part: float(fractions.get(part, 0.0)) for part in PARTS}
    unknown = set(fractions) - set(PARTS)
    if unknown or min(f.values()) < 0 or abs(sum(f.values()) - 1) > 1e-6:
        raise DatasetError(
            f"dataset {dataset!r}: split_fractions {dict(fractions)} must be train/val/test numbers >= 0 summing to 1"
        )
    rng = np.random.default_rng(seed)
    if not membership:
        order = [sorted(names)[i] for i in rng.permutation(len(names))] if names else []
        n_test = _count(f["test"], len(order))
        n_val = _count(f["val"], len(order))
        cuts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        return {part: sorted(cuts[part]) for part in PARTS}
    present = set(names)
    parts = {part: sorted(present & set(membership.get(part, []))) for part in PARTS}
    if not membership.get("val"):
        train = parts["train"]
        share = f["val"] / (f["train"] + f["val"]) if f["train"] + f["val"] > 0 else 0.0
        order = [train[i] for i in rng.permutation(len(train))] if train else []
        n_val = _count(share, len(order))
        parts["val"], parts["train"] = sorted(order[:n_val]), sorted(order[n_val:])
    return parts


def _count(fraction: float, n: int) -> int:
    """``fraction`` of ``n`` rounded half up (Python's round() would round 0.5 to even)."""
    return int(fraction * n + 0.5 + 1e-9)


def read_names(path: str | Path) -> list[str]:
    """Image names of a split file: one per line; blank lines and `#` comments are skipped."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [stem(line) for line in lines if line]


def split_from_files(dataset: str, names: list[str], files: dict[str, Path]) -> dict[str, list[str]]:
    """Parts given by name lists (a part without a file is empty); each name must exist, once."""
    present, parts, owner = set(names), {part: [] for part in PARTS}, {}
    for part, path in files.items():
        if not Path(path).is_file():
            raise DatasetError(f"dataset {dataset!r}: split file {path} ({part}) does not exist")
        listed = read_names(path)
        missing = sorted(set(listed) - present)
        if missing:
            raise DatasetError(
                f"dataset {dataset!r}: split file {path} names images that do not exist: {', '.join(missing[:5])}"
            )
        for name in listed:
            if owner.setdefault(name, part) != part:
                raise DatasetError(f"dataset {dataset!r}: {name!r} is in both the {owner[name]} and {part} files")
        parts[part] = sorted(set(listed))
    return parts
