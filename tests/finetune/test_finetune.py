"""Finetuning: the real LiteMedSAM on real nuclei (dsb2018) for a few iterations.

What must hold: training changes the trained parts (and only those) and lowers the loss; zero
iterations give the base weights bit for bit; the checkpoint loads in a fresh process by path and
by its registered name; an interrupted run resumes to exactly the weights of an uninterrupted one;
the same seed gives the same weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tilesam.cli import main as cli_main
from tilesam.finetune import (
    EmbeddingCache,
    EpochRecord,
    FinetuneConfig,
    FinetuneError,
    ImageSet,
    Prompts,
    Sample,
    ViewPool,
    _crop_windows,
    _schedule,
    add_corrections,
    dice_loss,
    dihedral,
    finetune,
    frame_targets,
    pair_files,
    prompt_loss,
    register_finetuned,
    split_samples,
    state_path,
    view_pixels,
)
from tilesam.models import load_model, resolve

# Two small 256x256 fluorescence images with few nuclei; tiny settings keep each run to seconds.
NAMES = (
    "0114f484a16c152baa2d82fdd43740880a762c93f436c8988ac461c5c9dbe7d5",
    "0ed3555a4bd48046d3b63d8baf03a5aa97e523aa483aaa07459e7afa39fb96c6",
)
TINY = FinetuneConfig(
    iterations=2,
    iterations_per_epoch=1,
    objects_per_image=2,
    sub_iterations=2,
    augment_variants=1,
    lr=1e-4,
    prompt_encoder_lr_factor=10.0,
    seed=3,
)


@pytest.fixture(scope="module", autouse=True)
def _model_cache(tmp_path_factory):
    """Finetuned models are linked into the model cache: keep it out of the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TILESAM_CACHEDIR", str(tmp_path_factory.getbasetemp() / "cache"))
        yield


@pytest.fixture(scope="module")
def data(shared_dir) -> tuple[list[Path], list[Path]]:
    folder = shared_dir / "data" / "dsb2018"
    return [folder / "images" / f"{n}.tif" for n in NAMES], [folder / "labels" / f"{n}.tif" for n in NAMES]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory) -> Path:
    """One embedding cache for all runs: each image is encoded once in this module."""
    return tmp_path_factory.mktemp("embeddings")


def run(data, out: Path, embeddings: Path, config: FinetuneConfig = TINY, **kwargs):
    return finetune("lite_medsam", *data, out, config=config, embedding_cache=embeddings, progress=False, **kwargs)


@pytest.fixture(scope="module")
def reference(data, embeddings, tmp_path_factory):
    """An uninterrupted two-epoch run (one iteration per epoch)."""
    return run(data, tmp_path_factory.mktemp("reference") / "ft.pth", embeddings)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


# --- with the real model and data --------------------------------------------------------------


def test_finetuning_changes_the_trained_parts_and_lowers_the_loss(reference, lite_medsam, data, embeddings):
    base, tuned = lite_medsam.state_dict(), weights(reference.checkpoint)
    assert base.keys() == tuned.keys()
    changed = {k.split(".")[0] for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == {"mask_decoder", "prompt_encoder"}  # the frozen image encoder is untouched
    assert reference.best_epoch == 2 and [e.iterations for e in reference.epochs] == [0, 1, 2]

    # the training loss (boxes or points, iterative) on the same objects and prompts, before and after
    images = ImageSet([Sample(im, lab) for im, lab in zip(*data)])
    cache = EmbeddingCache(lite_medsam, resolve("lite_medsam").sha256, embeddings)  # the encoder is shared
    tuned_model = load_model(reference.checkpoint, device="cpu")
    probe = replace(TINY, objects_per_image=4)
    before = prompt_loss(lite_medsam, images, probe, cache, seed=11)
    after = prompt_loss(tuned_model, images, probe, cache, seed=11)
    assert after < before - 0.03, f"training loss {before:.3f} -> {after:.3f}"


def test_outputs_card_loss_log_and_plot(reference, data):
    card = json.loads(reference.card.read_text())
    assert card["name"] == "lite_medsam-ft-dsb2018" == reference.name
    assert card["base"] == "lite_medsam@v1" and card["base_sha256"] == resolve("lite_medsam").sha256
    assert card["architecture"] == "lite_medsam_tinyvit" and card["image_size"] == 256
    assert card["train_images"] == [str(p.resolve()) for p in data[0]] and card["val_images"] == []
    assert card["iterations"] == 2 and card["seed"] == 3 and card["best_epoch"] == 2
    assert card["trained_parts"] == ["mask_decoder", "prompt_encoder"]
    assert [e["epoch"] for e in card["epochs"]] == [0, 1, 2] and card["epochs"][2]["train_loss"] > 0
    stem = reference.checkpoint.with_suffix("")
    log_lines = Path(f"{stem}.losses.csv").read_text().splitlines()
    assert log_lines[0] == "iteration,epoch,loss,mask_loss,iou_loss,lr" and len(log_lines) == 3
    assert Path(f"{stem}.losses.png").read_bytes()[:4] == b"\x89PNG"
    assert not state_path(reference.checkpoint).exists()  # a finished run leaves no training state


def test_zero_iterations_give_the_base_weights_exactly(data, embeddings, lite_medsam, tmp_path):
    out = tmp_path / "zero.pth"
    argv = [
        "finetune",
        "--model",
        "lite_medsam",
        "--images",
        *map(str, data[0]),
        "--labels",
        *map(str, data[1]),
        "--out",
        str(out),
        "--iterations",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--embedding-cache",
        str(embeddings),
    ]
    assert cli_main(argv) == 0
    base, tuned = lite_medsam.state_dict(), weights(out)
    assert base.keys() == tuned.keys()
    difference = max(float((base[k].double() - tuned[k].double()).abs().max()) for k in base if base[k].numel())
    assert difference == 0.0
    assert_same_weights(base, tuned)


def test_checkpoint_loads_in_a_fresh_process_by_path_and_by_name(reference, tmp_path):
    script = f"""
import sys, torch
from tilesam.finetune import register_finetuned
from tilesam.models import load_model
saved = torch.load({str(reference.checkpoint)!r}, map_location="cpu", weights_only=True)
by_path = load_model({str(reference.checkpoint)!r}, device="cpu")
card = register_finetuned({str(reference.card)!r})
by_name = load_model(card.name, device="cpu")
for model in (by_path, by_name):
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert model.image_encoder.img_size == 256 and float(model.pixel_std[0]) == 255.0
print(card.name)
"""
    env = {**os.environ, "TILESAM_CACHEDIR": str(tmp_path / "fresh-cache")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "lite_medsam-ft-dsb2018"


def test_registered_name_resolves_and_a_changed_checkpoint_is_refused(reference, tmp_path):
    card = register_finetuned(reference.card)
    assert resolve("lite_medsam-ft-dsb2018") == card and card.sha256 is not None
    assert_same_weights(load_model("lite_medsam-ft-dsb2018", device="cpu").state_dict(), weights(reference.checkpoint))
    copy = tmp_path / "ft.pth"
    state = weights(reference.checkpoint)
    state["mask_decoder.iou_token.weight"] += 1
    torch.save(state, copy)
    (tmp_path / "ft.json").write_text(reference.card.read_text())
    with pytest.raises(Exception, match="sha256"):
        register_finetuned(tmp_path / "ft.json")


class Interrupted(Exception):
    pass


def test_interrupted_run_resumes_to_the_uninterrupted_weights(reference, data, embeddings, tmp_path):
    out = tmp_path / "ft.pth"

    def stop_after_first_epoch(record: EpochRecord) -> None:
        if record.epoch == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(data, out, embeddings, on_epoch_end=stop_after_first_epoch)
    assert state_path(out).is_file() and not out.exists()
    with pytest.raises(FinetuneError, match="other settings"):  # another seed never continues this state
        run(data, out, embeddings, config=replace(TINY, seed=4))
    resumed = run(data, out, embeddings)
    assert resumed.resumed_from == 1 and [e.epoch for e in resumed.epochs] == [0, 1, 2]
    assert [e.train_loss for e in resumed.epochs] == [e.train_loss for e in reference.epochs]
    assert_same_weights(weights(out), weights(reference.checkpoint))


def test_same_seed_gives_the_same_weights(reference, data, embeddings, tmp_path):
    again = run(data, tmp_path / "again.pth", embeddings)
    assert_same_weights(weights(again.checkpoint), weights(reference.checkpoint))
    assert [e.train_loss for e in again.epochs] == [e.train_loss for e in reference.epochs]


# --- pieces, without the model -----------------------------------------------------------------


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    a = np.arange(12).reshape(3, 4)
    variants = [dihedral(a, k) for k in range(8)]
    assert len({v.tobytes() + bytes(v.shape) for v in variants}) == 8
    assert all(sorted(v.ravel()) == list(range(12)) for v in variants)
    np.testing.assert_array_equal(dihedral(a, 4), a[:, ::-1])
    np.testing.assert_array_equal(dihedral(dihedral(a, 1), 3), a)
    rgb = np.zeros((3, 4, 3))
    assert dihedral(rgb, 1).shape == (4, 3, 3)  # channels stay last


def test_files_pair_by_name_and_split_by_sorted_name(tmp_path):
    for folder in ("im", "lab"):
        (tmp_path / folder).mkdir()
        for name in ("c", "a", "b", "d"):
            (tmp_path / folder / f"{name}.tif").write_bytes(b"")
    samples = pair_files(str(tmp_path / "im" / "*.tif"), str(tmp_path / "lab" / "*.tif"))
    assert [s.name for s in samples] == ["a", "b", "c", "d"]
    assert all(s.labels.parent.name == "lab" and s.labels.stem == s.name for s in samples)
    train, val = split_samples(samples[::-1], 0.25)
    assert [s.name for s in train] == ["a", "b", "c"] and [s.name for s in val] == ["d"]
    (tmp_path / "im" / "e.tif").write_bytes(b"")
    with pytest.raises(FinetuneError, match="e.tif"):
        pair_files(str(tmp_path / "im" / "*.tif"), str(tmp_path / "lab" / "*.tif"))
    with pytest.raises(FinetuneError, match="matches no file"):
        pair_files(str(tmp_path / "none" / "*.tif"), str(tmp_path / "lab" / "*.tif"))


def test_view_pool_keeps_windows_with_objects_and_a_fixed_variant_pool(tmp_path):
    import tifffile

    rgb = np.zeros((3, 300, 520), np.uint8)  # channel-first colour: read as channels-last RGB
    rgb[1, :, :] = np.linspace(0, 200, 520, dtype=np.uint8)
    labels = np.zeros((300, 520), np.uint16)
    labels[20:60, 20:60] = 5  # only the left part of the image has an object
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "a_labels.tif", labels)
    images = ImageSet([Sample(tmp_path / "a.tif", tmp_path / "a_labels.tif")])
    assert images.rgb[0].shape == (300, 520, 3) and images.rgb[0].dtype == np.uint8
    assert images.rgb[0][..., 1].max() == 255  # min/max normalised
    assert np.unique(images.labels[0]).tolist() == [0, 1]  # relabelled as connected components

    config = FinetuneConfig(crop_size=256, augment_variants=3, seed=1)
    pool = ViewPool(images, config, img_size=256)
    assert pool.windows[0] and all(x < 60 for _, x, _, _ in pool.windows[0])  # windows without objects dropped
    assert len(pool.variants[0]) == 3 and pool.variants[0][0] == 0
    assert ViewPool(images, config, img_size=256).variants == pool.variants  # fixed by the seed
    view = pool.draw(0, np.random.default_rng(0))
    pixels, view_labels = view_pixels(images, view)
    assert pixels.shape == (256, 256, 3) and view_labels.shape == (256, 256) and view_labels.max() == 1


def test_crop_windows_cover_the_image():
    windows = _crop_windows((300, 520), 256)
    covered = np.zeros((300, 520), bool)
    for y, x, h, w in windows:
        assert (h, w) == (256, 256) and y + h <= 300 and x + w <= 520
        covered[y : y + h, x : x + w] = True
    assert covered.all()
    assert _crop_windows((100, 120), 256) == [(0, 0, 100, 120)]


def test_frame_targets_resize_labels_and_drop_tiny_objects():
    labels = np.zeros((512, 256), np.int32)
    labels[10:50, 10:50] = 1  # 20x20 in the 256 frame
    labels[100:102, 100:102] = 2  # one pixel in the frame
    targets = frame_targets(labels, 256, min_pixels=4)
    assert targets.labels.shape == (256, 128) and list(targets.ids) == [1]
    assert targets.masks(np.array([1])).sum() == 400


def test_corrections_add_a_click_per_error_kind_and_pad_missing_ones():
    true = np.zeros((2, 20, 20), bool)
    true[:, 5:15, 5:15] = True
    pred = true.copy()
    pred[0, 5:15, 5:8] = False  # object 0: missed part only
    start = Prompts(None, None, np.array([[5, 5, 15, 15]] * 2, float), multimask=False)
    out = add_corrections(start, true, pred, np.random.default_rng(0))
    assert out.points.shape == (2, 2, 2) and out.boxes is start.boxes
    assert out.labels.tolist() == [[1, -1], [-1, -1]]
    x, y = out.points[0, 0]
    assert true[0, int(y), int(x)] and not pred[0, int(y), int(x)]


def test_dice_loss_is_zero_for_a_perfect_mask_and_one_for_an_empty_one():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    assert float(dice_loss((target * 2 - 1) * 50, target)) < 0.02
    assert float(dice_loss(torch.full_like(target, -50.0), target)) > 0.9


def test_schedule_warms_up_then_decays():
    factor = _schedule(FinetuneConfig(iterations=100, warmup_fraction=0.1, min_lr_factor=0.1))
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(50) < 1.0 and factor(100) == pytest.approx(0.1)


def test_config_rejects_unknown_parts_and_bad_values():
    with pytest.raises(ValueError, match="train_parts"):
        FinetuneConfig(train_parts=("decoder",))
    with pytest.raises(ValueError, match="augment_variants"):
        FinetuneConfig(augment_variants=9)
    assert FinetuneConfig(train_parts=["mask_decoder"]).encoder_frozen
    assert not FinetuneConfig(train_parts=("image_encoder", "mask_decoder")).encoder_frozen
