"""Named public benchmark datasets: where they come from, and one layout to use them in.

Numbers are comparable with published ones only on the published data, so every dataset here
has its download url(s) and sha256. Where the publisher gives no checksum (LIVECell) the caller
must supply one, as for models: tilesam never uses unverified downloads. `fetch_dataset`
downloads with pooch into ``<root>/downloads/`` and converts once to

    <root>/<name>/images/<stem>.tif   a 2D image or a (Z, Y, X) volume
    <root>/<name>/labels/<stem>.tif   instance labels, 0 = background
    <root>/<name>/dataset.json        source urls and sha256s, modality, ndim, and the dataset's
                                      own train/val/test membership where it has one

A conversion is written to ``<root>/<name>.partial`` and renamed when complete: a folder with a
dataset.json is always finished, and an interrupted conversion starts over.

Urls, checksums and archive layouts are those of torch-em's dataset loaders
(https://github.com/constantinpape/torch-em/tree/main/torch_em/data/datasets).
"""

from __future__ import annotations

import difflib
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from tilesam.download import ChecksumError, UnknownChecksumError, fetch_verified

MIRROR_ENV = "TILESAM_DATASETS_MIRROR"  # base url that replaces every dataset url: <mirror>/<file>
PARTS = ("train", "val", "test")
ROOT = "resources/datasets"  # where datasets are converted, relative to the run folder


class UnknownDatasetError(ValueError):
    """A dataset name that is not in the registry."""


@dataclass(frozen=True)
class RemoteFile:
    filename: str  # name under <root>/downloads/ (unique over all datasets)
    url: str
    sha256: str | None  # None: the publisher gives none


@dataclass(frozen=True)
class PublicDataset:
    name: str
    modality: str  # lm | em_organelles | em_boundaries
    ndim: int  # 2: one image per file; 3: volumes
    files: tuple[RemoteFile, ...]
    convert: Callable[[dict[str, Path], Path], dict[str, list[str]]]  # downloads, out -> membership
    reference: str  # where the facts come from


# --- converters: downloaded files -> images/ and labels/; return the published membership ---


def _write_pair(out: Path, stem: str, image: np.ndarray, labels: np.ndarray) -> None:
    if image.shape[: labels.ndim] != labels.shape:
        raise ValueError(f"{stem}: image shape {image.shape} does not match labels shape {labels.shape}")
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    photometric = "rgb" if image.ndim == labels.ndim + 1 else "minisblack"  # else tifffile takes (3, Y, X) for RGB
    tifffile.imwrite(out / "images" / f"{stem}.tif", image, photometric=photometric, compression="zlib")
    tifffile.imwrite(out / "labels" / f"{stem}.tif", labels.astype(dtype), photometric="minisblack", compression="zlib")


def _convert_dsb2018(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """StarDist's DSB2018 subset: dsb2018/{train,test}/{images,masks}/<id>.tif, masks are instances."""
    membership: dict[str, list[str]] = {"train": [], "test": []}
    with zipfile.ZipFile(files["dsb2018.zip"]) as archive:
        names = set(archive.namelist())
        for member in sorted(names):
            match = re.fullmatch(r"dsb2018/(train|test)/images/([^/]+)\.tif", member)
            if not match:
                continue
            part, stem = match.groups()
            mask = f"dsb2018/{part}/masks/{stem}.tif"
            if mask not in names:
                raise ValueError(f"dsb2018.zip: {member} has no mask {mask}")
            image = tifffile.imread(io.BytesIO(archive.read(member)))
            labels = tifffile.imread(io.BytesIO(archive.read(mask)))
            _write_pair(out, stem, image, labels)
            membership[part].append(stem)
    return membership


def _png_stack(archive: zipfile.ZipFile, folder: str) -> np.ndarray:
    """The PNG slices of a folder as one volume, in the numeric order of their names (2 before 10)."""
    from PIL import Image

    members = [m for m in archive.namelist() if m.startswith(folder) and m.endswith(".png")]
    if not members:
        raise ValueError(f"{archive.filename}: no PNG slices in {folder}")
    members.sort(key=lambda m: int(re.findall(r"\d+", Path(m).name)[-1]))
    slices = [np.asarray(Image.open(io.BytesIO(archive.read(m)))) for m in members]
    return np.stack([s[..., 0] if s.ndim == 3 else s for s in slices])  # gray, or RGB(A) -> one channel


def _convert_lucchi(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """Lucchi++: one volume per split; the binary mitochondria masks become 3D connected components."""
    from skimage.measure import label

    with zipfile.ZipFile(files["lucchi_pp.zip"]) as archive:
        for part, prefix in (("train", "Train"), ("test", "Test")):
            raw = _png_stack(archive, f"Lucchi++/{prefix}_In/")
            mask = _png_stack(archive, f"Lucchi++/{prefix}_Out/") > 127
            _write_pair(out, part, raw, label(mask, connectivity=1))
    return {"train": ["train"], "test": ["test"]}


def _convert_isbi2012(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """The ISBI 2012 training volume; its test labels were never published, so no membership."""
    import h5py

    with h5py.File(files["isbi2012.h5"], "r") as f:
        raw, labels = f["raw"][...], f["labels/gt_segmentation"][...]
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError(f"isbi2012.h5: labels/gt_segmentation must be non-negative integers, got {labels.dtype}")
    _write_pair(out, "volume", raw, labels)
    return {}


def _coco_labels(image: dict, annotations: list[dict]) -> np.ndarray:
    """Instance labels from COCO polygons; larger objects are drawn first so overlaps keep small ones."""
    from skimage.draw import polygon

    shape = (image["height"], image["width"])
    labels = np.zeros(shape, np.uint16)
    for label_id, ann in enumerate(sorted(annotations, key=lambda a: -a.get("area", 0)), start=1):
        if not isinstance(ann["segmentation"], list):
            raise ValueError(f"image {image['file_name']}: annotation {ann.get('id')} is not a polygon (RLE)")
        for poly in ann["segmentation"]:
            xy = np.asarray(poly, float).reshape(-1, 2)
            rows, cols = polygon(xy[:, 1], xy[:, 0], shape)
            labels[rows, cols] = label_id
    return labels


def _convert_livecell(files: dict[str, Path], out: Path) -> dict[str, list[str]]:
    """LIVECell: phase-contrast images in images.zip, one COCO json of polygons per published split."""
    membership: dict[str, list[str]] = {}
    with zipfile.ZipFile(files["livecell_images.zip"]) as archive:
        members = {Path(m).name: m for m in archive.namelist() if m.endswith(".tif")}
        for part in PARTS:
            coco = json.loads(files[f"livecell_coco_{part}.json"].read_text())
            by_image: dict[int, list[dict]] = {}
            for ann in coco["annotations"]:
                by_image.setdefault(ann["image_id"], []).append(ann)
            for image in sorted(coco["images"], key=lambda i: i["file_name"]):
                name = Path(image["file_name"]).name
                if name not in members:
                    raise ValueError(f"livecell_images.zip has no image {name} (listed in {part}'s annotations)")
                pixels = tifffile.imread(io.BytesIO(archive.read(members[name])))
                stem = name.removesuffix(".tif")
                _write_pair(out, stem, pixels, _coco_labels(image, by_image.get(image["id"], [])))
                membership.setdefault(part, []).append(stem)
    return membership


_TORCH_EM = "https://github.com/constantinpape/torch-em/blob/main/torch_em/data/datasets"
_LIVECELL = "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021"

REGISTRY: dict[str, PublicDataset] = {
    d.name: d
    for d in (
        PublicDataset(
            "dsb2018",
            "lm",
            2,
            (
                RemoteFile(
                    "dsb2018.zip",
                    "https://github.com/stardist/stardist/releases/download/0.1.0/dsb2018.zip",
                    "e44921950edce378063aa4457e625581ba35b4c2dbd9a07c19d48900129f386f",
                ),
            ),
            _convert_dsb2018,
            f"{_TORCH_EM}/light_microscopy/dsb.py (StarDist's fluorescence subset of DSB2018, 'reduced')",
        ),
        PublicDataset(
            "lucchi",
            "em_organelles",
            3,
            (
                RemoteFile(
                    "lucchi_pp.zip",
                    "http://www.casser.io/files/lucchi_pp.zip",
                    "770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
                ),
            ),
            _convert_lucchi,
            f"{_TORCH_EM}/electron_microscopy/lucchi.py (Lucchi++, Casser et al. 2018)",
        ),
        PublicDataset(
            "isbi2012",
            "em_boundaries",
            3,
            (
                RemoteFile(
                    "isbi2012.h5",
                    "https://oc.embl.de/index.php/s/h0TkwqxU0PJDdMd/download",
                    "0e10fe909a1243084d91773470856993b7d40126a12e85f0f1345a7a9e512f29",
                ),
            ),
            _convert_isbi2012,
            f"{_TORCH_EM}/electron_microscopy/isbi2012.py (HDF5: raw, labels/gt_segmentation)",
        ),
        PublicDataset(
            "livecell",
            "lm",
            2,
            (
                RemoteFile("livecell_images.zip", f"{_LIVECELL}/images.zip", None),
                *(
                    RemoteFile(
                        f"livecell_coco_{part}.json",
                        f"{_LIVECELL}/annotations/LIVECell/livecell_coco_{part}.json",
                        None,
                    )
                    for part in PARTS
                ),
            ),
            _convert_livecell,
            f"{_TORCH_EM}/light_microscopy/livecell.py (no checksum published: torch-em's CHECKSUM is None)",
        ),
    )
}


def lookup(name: str) -> PublicDataset:
    """The registry entry of ``name``; an unknown name is an error listing the known ones."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, list(REGISTRY), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownDatasetError(f"unknown public dataset {name!r}; known: {', '.join(REGISTRY)}.{hint}")


def _per_file(value: str | Mapping[str, str] | None, ds: PublicDataset, what: str) -> dict[str, str]:
    """A str (single-file datasets) or a mapping file name -> value, checked against the file names."""
    if value is None:
        return {}
    if isinstance(value, str):
        if len(ds.files) != 1:
            raise ValueError(f"{ds.name} has {len(ds.files)} files: give {what} as FILE=VALUE for each")
        return {ds.files[0].filename: value}
    unknown = sorted(set(value) - {f.filename for f in ds.files})
    if unknown:
        raise ValueError(
            f"{ds.name}: {what} for unknown file(s) {unknown}; its files: {[f.filename for f in ds.files]}"
        )
    return dict(value)


def _expected(ds: PublicDataset, given: dict[str, str], downloads: Path) -> dict[str, str]:
    expected, missing = {}, []
    for f in ds.files:
        sha = given.get(f.filename, f.sha256)
        sha = sha.strip().lower() if sha else None
        if f.sha256 is not None and sha != f.sha256:
            raise ChecksumError(
                f"{ds.name}: the given sha256 {sha} of {f.filename} contradicts the registry's {f.sha256}"
            )
        if sha is None:
            missing.append(f.filename)
        expected[f.filename] = sha
    if missing:
        args = " ".join(f"--sha256 {m}=HASH" for m in missing)
        raise UnknownChecksumError(
            f"{ds.name}: no checksum is published for {', '.join(missing)}, and tilesam never uses unverified "
            f"downloads. Download them yourself (urls: `tilesam datasets list`) into {downloads}/, check them, and "
            f"give their sha256 (`sha256sum`): `tilesam datasets fetch {ds.name} {args}` "
            f"(or fetch_dataset(..., sha256={{file: hash}}))"
        )
    return expected


def fetch_dataset(
    name: str,
    root: str | os.PathLike = ROOT,
    *,
    offline: bool | None = None,
    sha256: str | Mapping[str, str] | None = None,
    url: str | Mapping[str, str] | None = None,
    progress: bool = True,
) -> Path:
    """The converted dataset folder ``<root>/<name>``: downloaded, verified and converted if needed.

    A finished conversion (one with a dataset.json) is returned without network or hashing.
    ``offline`` None follows ``TILESAM_OFFLINE``. ``sha256`` / ``url`` are a str for single-file
    datasets or a mapping file name -> value; urls also follow ``$TILESAM_DATASETS_MIRROR``.
    """
    ds = lookup(name)
    root = Path(root)
    out = root / name
    done = out / "dataset.json"
    if done.is_file():
        _check_finished(ds, done)
        return out
    if out.exists():
        raise FileExistsError(f"{out} exists but has no dataset.json (not a finished conversion); delete it and retry")
    expected = _expected(ds, _per_file(sha256, ds, "sha256"), root / "downloads")
    urls = _per_file(url, ds, "url")
    mirror = os.environ.get(MIRROR_ENV, "").rstrip("/")
    paths = {}
    for f in ds.files:
        source = urls.get(f.filename) or (f"{mirror}/{f.filename}" if mirror else f.url)
        paths[f.filename] = _fetch_file(
            ds, f, root / "downloads" / f.filename, source, expected[f.filename], offline, progress
        )
    partial = root / f"{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # the leftover of an interrupted conversion
    (partial / "images").mkdir(parents=True)
    (partial / "labels").mkdir()
    membership = ds.convert(paths, partial)
    record = {
        "name": ds.name,
        "modality": ds.modality,
        "ndim": ds.ndim,
        "source": [{"file": f.filename, "url": f.url, "sha256": expected[f.filename]} for f in ds.files],
        "reference": ds.reference,
        "membership": {part: sorted(names) for part, names in membership.items()},
    }
    (partial / "dataset.json").write_text(json.dumps(record, indent=1))
    partial.rename(out)
    return out


def _fetch_file(
    ds: PublicDataset, f: RemoteFile, target: Path, source: str, expected: str, offline: bool | None, progress: bool
) -> Path:
    return fetch_verified(
        f.url,
        target,
        expected,
        what=f"{ds.name} file {f.filename}",
        offline=offline,
        progress=progress,
        source=source,
        hint=f", or run `tilesam datasets fetch {ds.name}` there",
    )


def _check_finished(ds: PublicDataset, done: Path) -> None:
    """A finished conversion of other files than the registry's (an older version) is not reused silently."""
    recorded = {s["file"]: s["sha256"] for s in json.loads(done.read_text())["source"]}
    for f in ds.files:
        if f.sha256 is not None and recorded.get(f.filename) != f.sha256:
            raise ChecksumError(
                f"{done.parent} was converted from {f.filename} with sha256 {recorded.get(f.filename)}, but the "
                f"registry now expects {f.sha256}: delete {done.parent} to convert the current version"
            )


def read_record(folder: str | os.PathLike) -> dict:
    """The dataset.json of a converted dataset."""
    return json.loads((Path(folder) / "dataset.json").read_text())


def datasets_table() -> list[dict[str, str]]:
    """One row per downloaded file of every dataset, for ``tilesam datasets list``."""
    return [
        {
            "name": d.name,
            "modality": d.modality,
            "ndim": str(d.ndim),
            "file": f.filename,
            "url": f.url,
            "sha256": f.sha256 or "none published",
        }
        for d in REGISTRY.values()
        for f in d.files
    ]
