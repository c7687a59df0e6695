"""Public datasets: registry facts, downloads from a real loopback server, conversion, splits, config."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from helpers.http_server import FileServer
from tilesam import cli
from tilesam.data import synthetic
from tilesam.data.datasets import DatasetError, images_of, split_from_files, split_names
from tilesam.data.public_datasets import MIRROR_ENV, REGISTRY, fetch_dataset
from tilesam.download import ChecksumError, OfflineError, UnknownChecksumError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
def root(tmp_path, monkeypatch, server) -> Path:
    """An empty datasets root; every dataset url points at the loopback server's /mirror/."""
    monkeypatch.setenv("TILESAM_CACHEDIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TILESAM_OFFLINE", raising=False)
    monkeypatch.setenv(MIRROR_ENV, server.url("/mirror"))
    return tmp_path / "datasets"


@pytest.fixture
def no_network(monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("offline mode opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def serve(server: FileServer, monkeypatch, name: str, files: dict[str, bytes], known: bool = True) -> None:
    """Serve ``files`` and make the registry expect their checksums (or none, like LIVECell)."""
    for filename, data in files.items():
        server.routes[f"/mirror/{filename}"] = (200, data)
    entry = REGISTRY[name]
    remote = tuple(
        dataclasses.replace(f, sha256=hashlib.sha256(files[f.filename]).hexdigest() if known else None)
        for f in entry.files
    )
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(entry, files=remote))


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tif(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, photometric="minisblack")
    return buffer.getvalue()


# --- the registry ---


def test_registry_has_the_published_urls_and_checksums():
    facts = {name: [(f.url, f.sha256) for f in entry.files] for name, entry in REGISTRY.items()}
    s3 = "https://livecell-dataset.s3.eu-central-1.amazonaws.com/LIVECell_dataset_2021"
    assert facts == {
        "dsb2018": [
            (
                "https://github.com/stardist/stardist/releases/download/0.1.0/dsb2018.zip",
                "e44921950edce378063aa4457e625581ba35b4c2dbd9a07c19d48900129f386f",
            )
        ],
        "lucchi": [
            (
                "http://www.casser.io/files/lucchi_pp.zip",
                "770ce9e98fc6f29c1b1a250c637e6c5125f2b5f1260e5a7687b55a79e2e8844d",
            )
        ],
        "isbi2012": [
            (
                "https://oc.embl.de/index.php/s/h0TkwqxU0PJDdMd/download",
                "0e10fe909a1243084d91773470856993b7d40126a12e85f0f1345a7a9e512f29",
            )
        ],
        "livecell": [(f"{s3}/images.zip", None)]
        + [(f"{s3}/annotations/LIVECell/livecell_coco_{p}.json", None) for p in ("train", "val", "test")],
    }
    assert {n: (d.modality, d.ndim) for n, d in REGISTRY.items()} == {
        "dsb2018": ("lm", 2),
        "lucchi": ("em_organelles", 3),
        "isbi2012": ("em_boundaries", 3),
        "livecell": ("lm", 2),
    }
    filenames = [f.filename for d in REGISTRY.values() for f in d.files]
    assert len(set(filenames)) == len(filenames)  # they share one downloads folder


def test_the_schema_offers_exactly_the_registered_datasets():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    source = schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]
    assert source["enum"] == [*synthetic.SOURCES, *REGISTRY]


def test_cli_lists_datasets_and_reports_errors_in_one_line(capsys, tmp_path):
    assert cli.main(["datasets", "list"]) == 0
    out = capsys.readouterr().out
    assert "none published" in out and REGISTRY["dsb2018"].files[0].sha256 in out
    assert cli.main(["datasets", "fetch", "dsb", "--root", str(tmp_path)]) == 1
    assert "Did you mean 'dsb2018'" in capsys.readouterr().err


# --- DSB2018: download, verification, conversion, reuse, offline ---


@pytest.fixture(scope="module")
def dsb_zip(shared_dir) -> tuple[bytes, dict[str, str]]:
    """A dsb2018.zip in StarDist's layout, from 4 real grayscale DSB2018 images (3 train, 1 test)."""
    folder = shared_dir / "data" / "dsb2018"
    names = [p.stem for p in sorted((folder / "images").glob("*.tif")) if tifffile.imread(p).ndim == 2][:4]
    parts = dict(zip(names, ["train", "train", "train", "test"]))
    members = {}
    for name, part in parts.items():
        members[f"dsb2018/{part}/images/{name}.tif"] = (folder / "images" / f"{name}.tif").read_bytes()
        members[f"dsb2018/{part}/masks/{name}.tif"] = (folder / "labels" / f"{name}.tif").read_bytes()
    return _zip(members), parts


def test_dsb2018_is_downloaded_verified_converted_and_reused(root, server, monkeypatch, dsb_zip, shared_dir):
    data, parts = dsb_zip
    serve(server, monkeypatch, "dsb2018", {"dsb2018.zip": data})
    out = fetch_dataset("dsb2018", root, progress=False)
    assert out == root / "dsb2018" and server.requests == ["/mirror/dsb2018.zip"]
    assert sorted(p.stem for p in (out / "images").glob("*.tif")) == sorted(parts)
    for name in parts:
        src = shared_dir / "data" / "dsb2018"
        np.testing.assert_array_equal(
            tifffile.imread(out / "images" / f"{name}.tif"), tifffile.imread(src / "images" / f"{name}.tif")
        )
        labels = tifffile.imread(out / "labels" / f"{name}.tif")
        np.testing.assert_array_equal(labels, tifffile.imread(src / "labels" / f"{name}.tif"))
        assert labels.dtype == np.uint16 and labels.max() > 1  # instance labels, not a mask
    record = json.loads((out / "dataset.json").read_text())
    assert record["modality"] == "lm" and record["ndim"] == 2
    assert record["source"] == [
        {"file": "dsb2018.zip", "url": REGISTRY["dsb2018"].files[0].url, "sha256": hashlib.sha256(data).hexdigest()}
    ]
    assert record["membership"] == {p: sorted(n for n, q in parts.items() if q == p) for p in ("train", "test")}
    assert sorted(p.name for p in root.iterdir()) == ["downloads", "dsb2018"]  # no .partial left

    assert fetch_dataset("dsb2018", root, progress=False) == out
    assert len(server.requests) == 1  # reused: no request


def test_a_finished_dataset_is_reused_offline_without_a_socket(root, server, monkeypatch, dsb_zip, no_network_later):
    serve(server, monkeypatch, "dsb2018", {"dsb2018.zip": dsb_zip[0]})
    out = fetch_dataset("dsb2018", root, progress=False)
    no_network_later()
    assert fetch_dataset("dsb2018", root, offline=True) == out


@pytest.fixture
def no_network_later(monkeypatch):
    def block() -> None:
        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("opened a network connection")

        monkeypatch.setattr(socket.socket, "connect", refuse)
        monkeypatch.setattr(socket, "create_connection", refuse)

    return block


def test_wrong_checksum_is_rejected_naming_the_file_and_nothing_is_converted(root, server, monkeypatch):
    serve(server, monkeypatch, "dsb2018", {"dsb2018.zip": b"the real archive"})
    server.routes["/elsewhere/archive.zip"] = (200, b"a corrupted or replaced archive")
    with pytest.raises(ChecksumError) as info:
        fetch_dataset("dsb2018", root, url=server.url("/elsewhere/archive.zip"), progress=False)
    message = str(info.value)
    assert server.requests == ["/elsewhere/archive.zip"]  # the url argument wins over the mirror
    assert "dsb2018 file dsb2018.zip" in message and server.url("/elsewhere/archive.zip") in message
    assert "deleted" in message
    assert not (root / "dsb2018").exists() and not (root / "dsb2018.partial").exists()
    assert list((root / "downloads").iterdir()) == []


@pytest.mark.parametrize("via_env", [True, False])
def test_offline_opens_no_socket_and_says_where_to_put_the_file(root, server, no_network, monkeypatch, via_env):
    if via_env:
        monkeypatch.setenv("TILESAM_OFFLINE", "1")
    with pytest.raises(OfflineError) as info:
        fetch_dataset("dsb2018", root, offline=None if via_env else True)
    message = str(info.value)
    assert str(root / "downloads" / "dsb2018.zip") in message and REGISTRY["dsb2018"].files[0].url in message
    assert server.requests == [] and not (root / "dsb2018").exists()


def test_an_interrupted_conversion_is_not_taken_as_finished(root, server, monkeypatch):
    volume = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    serve(server, monkeypatch, "isbi2012", {"isbi2012.h5": _h5(volume, volume.astype(np.uint32))})
    entry = REGISTRY["isbi2012"]

    def crash(files, out):
        tifffile.imwrite(out / "images" / "volume.tif", volume)
        raise KeyboardInterrupt  # killed half way

    monkeypatch.setitem(REGISTRY, "isbi2012", dataclasses.replace(entry, convert=crash))
    with pytest.raises(KeyboardInterrupt):
        fetch_dataset("isbi2012", root, progress=False)
    assert not (root / "isbi2012").exists() and (root / "isbi2012.partial").exists()
    monkeypatch.setitem(REGISTRY, "isbi2012", entry)
    out = fetch_dataset("isbi2012", root, progress=False)
    assert (out / "dataset.json").is_file() and not (root / "isbi2012.partial").exists()
    assert len(server.requests) == 1  # the verified download was kept


def _h5(raw: np.ndarray, labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f["raw"] = raw
        f["labels/gt_segmentation"] = labels
    return buffer.getvalue()


def test_isbi2012_becomes_one_volume(root, server, monkeypatch):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    labels = np.repeat(np.arange(4, dtype=np.uint64).reshape(1, 2, 2), 8, 1).repeat(8, 2).repeat(3, 0)
    serve(server, monkeypatch, "isbi2012", {"isbi2012.h5": _h5(raw, labels)})
    out = fetch_dataset("isbi2012", root, progress=False)
    np.testing.assert_array_equal(tifffile.imread(out / "images" / "volume.tif"), raw)
    converted = tifffile.imread(out / "labels" / "volume.tif")
    assert converted.dtype == np.uint16
    np.testing.assert_array_equal(converted, labels)
    assert json.loads((out / "dataset.json").read_text())["membership"] == {}


# --- Lucchi++: PNG slices -> volumes, binary masks -> 3D instances ---


def test_lucchi_slices_become_volumes_with_3d_instances(root, server, monkeypatch):
    n = 12  # 10.png must come after 9.png
    members = {}
    for prefix in ("Train", "Test"):
        for z in range(n):
            members[f"Lucchi++/{prefix}_In/mask{z:04d}.png"] = _png(np.full((20, 24), z, np.uint8))
            mask = np.zeros((20, 24), np.uint8)
            mask[2:6, 2:6] = 255  # one object through all sections
            if z >= 5:
                mask[10:15, 12:20] = 255  # another, from section 5 on
            if prefix == "Train":  # the archive's labels are RGBA
                mask = np.stack([mask, mask, mask, np.full_like(mask, 255)], axis=-1)
            members[f"Lucchi++/{prefix}_Out/{z}.png"] = _png(mask)
    serve(server, monkeypatch, "lucchi", {"lucchi_pp.zip": _zip(members)})
    out = fetch_dataset("lucchi", root, progress=False)
    for part in ("train", "test"):
        raw = tifffile.imread(out / "images" / f"{part}.tif")
        assert raw.shape == (n, 20, 24) and [int(raw[z, 0, 0]) for z in range(n)] == list(range(n))
        labels = tifffile.imread(out / "labels" / f"{part}.tif")
        assert sorted(np.unique(labels)) == [0, 1, 2]
        assert len(np.unique(labels[:, 3, 3])) == 1 and len(np.unique(labels[5:, 12, 15])) == 1  # same id in 3D
        assert (labels[:5, 10:15, 12:20] == 0).all()
    record = json.loads((out / "dataset.json").read_text())
    assert record["ndim"] == 3 and record["membership"] == {"train": ["train"], "test": ["test"]}


# --- LIVECell: no published checksum; COCO polygons -> instance labels ---


def _livecell_files() -> dict[str, bytes]:
    images, coco = {}, {}
    for i, part in enumerate(("train", "val", "test")):
        entries, annotations = [], []
        for j in range(2):
            name = f"A172_Phase_{part}_{j}.tif"
            folder = "livecell_test_images/A172" if part == "test" else "livecell_train_val_images"
            images[f"images/{folder}/{name}"] = _tif(np.full((30, 40), 10 * i + j, np.uint8))
            image_id = 100 * i + j
            entries.append({"id": image_id, "file_name": name, "height": 30, "width": 40})
            square = [2, 2, 12, 2, 12, 12, 2, 12]  # x, y pairs: a 10 x 10 square
            small = [6, 6, 9, 6, 9, 9, 6, 9]  # inside it: drawn last, so it stays visible
            annotations += [
                {"id": 10 * image_id, "image_id": image_id, "segmentation": [square], "area": 100},
                {"id": 10 * image_id + 1, "image_id": image_id, "segmentation": [small], "area": 9},
            ]
        coco[f"livecell_coco_{part}.json"] = json.dumps({"images": entries, "annotations": annotations}).encode()
    return {"livecell_images.zip": _zip(images), **coco}


def test_livecell_needs_explicit_checksums_then_converts_polygons(root, server, monkeypatch):
    files = _livecell_files()
    serve(server, monkeypatch, "livecell", files, known=False)
    with pytest.raises(UnknownChecksumError, match="no checksum is published for livecell_images.zip") as info:
        fetch_dataset("livecell", root, progress=False)
    assert "--sha256 livecell_coco_test.json=HASH" in str(info.value)
    assert server.requests == []
    with pytest.raises(ValueError, match="FILE=VALUE"):
        fetch_dataset("livecell", root, sha256="0" * 64)
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    out = fetch_dataset("livecell", root, sha256=hashes, progress=False)
    assert len(server.requests) == 4
    labels = tifffile.imread(out / "labels" / "A172_Phase_test_1.tif")
    assert labels.shape == (30, 40) and sorted(np.unique(labels)) == [0, 1, 2]
    assert labels[3, 3] == 1 and labels[7, 7] == 2 and labels[20, 20] == 0
    assert (labels == 1).sum() + (labels == 2).sum() > 90  # the square, filled
    assert tifffile.imread(out / "images" / "A172_Phase_val_1.tif")[0, 0] == 11
    record = json.loads((out / "dataset.json").read_text())
    assert record["membership"]["val"] == ["A172_Phase_val_0", "A172_Phase_val_1"]
    assert [s["sha256"] for s in record["source"]] == [hashes[f.filename] for f in REGISTRY["livecell"].files]
    # the published val is used as it is, not carved from train
    recs = images_of("lc", {"source": "livecell", "split": "val"}, base=root.parent, datasets_root=root.name)
    assert [r.name for r in recs] == ["A172_Phase_val_0", "A172_Phase_val_1"]


# --- splits ---


def test_fraction_splits_are_deterministic_disjoint_complete_and_sized():
    names = [f"img{i:03d}" for i in range(50)]
    parts = split_names("d", names, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    assert parts == split_names("d", list(reversed(names)), {"train": 0.7, "val": 0.1, "test": 0.2}, seed=3)
    assert [len(parts[p]) for p in ("train", "val", "test")] == [35, 5, 10]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == names
    assert all(parts[p] == sorted(parts[p]) for p in parts)
    assert split_names("d", names, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=4) != parts
    assert split_names("d", names, {"train": 0.5, "test": 0.5})["val"] == []
    with pytest.raises(DatasetError, match="'d'.*summing to 1"):
        split_names("d", names, {"train": 0.7, "val": 0.2, "test": 0.2})
    with pytest.raises(DatasetError, match="summing to 1"):
        split_names("d", names, {"train": 1.2, "val": -0.2})


def test_a_published_test_stays_test_and_val_is_carved_from_train():
    names = [f"n{i:02d}" for i in range(40)]
    membership = {"train": names[:32], "test": names[32:]}
    parts = split_names("d", names, {"train": 0.7, "val": 0.1, "test": 0.2}, seed=0, membership=membership)
    assert parts["test"] == names[32:]
    assert len(parts["val"]) == 4 and set(parts["val"]) <= set(names[:32])  # 0.1 / (0.7 + 0.1) of 32
    assert sorted(parts["train"] + parts["val"]) == names[:32]


def _dataset(tmp_path, names) -> dict:
    for name in names:
        for folder in ("raw", "gt"):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"{name}.tif", np.zeros((8, 8), np.uint8))
    return {"images": "raw/*.tif", "labels": "gt/*.tif"}


def test_images_of_restricts_a_glob_dataset_to_a_split(tmp_path):
    cfg = _dataset(tmp_path, [f"im{i}" for i in range(10)])
    by_part = {
        part: [r.name for r in images_of("d", {**cfg, "split": part, "split_seed": 1}, base=tmp_path)]
        for part in ("train", "val", "test")
    }
    assert [len(by_part[p]) for p in ("train", "val", "test")] == [7, 1, 2]
    assert sorted(sum(by_part.values(), [])) == [f"im{i}" for i in range(10)]
    assert len(images_of("d", cfg, base=tmp_path)) == 10
    with pytest.raises(DatasetError, match="'d'.*summing to 1"):
        images_of("d", {**cfg, "split_fractions": {"train": 0.5}}, base=tmp_path)
    with pytest.raises(DatasetError, match="'d': its val split is empty"):
        images_of("d", {**cfg, "split": "val", "split_fractions": {"train": 0.8, "test": 0.2}}, base=tmp_path)


def test_file_list_splits(tmp_path):
    cfg = _dataset(tmp_path, ["a", "b", "c", "d"])
    (tmp_path / "test.txt").write_text("# held out\nb\n\nd.tif\n")
    (tmp_path / "val.txt").write_text("a\n")
    cfg["split_files"] = {"test": "test.txt", "val": "val.txt"}
    assert [r.name for r in images_of("x", {**cfg, "split": "test"}, base=tmp_path)] == ["b", "d"]
    assert [r.name for r in images_of("x", {**cfg, "split": "val"}, base=tmp_path)] == ["a"]
    with pytest.raises(DatasetError, match="'x': its train split is empty"):
        images_of("x", {**cfg, "split": "train"}, base=tmp_path)
    (tmp_path / "val.txt").write_text("a\nzzz\n")
    with pytest.raises(DatasetError, match=r"'x': split file .*val\.txt names images that do not exist: zzz"):
        images_of("x", {**cfg, "split": "test"}, base=tmp_path)
    with pytest.raises(DatasetError, match="'b' is in both the test and val files"):
        split_from_files("x", ["a", "b", "c", "d"], {"test": tmp_path / "test.txt", "val": tmp_path / "test.txt"})
    with pytest.raises(DatasetError, match=r"split file .*nope\.txt \(train\) does not exist"):
        images_of("x", {**cfg, "split_files": {"train": "nope.txt"}}, base=tmp_path)


# --- the config path: images_of with a public source ---


def test_images_of_a_public_source(root, server, monkeypatch, dsb_zip):
    serve(server, monkeypatch, "dsb2018", {"dsb2018.zip": dsb_zip[0]})
    base, sub = root.parent, root.name
    test = images_of("dsb_test", {"source": "dsb2018", "split": "test", "ndim": 2}, base=base, datasets_root=sub)
    assert [r.name for r in test] == [n for n, p in dsb_zip[1].items() if p == "test"]
    assert test[0].image == str(root / "dsb2018" / "images" / f"{test[0].name}.tif")
    assert test[0].labels.endswith(f"labels/{test[0].name}.tif") and test[0].ndim == 2
    halves = {"train": 0.4, "val": 0.4, "test": 0.2}  # val: 0.4 / (0.4 + 0.4) of the 3 published train images
    cfg = {"source": "dsb2018", "split_fractions": halves}
    train = images_of("dsb_train", {**cfg, "split": "train"}, base=base, datasets_root=sub)
    val = images_of("dsb_val", {**cfg, "split": "val"}, base=base, datasets_root=sub)
    assert (len(train), len(val)) == (1, 2)
    assert len({r.name for r in train + val + test}) == 4
    with pytest.raises(DatasetError, match="modality em_boundaries contradicts dsb2018's lm"):
        images_of("d", {"source": "dsb2018", "modality": "em_boundaries"}, base=base, datasets_root=sub)


def test_public_source_errors_name_the_dataset(tmp_path, no_network, monkeypatch):
    monkeypatch.delenv("TILESAM_OFFLINE", raising=False)
    with pytest.raises(DatasetError, match=r"dataset 'em' \(source: lucchi\): .*offline.*downloads/lucchi_pp\.zip"):
        images_of("em", {"source": "lucchi"}, base=tmp_path, offline=True)
    with pytest.raises(DatasetError, match=r"dataset 'x' \(source: lucchy\): unknown public dataset.*'lucchi'"):
        images_of("x", {"source": "lucchy"}, base=tmp_path)
    with pytest.raises(DatasetError, match=r"dataset 'lc' \(source: livecell\): livecell: no checksum is published"):
        images_of("lc", {"source": "livecell"}, base=tmp_path)
