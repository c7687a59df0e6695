"""AIS through the real workflow: `methods: [amg, auto]` on a checkpoint with an instance decoder."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import tifffile

from helpers.decoder_fit import demo_image, fit_decoder
from helpers.snakemake_cli import job_counts, snakemake, write_config
from tilesam.data import synthetic
from tilesam.models.spec import model_id, resolve_spec


def decoder_checkpoint(path, image, labels, cache_dir) -> None:
    """LiteMedSAM's SAM weights plus an instance decoder fitted on this image (helpers.decoder_fit),
    as a micro-sam training checkpoint: its maps hold the image's objects."""
    from tilesam.models import load_model

    fit_decoder(load_model("lite_medsam", device="cpu"), image, labels, out=path, cache_dir=cache_dir)


@pytest.mark.slow
def test_amg_and_auto_give_amg_and_ais_rows(tmp_path, request):
    image, labels = demo_image()  # 256 x 256, one tile: the decoder's maps cost the most here
    (tmp_path / "data/images").mkdir(parents=True)
    (tmp_path / "data/labels").mkdir(parents=True)
    tifffile.imwrite(tmp_path / "data/images/cells.tif", image)
    tifffile.imwrite(tmp_path / "data/labels/cells.tif", labels)
    decoder_checkpoint(tmp_path / "withdec.pt", image, labels, request.config.cache.mkdir("decoder_fit"))
    config = {
        "datasets": {"tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
        "models": [str(tmp_path / "withdec.pt")],  # (auto without a decoder: tests/test_plan_ais.py)
        "baseline": {"classical": False},  # the two model methods are under test
        "device": "cpu",
        "segmentation": {
            "methods": ["amg", "auto"],
            "tile_shape": [256, 256],
            "halo": [0, 0],
            "tiles_per_block": 1,
            "amg": {
                "prompt": "box",
                "box_sizes": [0.24],
                "points_per_side": 4,
                "pred_iou_thresh": 0.8,
                "stability_score_thresh": 0.9,
            },
            # the fitted decoder's distances are compressed (helpers.decoder_fit): looser seeds
            "ais": {"min_size": 10, "center_distance_threshold": 0.55, "boundary_distance_threshold": 0.6},
        },
    }
    write_config(tmp_path, config)
    counts = job_counts(snakemake(tmp_path, "-n").stdout)
    assert counts["segment"] == 2 and counts["evaluate"] == 2 and counts["embed"] == 1  # one embedding, two methods
    snakemake(tmp_path)
    table = pd.read_csv(tmp_path / "results/benchmark/table.csv")
    dec = model_id(resolve_spec(str(tmp_path / "withdec.pt")))
    assert list(zip(table.model, table.method)) == [(dec, "ais"), (dec, "amg")]
    ais = table[table.method == "ais"].iloc[0]
    assert ais.n_images == 1 and ais.n_objects == table.n_objects.iloc[0] > 0
    assert ais.mSA > 0.1 and ais.segment_s_per_image > 0  # the fitted decoder's objects are found
    params = json.loads(ais.params)
    assert params["min_size"] == 10 and params["center_distance_threshold"] == 0.55
    assert params["distance_smoothing"] == 1.6 and len(params["decoder"]) == 64  # the decoder state's sha256
    assert "prompt" in json.loads(table[table.method == "amg"].params.iloc[0])
    assert (tmp_path / f"results/segmentation/tiny/cells/{dec}/ais/labels.ome.zarr").is_dir()
    assert "ais" in (tmp_path / "results/benchmark/table.md").read_text()
    assert (tmp_path / "results/benchmark/msa_bars.png").stat().st_size > 0


def test_ais_for_a_model_without_a_decoder_fails_before_any_job(tmp_path):
    spec = synthetic.SyntheticSpec("cells", (64, 64), 3, (6.0, 9.0), seed=1)
    synthetic.write_demo(spec, tmp_path / "data/images/cells.tif", tmp_path / "data/labels/cells.tif")
    config = {
        "datasets": {"tiny": {"images": "data/images/*.tif", "labels": "data/labels/*.tif"}},
        "models": ["lite_medsam"],
        "segmentation": {"methods": ["ais"]},
    }
    write_config(tmp_path, config)
    result = snakemake(tmp_path, "-n", check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr  # snakemake prints workflow errors on stdout with -n
    assert "model 'lite_medsam'" in output and "no instance-segmentation decoder" in output
    assert not (tmp_path / "results").exists()
