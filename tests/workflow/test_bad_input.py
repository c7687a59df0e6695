"""Bad input, tried as a demanding new user would: each case must end in a clear message that names the
file (or config key) and the fault, and nothing that existed before may change or vanish.

Planning cases run `snakemake -n` (the plan reads headers only, so they take seconds); the cases that need
jobs share one tiny run, which also runs a checkpoint path and a dataset glob with spaces end to end. That
checkpoint has an instance decoder (fitted on the run's image, helpers.decoder_fit) and the run asks for
`methods: [amg, auto]`, so the same run is the workflow's AIS test (`test_amg_and_auto_give_amg_and_ais_rows`):
one Snakemake run instead of two. Config files with a YAML tag or a YTE template are dry runs too; the
model cases (a checkpoint overwritten, a model record edited, a block store another process writes) run a
user's checkpoint file in two folders (`checkpoint_run`, `locked_run`), and images without objects one more.
The last test prints "N tried / N clear errors / 0 silent results / 0 data lost" for the cases that ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
import yaml
import zarr

from helpers.checkpoints import write_zip_bomb
from helpers.decoder_fit import demo_image, fit_decoder
from helpers.snakemake_cli import REPO, job_counts, snakemake, write_config
from tilesam import cli
from tilesam.data import ome, stores, synthetic
from tilesam.metrics import segmentation_scores
from tilesam.models import fetch
from tilesam.models.spec import model_id, resolve_spec
from tilesam.report import figures

IMAGE = synthetic.SyntheticSpec("a", (96, 120), 6, (9.0, 16.0), seed=2)
BASE = {
    "datasets": {"d": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
    "models": ["lite_medsam"],
    "baseline": {"classical": False},  # one model row: what the cases check
    "device": "cpu",
    "segmentation": {
        "tile_shape": [128, 128],
        "halo": [16, 16],
        "amg": {"prompt": "box", "box_sizes": [0.24], "points_per_side": 2},
    },
    "evaluation": {"prompts": []},
}
PROFILE = str(REPO / "workflow/profiles/default")


@dataclass
class Outcome:
    case: str
    clear: (
        bool  # the message names the file (or key) and the fault; or, where the right answer is a result, it is right
    )
    lost: list[str] = field(default_factory=list)  # files that existed before and changed or vanished
    silent: bool = False  # a wrong result without a word


OUTCOMES: list[Outcome] = []


def _fingerprints(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` but Snakemake's own bookkeeping (.snakemake/) and the block stores'
    write locks (`<store>.lock`: the pid of the job that holds it, no data)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".snakemake" not in p.relative_to(root).parts and p.suffix != ".lock"
    }


def _lost(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [path for path, digest in before.items() if after.get(path) != digest]


def _workdir(tmp_path: Path, earlier: str = "results/benchmark/table.csv") -> Path:
    """A run folder with one good labelled image and a result of an earlier run that must survive."""
    synthetic.write_demo(IMAGE, tmp_path / "data/images/a.tif", tmp_path / "data/labels/a.tif")
    earlier = tmp_path / earlier
    earlier.parent.mkdir(parents=True)
    earlier.write_text("dataset,model,method,mSA\nd,lite_medsam,amg,0.5\n")
    return tmp_path


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _as(w: Path, name: str, key: str | None = None) -> dict:
    """The run folder's image written as `data/images/<name>` instead (PNG, HDF5 or zarr), without labels;
    the config changes that make it the dataset."""
    pixels, path = tifffile.imread(w / "data/images/a.tif"), w / "data/images" / name
    (w / "data/images/a.tif").unlink()
    if name.endswith(".png"):
        iio.imwrite(path, pixels)
    elif name.endswith(".h5"):
        with h5py.File(path, "w") as f:
            f[key] = pixels
    else:
        zarr.create_array(str(path), shape=pixels.shape, chunks=(32, 32), dtype=pixels.dtype)[:] = pixels
    return {"datasets": {"d": {"images": f"data/images/*{Path(name).suffix}", "labels": None, "key": key}}}


def _zarr_chunk(w: Path) -> Path:
    return w / "data/images/a.zarr/c/1/1"


def _merge(base: dict, changes: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in changes.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# case: (prepare the run folder -> config changes, what the console must show: the file or key, and the fault)
Prepare = Callable[[Path], dict]
PLANNING: dict[str, tuple[Prepare, list[str]]] = {
    "config key typo": (lambda w: {"segmentation": {"tile_shap": [64, 64]}}, ["tile_shap", "not allowed"]),
    "config value of the wrong type": (lambda w: {"segmentation": {"tiles_per_block": "many"}}, ["'many'", "integer"]),
    "unknown model": (lambda w: {"models": ["vit_q"]}, ["vit_q", "config error in models"]),
    "wrong dimensionality": (
        lambda w: (
            tifffile.imwrite(w / "data/images/a.tif", np.zeros((2, 3, 96, 120), np.uint8), photometric="minisblack")
            or {}
        ),
        ["data/images/a.tif", "is not a 2D image"],
    ),
    "truncated TIFF": (lambda w: _cut(w / "data/images/a.tif") or {}, ["data/images/a.tif", "truncated or corrupt"]),
    "file that is no TIFF": (
        lambda w: (w / "data/images/a.tif").write_bytes(b"\x00garbage" * 64) and {},
        ["data/images/a.tif", "cannot be read as TIFF"],
    ),
    "labels of another shape": (
        lambda w: tifffile.imwrite(w / "data/labels/a.tif", np.zeros((96, 121), np.uint16)) or {},
        ["data/labels/a.tif", "do not match image"],
    ),
    "labels that are not integers": (
        lambda w: tifffile.imwrite(w / "data/labels/a.tif", np.zeros((96, 120), np.float32)) or {},
        ["data/labels/a.tif", "must be integers"],
    ),
    "image named '..' by the glob '.*.tif'": (
        lambda w: (
            shutil.copy(w / "data/images/a.tif", w / "data/images/...tif")
            and {"datasets": {"d": {"images": "data/images/.*.tif", "labels": None}}}
        ),
        ["data/images/...tif", "not a safe file name"],
    ),
    "truncated PNG": (
        lambda w: _as(w, "a.png") | (_cut(w / "data/images/a.png") or {}),
        ["data/images/a.png", "truncated or corrupt PNG"],
    ),
    "truncated HDF5": (
        lambda w: _as(w, "a.h5", "raw") | (_cut(w / "data/images/a.h5") or {}),
        ["data/images/a.h5", "truncated or corrupt HDF5"],
    ),
    "zarr image with a chunk cut short": (
        lambda w: _as(w, "a.zarr") | (_cut(_zarr_chunk(w)) or {}),
        ["data/images/a.zarr", "truncated or corrupt zarr array: chunk c/1/1"],
    ),
    "zarr image with corrupt metadata": (
        lambda w: _as(w, "a.zarr") | ((w / "data/images/a.zarr/zarr.json").write_text('{"zarr_fo') and {}),
        ["data/images/a.zarr", "corrupt zarr metadata"],
    ),
    "halo larger than the tile": (
        lambda w: {"segmentation": {"tile_shape": [64, 64], "halo": [80, 80]}},
        ["segmentation.halo", "larger than tile_shape"],
    ),
    "absolute glob that matches nothing": (
        lambda w: {"datasets": {"d": {"images": str(w / "elsewhere/*.tif"), "labels": None}}},
        ["elsewhere/*.tif", "matches no file (there is no folder"],
    ),
    "4-page stack with the default ndim 2 (was read as RGB)": (
        lambda w: (
            tifffile.imwrite(w / "data/images/a.tif", np.ones((4, 96, 120), np.uint8), photometric="minisblack") or {}
        ),
        ["data/images/a.tif", "4 grayscale pages", "Set `ndim: 3`"],
    ),
    "labels with negative values (failed after embed, segment, stitch)": (
        lambda w: tifffile.imwrite(w / "data/labels/a.tif", np.full((96, 120), -1, np.int16)) or {},
        ["data/labels/a.tif", "labels have negative values"],
    ),
    "two labels files of one name (one was picked)": (
        lambda w: (
            iio.imwrite(w / "data/labels/a.png", tifffile.imread(w / "data/labels/a.tif").astype(np.uint8))
            or {"datasets": {"d": {"labels": "data/labels/*"}}}
        ),
        ["data/labels/a.png", "data/labels/a.tif", "are both labels named 'a'"],
    ),
    "a 1.5 MB checkpoint whose pickle inflates to 1.5 GB (read whole at planning: 3.4 GB, 50 s)": (
        lambda w: (
            write_zip_bomb(w / "bomb.pth", 1536 * 2**20)
            and {"models": [str(w / "bomb.pth")], "segmentation": {"methods": ["auto"]}}
        ),
        ["bomb.pth", "archive/data.pkl", "is this file a PyTorch checkpoint"],
    ),
    "one labels file of another name (was paired)": (
        lambda w: (w / "data/labels/a.tif").rename(w / "data/labels/cells.tif") and {},
        ["data/images/a.tif", "has no labels named 'a'", "data/labels/cells.tif"],
    ),
}


def _record(case: str, clear: bool, before: dict[str, str], workdir: Path) -> Outcome:
    OUTCOMES.append(Outcome(case, clear, _lost(before, _fingerprints(workdir))))
    return OUTCOMES[-1]


@pytest.mark.parametrize("case", list(PLANNING))
def test_planning_stops_a_bad_input_naming_the_file_and_the_fault(case, tmp_path):
    prepare, expected = PLANNING[case]
    workdir = _workdir(tmp_path)
    config = _merge(BASE, prepare(workdir))
    config["datasets"]["d"] = {k: v for k, v in config["datasets"]["d"].items() if v is not None}
    write_config(workdir, config)
    before = _fingerprints(workdir)
    result = snakemake(workdir, "-n", check=False)
    console = result.stdout + result.stderr
    clear = result.returncode != 0 and all(text in console for text in expected) and "Traceback" not in console
    outcome = _record(case, clear, before, workdir)
    assert clear, f"{case}: wanted {expected} on the console, got:\n{console[-3000:]}"
    assert not outcome.lost
    assert not (workdir / "results/images").exists()


#: a tag that runs code when read by an unsafe loader (`ran` appears if it did); Snakemake's message for it
APPLY = 'offline: !!python/object/apply:os.system ["touch {marker}"]'
SNAKEMAKES = "Config file is not valid JSON or YAML"
# case: (the config file, relative to the run folder: config/config.yaml or a --configfile; the lines added
# to it; what the console must show)
YAML_TAGS: dict[str, tuple[str, str, list[str]]] = {
    "YAML tag that would run code, in config/config.yaml (was 'not valid JSON or YAML ... tabs')": (
        "config/config.yaml",
        APPLY,
        ["config error in config/config.yaml, line", "the YAML tag !!python/object/apply:os.system is not allowed"],
    ),
    "YAML python/name tag in a --configfile (Snakemake's loader takes it)": (
        "run.yaml",
        "offline: !!python/name:os.system",
        ["run.yaml, line", "the YAML tag !!python/name:os.system is not allowed"],
    ),
    # Snakemake evaluates a YTE template's `?` expressions as Python when it reads the file: the Snakefile checks
    # config/config.yaml first; a --configfile's run as Snakemake parses its arguments (below), before any
    # tilesam code, which then stops the run with this message (not a row: code has run by then).
    "YTE template in config/config.yaml (Snakemake runs its `?` expressions)": (
        "config/config.yaml",
        "__use_yte__: true\noffline: ?__import__('os').system('touch {marker}') == 1",
        ["config error in config/config.yaml: __use_yte__ makes it a YTE template"],
    ),
    # Snakemake reads a --configfile as it parses its arguments, before the Snakefile or any tilesam code
    # (snakemake/cli.py:2168 ConfigSettings -> settings/types.py:416 -> common/configfile.py:24-30: yte's
    # FullLoader refuses the tag, and the ConstructorError becomes this fixed message): all a run can show.
    "YAML tag that would run code, in a --configfile (Snakemake's own message: an error, no code run)": (
        "run.yaml",
        APPLY,
        [SNAKEMAKES],
    ),
}


@pytest.mark.parametrize("case", list(YAML_TAGS))
def test_a_yaml_tag_or_template_in_a_config_file_runs_no_code_and_is_an_error(case, tmp_path):
    name, lines, expected = YAML_TAGS[case]
    workdir, marker = _workdir(tmp_path), tmp_path / "ran"
    write_config(workdir, BASE)
    config = workdir / name
    if not config.exists():
        config.write_text(yaml.safe_dump(BASE))
    with config.open("a") as f:
        f.write(lines.format(marker=marker) + "\n")
    before = _fingerprints(workdir)
    args = () if name == "config/config.yaml" else ("--configfile", str(config))
    result = snakemake(workdir, "-n", *args, check=False)
    console = result.stdout + result.stderr
    clear = (
        result.returncode != 0
        and all(text in console for text in expected)
        and not marker.exists()
        and "Traceback" not in console
        and ("tab indentation" not in console or SNAKEMAKES in expected)  # only Snakemake's own message says "tab"
    )
    outcome = _record(case, clear, before, workdir)
    outcome.silent = marker.exists() and result.returncode == 0  # code ran, and the run went on
    assert not marker.exists(), "reading the config ran code"
    assert clear, f"{case}: wanted {expected} on the console, got:\n{console[-3000:]}"
    assert not outcome.lost


#: the run's AIS settings: the fitted decoder's distances are compressed (helpers.decoder_fit), so looser seeds
AIS = {"min_size": 10, "center_distance_threshold": 0.55, "boundary_distance_threshold": 0.6}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, lite_medsam, request):
    """One tiny run (a checkpoint path and a dataset folder with spaces, one 256 x 256 tile), with two bad
    things in it: a NaN image in a second dataset, and the partial embedding store of an interrupted run of
    another model where this run's store goes. Runs with the default profile and --keep-going.

    The checkpoint is LiteMedSAM plus an instance decoder fitted on the image (helpers.decoder_fit, cached
    between sessions: tests/models/test_decoder_fit.py fits the same one), and the methods are amg and
    auto, so the run also segments with AIS. Returns the work folder, the embedding store, what was lost,
    the run's result and the dry run's output before it."""
    workdir = _workdir(tmp_path_factory.mktemp("bad run"), "results/earlier/table.csv")  # one the run does not write
    image, labels = demo_image()  # 256 x 256, one tile: the decoder's maps cost the most here
    tifffile.imwrite(workdir / "data/images/a.tif", image)
    tifffile.imwrite(workdir / "data/labels/a.tif", labels)
    shutil.move(workdir / "data", workdir / "my data")
    nan = np.ones((64, 64), np.float32)
    nan[5, 5] = np.nan
    (workdir / "nan").mkdir()
    tifffile.imwrite(workdir / "nan/n.tif", nan)
    model = workdir / "check points/my model.pth"
    fit_decoder(lite_medsam, image, labels, out=model, cache_dir=request.config.cache.mkdir("decoder_fit"))
    config = _merge(
        BASE,
        {
            "models": [str(model)],  # (auto without a decoder: tests/test_plan_ais.py)
            "segmentation": {"methods": ["amg", "auto"], "tile_shape": [256, 256], "halo": [0, 0], "ais": AIS},
        },
    )
    config["datasets"] = {
        "d": {"images": "my data/images/*.tif", "labels": "my data/labels/*.tif"},
        "nan": {"images": "nan/*.tif"},
    }
    write_config(workdir, config)
    planned = snakemake(workdir, "-n").stdout
    (store,) = set(re.findall(r"results/embeddings/d/a/[^,\n]+/block0\.zarr", planned))
    stale = stores.open_partial(workdir / store, "embeddings", {"encoder_sha256": "vit_b-encoder", "block": 0}, 1)
    stale.create_array("embeddings", shape=(1, 4), dtype="f4", fill_value=2.5)
    stale["done"][0] = True
    stores.unlock(workdir / store)  # the run's job (another process) takes the store's lock next
    before = _fingerprints(workdir)
    profile = str(REPO / "workflow/profiles/default")
    result = snakemake(workdir, "--profile", profile, "--keep-going", check=False)
    after = _fingerprints(workdir)
    partial = str(stores.partial_path(store))
    for aside in (workdir / store).parent.glob("block0.zarr.stale-*"):  # moved, not lost, if all is still there
        after.update({f"{partial}/{k}": v for k, v in _fingerprints(aside).items()})
    return workdir, store, _lost(before, after), result, planned


def _outcome(case: str, clear: bool, lost: list[str]) -> Outcome:
    OUTCOMES.append(Outcome(case, clear, lost))
    return OUTCOMES[-1]


@pytest.mark.slow
def test_a_nan_image_fails_its_import_job_and_the_console_shows_why(bad_run):
    _, _, lost, result, _ = bad_run
    console = result.stdout + result.stderr
    clear = result.returncode != 0 and "nan/n.tif: 1 NaN or infinite values" in console  # the job's log, shown
    _outcome("NaN image (a job fails)", clear, lost)
    assert clear, console[-4000:]
    assert not lost, lost


@pytest.mark.slow
def test_a_partial_store_of_another_model_is_moved_aside_and_the_run_goes_on(bad_run):
    workdir, store, lost, _, _ = bad_run
    aside = sorted((workdir / store).parent.glob("block0.zarr.stale-*"))
    logs = "".join(p.read_text() for p in (workdir / "logs/embed/d/a").rglob("*.log"))
    partial = str(stores.partial_path(store))
    clear = (
        len(aside) == 1
        and partial in logs
        and "encoder_sha256: store has 'vit_b-encoder'" in logs
        and aside[0].name in logs
    )
    _outcome("partial store of other parameters (moved aside, logged)", clear, lost)
    assert clear, logs[-3000:]
    assert not lost, lost
    assert not (workdir / partial).exists()  # this run's own partial store was finished


@pytest.mark.slow
def test_paths_with_spaces_run_end_to_end(bad_run):
    """A checkpoint path and a dataset glob with spaces reach the last job (the benchmark table, the figure)."""
    workdir, _, _, result, _ = bad_run
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    # the file stem, made a safe id, plus its path hash; one image (the NaN dataset has no labels)
    assert len(table) == 2 and table.model.str.startswith("my_model-").all() and (table.n_images == 1).all()
    assert (workdir / "results/benchmark/qualitative_d.png").stat().st_size > 0
    assert "2 names for 1 results" not in result.stdout + result.stderr


@pytest.mark.slow
def test_amg_and_auto_give_amg_and_ais_rows(bad_run):
    """A checkpoint with an instance decoder and `methods: [amg, auto]`: both methods from one embedding,
    and AIS finds the objects the decoder was fitted on."""
    workdir, _, _, _, planned = bad_run
    dec = model_id(resolve_spec(str(workdir / "check points/my model.pth")))
    # dataset d: one embedding, two methods (the NaN dataset's jobs are planned too, by the same rules)
    assert set(re.findall(r"results/segmentation/d/a/[^,\n]+/(\w+)/block0\.zarr", planned)) == {"amg", "ais"}
    assert set(re.findall(r"results/evaluation/d/a/([^,\n]+)\.json", planned)) == {f"{dec}/amg", f"{dec}/ais"}
    assert job_counts(planned)["embed"] == 2  # d/a and nan/n, one each
    table = pd.read_csv(workdir / "results/benchmark/table.csv")
    assert list(zip(table.model, table.method)) == [(dec, "ais"), (dec, "amg")]
    ais = table[table.method == "ais"].iloc[0]
    assert ais.n_images == 1 and ais.n_objects == table.n_objects.iloc[0] > 0
    assert ais.mSA > 0.1 and ais.segment_s_per_image > 0  # the fitted decoder's objects are found
    params = json.loads(ais.params)
    assert params["min_size"] == 10 and params["center_distance_threshold"] == 0.55
    assert params["distance_smoothing"] == 1.6 and len(params["decoder"]) == 64  # the decoder state's sha256
    assert "prompt" in json.loads(table[table.method == "amg"].params.iloc[0])
    assert (workdir / f"results/segmentation/d/a/{dec}/ais/labels.ome.zarr").is_dir()
    assert "ais" in (workdir / "results/benchmark/table.md").read_text()
    assert (workdir / "results/benchmark/msa_bars.png").stat().st_size > 0


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory):
    """One tiny run of two scored images that say nothing: `blank` has ground truth without an object (it
    scored mSA 1.0 and lifted the mean), `flat` is a constant image. Returns the folder, what was lost, the run."""
    workdir = _workdir(tmp_path_factory.mktemp("empty run"), "results/earlier/table.csv")
    images, labels = workdir / "data/images", workdir / "data/labels"
    (images / "a.tif").rename(images / "blank.tif")
    tifffile.imwrite(labels / "blank.tif", np.zeros((96, 120), np.uint16))
    tifffile.imwrite(images / "flat.tif", np.full((96, 120), 9, np.uint8))
    (labels / "a.tif").rename(labels / "flat.tif")
    write_config(workdir, BASE)
    before = _fingerprints(workdir)
    result = snakemake(workdir, "--profile", str(REPO / "workflow/profiles/default"), "--keep-going", check=False)
    return workdir, _lost(before, _fingerprints(workdir)), result


@pytest.mark.slow
def test_ground_truth_without_objects_fails_the_table_naming_the_image(empty_run):
    workdir, lost, result = empty_run
    console = result.stdout + result.stderr
    clear = (
        result.returncode != 0
        and "ground truth with no labelled object: dataset 'd', image 'blank'" in console
        and "empty_labels: exclude" in console
    )
    silent = (workdir / "results/benchmark/table.csv").exists()  # a table with its mean lifted
    _outcome("ground truth without objects (scored 1.0)", clear, lost).silent = silent
    assert clear and not silent, console[-4000:]
    assert not lost, lost


@pytest.mark.slow
def test_a_constant_image_is_a_warning_in_its_import_log(empty_run):
    workdir, lost, _ = empty_run
    logs = "".join(p.read_text() for p in (workdir / "logs").rglob("*.log") if "import_image" in str(p))
    clear = "data/images/flat.tif: constant image (every pixel 9)" in logs
    _outcome("constant image (ran without a word)", clear, lost)
    assert clear, logs[-3000:]


def _checkpoint_folder(workdir: Path) -> Path:
    """A run folder whose model is the user's own checkpoint file (LiteMedSAM's weights as a state dict), with
    box prompts scored too: box mSA is the score a changed checkpoint changes (AMG finds nothing here)."""
    _workdir(workdir, "results/earlier/table.csv")
    torch.save(torch.load(fetch("lite_medsam"), weights_only=True), workdir / "model.pth")
    write_config(workdir, _merge(BASE, {"models": [str(workdir / "model.pth")], "evaluation": {"prompts": ["box"]}}))
    return workdir


SCORES = ["method", "n_images", "n_objects", "mSA", "SA50", "SA75", "precision", "recall", "f1"]


@pytest.fixture(scope="module")
def checkpoint_run(tmp_path_factory):
    """A finished run of a checkpoint file: the folder and its table."""
    workdir = _checkpoint_folder(tmp_path_factory.mktemp("checkpoint run"))
    snakemake(workdir, "--profile", PROFILE)
    return workdir, pd.read_csv(workdir / "results/benchmark/table.csv")


def _add_copy(workdir: Path, name: str) -> None:
    """A second image identical to `a` (and its labels): the same weights must score it the same."""
    for folder in ("data/images", "data/labels"):
        shutil.copy(workdir / folder / "a.tif", workdir / folder / f"{name}.tif")


@pytest.mark.slow
def test_a_checkpoint_overwritten_at_its_path_is_a_new_model_and_everything_is_made_again(checkpoint_run):
    """New weights saved over the checkpoint, and an image added: the rerun said "Nothing to be done" for the
    old image and scored the new one with the new weights under the old id (box mSA 0.971 and 0.570 for two
    identical images in one row). Now the file's content is its id: both images are scored with the new
    weights, under a new id; the old id's results stay where they were."""
    workdir, table = checkpoint_run
    model = workdir / "model.pth"
    state = torch.load(model, weights_only=True)
    generator = torch.Generator().manual_seed(0)
    for key in state:  # a retrained mask decoder, as a finetuning run would save it
        if key.startswith("mask_decoder.transformer"):
            state[key] = state[key] + 0.01 * torch.randn(state[key].shape, generator=generator)
    torch.save(state, model)
    _add_copy(workdir, "b")
    before = _fingerprints(workdir)
    result = snakemake(workdir, "--profile", PROFILE, check=False)
    after = _fingerprints(workdir)
    new = pd.read_csv(workdir / "results/benchmark/table.csv")
    per_image = pd.read_csv(workdir / "results/benchmark/per_image.csv").set_index(["image", "method"])
    new_id = model_id(resolve_spec(str(model)))
    clear = (
        result.returncode == 0
        and new_id != table.model.iloc[0]
        and set(new.model) == {new_id}
        and (new.n_images == 2).all()
        and all(per_image.loc[("a", m), "mSA"] == per_image.loc[("b", m), "mSA"] for m in ("amg", "box"))
        and per_image.loc[("a", "box"), "mSA"] != table.set_index("method").loc["box", "mSA"]  # the new weights
        and (workdir / f"resources/models/{new_id}.json").exists()
    )
    # the table and its figures are this run's targets, made again by design; nothing else may change
    remade = ("results/benchmark/", "logs/benchmark_table.log", "logs/qualitative_figure/")
    lost = [p for p in _lost(before, after) if not p.startswith(remade)]
    outcome = _outcome("checkpoint overwritten at its path, an image added (old id, old table)", clear, lost)
    outcome.silent = result.returncode == 0 and not clear
    assert clear, (result.stdout + result.stderr)[-3000:] + f"\n{new}\n{per_image[['model', 'mSA']]}"
    assert not lost, lost


#: an orphaned job: a process that holds a block store's write lock (flock on `<store>.lock`, its pid in it)
_HOLDER = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
    "os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); time.sleep(3600)"
)


@pytest.fixture(scope="module")
def locked_run(tmp_path_factory):
    """The checkpoint run's inputs in a fresh folder, run while another process (as a job orphaned by a killed
    snakemake would) holds the write lock of the embedding store the run's embed job writes; then that process
    is stopped, as the message says, and the run is made again. Returns the folder, the store, the holder's
    pid, what the locked run lost, whether its job left a partial store, and both runs' results."""
    workdir = _checkpoint_folder(tmp_path_factory.mktemp("locked run"))
    planned = snakemake(workdir, "-n").stdout
    (store,) = set(re.findall(r"results/embeddings/d/a/[^,\n]+/block0\.zarr", planned))
    lock = workdir / f"{store}.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = _fingerprints(workdir)
        locked = snakemake(workdir, "--profile", PROFILE, check=False)
        lost = _lost(before, _fingerprints(workdir))
        partial = (workdir / stores.partial_path(store)).exists()
    finally:
        holder.kill()
        holder.wait()
    rerun = snakemake(workdir, "--profile", PROFILE, check=False)
    return workdir, store, holder.pid, lost, partial, locked, rerun


@pytest.mark.slow
def test_a_store_another_process_writes_stops_the_job_saying_what_to_do(locked_run, checkpoint_run):
    """Only snakemake killed, not its jobs: an orphaned job and the rerun's job wrote the same block store
    (a KeyError traceback). Now the rerun's job stops, naming the writer and what to do, and writes nothing;
    once that writer is gone the run completes with the scores of a run that was never in the way."""
    workdir, store, pid, lost, partial, locked, rerun = locked_run
    console = locked.stdout + locked.stderr
    table = pd.read_csv(workdir / "results/benchmark/table.csv") if rerun.returncode == 0 else None
    clear = (
        locked.returncode != 0
        and f"{store} is being written by another process (pid {pid})" in console
        and f"stop it (kill {pid}), then rerun; nothing was written" in console
        and not partial
        and rerun.returncode == 0
        and table[SCORES].equals(checkpoint_run[1][SCORES])
    )
    _outcome("store written by an orphaned job (interleaved tiles, KeyError)", clear, lost)
    assert clear, console[-3000:] + (rerun.stdout + rerun.stderr)[-2000:]
    assert not lost, lost


class _Runs:
    """Unpickling this runs code: it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _write_keeping_mtime(path: Path, data: dict, stat: os.stat_result) -> None:
    """Write a JSON file with the mtime of `stat` (see the test below)."""
    path.write_text(json.dumps(data, indent=1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.slow
def test_an_edited_model_record_is_refused_naming_the_record_and_the_config(locked_run):
    """The model record under resources/models/ was trusted over the config: its `load` and `trust_pickle` edited
    made a later run unpickle a file that ran code (rc 0), and an edited `sha256` was accepted and written into
    the stores. Now each model job checks the record against the config and the file, and stops naming both.

    The edits keep the record's mtime and an image is added, so that what stops the run is that check of
    the record by the new image's jobs (the images added later of the issue): Snakemake's mtime rule would
    otherwise rerun every job made from the record, removing their results first as for any changed input."""
    workdir, store, *_ = locked_run
    model = store.split("/")[4]
    record = f"resources/models/{model}.json"
    original, stat = json.loads((workdir / record).read_text()), (workdir / record).stat()
    evil, marker = workdir / "evil.pth", workdir / "ran"
    evil.write_bytes(pickle.dumps({"model_state": _Runs(marker)}))
    _add_copy(workdir, "c")
    wanted = {
        "load": f"model record {record}: load is {str(evil)!r}, but the config gives {str(workdir / 'model.pth')!r}",
        "sha256": f"model record {record}: sha256 is {'0' * 64}, but {workdir / 'model.pth'} has ",
    }
    edits = {
        "load": {"load": str(evil), "path": str(evil), "trust_pickle": True, "xxh128": {str(evil): "0" * 32}},
        "sha256": {"sha256": "0" * 64},
    }
    before = {path: digest for path, digest in _fingerprints(workdir).items() if path != record}  # edited here
    clear, consoles = True, []
    for key, changes in edits.items():
        _write_keeping_mtime(workdir / record, {**original, **changes}, stat)
        result = snakemake(workdir, "--profile", PROFILE, check=False)
        consoles.append(result.stdout + result.stderr)
        clear &= result.returncode != 0 and wanted[key] in consoles[-1] and not marker.exists()
    lost = _lost(before, _fingerprints(workdir))
    outcome = _outcome("model record edited: load and trust_pickle (ran code), sha256 (accepted)", clear, lost)
    outcome.silent = marker.exists()
    assert not marker.exists(), "the edited record made a job unpickle a file that runs code"
    assert clear, "\n".join(c[-2500:] for c in consoles)
    assert not lost, lost


def _labels_store(path: Path, labels: np.ndarray) -> Path:
    ome.create(path, labels.shape, labels.dtype, (64, 64))[:] = labels
    return path


def test_export_onto_an_existing_file_is_refused_unless_forced(tmp_path, capsys):
    """The typo of the issue: the raw image given as the export's output."""
    workdir = _workdir(tmp_path)
    store = _labels_store(workdir / "results/labels.ome.zarr", tifffile.imread(workdir / "data/labels/a.tif"))
    before = _fingerprints(workdir)
    code = cli.main(["export", str(store), str(workdir / "data/images/a.tif")])
    err = capsys.readouterr().err
    clear = code == 1 and "data/images/a.tif already exist(s); not overwritten (use --force" in err
    outcome = _record("export onto an existing file (overwrote a raw image)", clear, before, workdir)
    assert clear, err
    assert not outcome.lost


def test_label_ids_past_uint32_stay_distinct_and_the_figure_colours_them(tmp_path):
    """Ids 1, 2**32 + 1 and 2**33 + 1 were cast to uint32 at import (3 objects, two touching, scored as 2); the figure of a
    valid uint32 id near 4e9 allocated a 90 GB colour table."""
    workdir = _workdir(tmp_path)
    big = np.zeros((96, 120), np.uint64)
    big[5:25, 5:25], big[5:25, 25:45], big[70:90, 90:110] = 1, 2**32 + 1, 2**33 + 1  # the first two touch
    tifffile.imwrite(workdir / "data/labels/big.tif", big)
    before = _fingerprints(workdir)
    out = workdir / "results/images/d/a"
    assert cli.main(["import-image", str(workdir / "data/images/a.tif"), str(out / "image.ome.zarr")]) == 0
    gt = out / "labels.ome.zarr"
    assert (
        cli.main(
            ["import-labels", str(workdir / "data/labels/big.tif"), str(gt), "--image", str(out / "image.ome.zarr")]
        )
        == 0
    )
    stored = ome.open_level0(gt)[...]
    n_true = segmentation_scores(stored, stored).n_true
    near = _labels_store(out / "near.ome.zarr", (big > 0).astype(np.uint32) * np.uint32(4_000_000_000))
    try:
        figures.qualitative(out / "image.ome.zarr", near, {("m", "amg"): near}, out / "q.png")
        drawn = (out / "q.png").stat().st_size > 0
    except MemoryError:
        drawn = False
    clear = n_true == 3 and drawn
    outcome = _record("label ids past 2**32 - 1 (merged), a uint32 id near 4e9 (figure)", clear, before, workdir)
    outcome.silent = n_true != 3
    assert n_true == 3 and drawn
    assert not outcome.lost


def test_the_qualitative_figure_titles_each_panel_with_its_model_and_method(tmp_path):
    """`methods: [amg, auto]`: the finetuned model's AIS panel was hidden behind its AMG one, untitled."""
    workdir = _workdir(tmp_path)
    labels = tifffile.imread(workdir / "data/labels/a.tif")
    out = workdir / "results"
    image = _labels_store(out / "image.ome.zarr", tifffile.imread(workdir / "data/images/a.tif"))
    results = {
        (m, method): _labels_store(out / f"{m}_{method}.ome.zarr", labels)
        for m in ("van", "ft")
        for method in ("amg", "ais")
    }
    before = _fingerprints(workdir)
    titles = figures.qualitative(image, results[("van", "amg")], results, out / "q.png")
    clear = titles[2:] == ["van\namg", "van\nais", "ft\namg", "ft\nais"]
    outcome = _record("qualitative figure of amg and auto (one untitled panel per model)", clear, before, workdir)
    outcome.silent = not clear
    assert clear, titles
    assert not outcome.lost


def test_summary(capsys):
    """The table's line: every case tried, how many ended in a clear message, how many lost data."""
    tried, clear = len(OUTCOMES), sum(o.clear for o in OUTCOMES)
    silent, lost = sum(o.silent for o in OUTCOMES), sum(bool(o.lost) for o in OUTCOMES)
    line = f"bad-input table: {tried} tried / {clear} clear errors / {silent} silent results / {lost} data lost"
    with capsys.disabled():  # on the console whatever the capture mode
        print()
        for o in OUTCOMES:
            what = "clear" if o.clear else "SILENT" if o.silent else "NOT CLEAR"
            print(f"  {o.case}: {what}{', lost ' + ', '.join(o.lost) if o.lost else ''}")
        print(line)
    assert tried and clear == tried and silent == 0 and lost == 0, line
