"""tilesam.jobs and tilesam.runtime, what the model jobs share: the decoder that comes with a model
record, its identity, the searched setting, and labels that do not depend on the block layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from tilesam.baseline_jobs import CLASSICAL_SEARCHED
from tilesam.config import AisParams, AmgParams, ApgParams, ClassicalParams
from tilesam.config import best_row as best_setting
from tilesam.jobs import SEARCHED
from tilesam.models.load import state_sha256
from tilesam.models.record import make_record
from tilesam.models.unetr import InstanceDecoder
from tilesam.runtime import load_instance_decoder


def test_a_decoder_states_digest_follows_its_values():
    state = InstanceDecoder().state_dict()
    same = {k: v.clone() for k, v in state.items()}
    assert state_sha256(state) == state_sha256(same) and len(state_sha256(state)) == 64
    key = next(iter(same))
    same[key] = same[key] + 1
    assert state_sha256(state) != state_sha256(same)


def test_the_decoder_comes_with_a_training_checkpoint_and_its_absence_is_an_error(lite_medsam, tmp_path):
    decoder = InstanceDecoder()
    both, plain = tmp_path / "both.pt", tmp_path / "plain.pt"
    torch.save({"model_state": lite_medsam.state_dict(), "decoder_state": decoder.state_dict()}, both)
    torch.save(lite_medsam.state_dict(), plain)
    loaded, identity = load_instance_decoder(make_record(str(both), "both"), "cpu")
    assert identity == {"sha256": state_sha256(decoder.state_dict())}
    embedding = torch.randn(1, 256, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(embedding), decoder.eval()(embedding))
    with pytest.raises(ValueError, match=f"model plain \\({plain}\\) has no instance-segmentation decoder"):
        load_instance_decoder(make_record(str(plain), "plain"), "cpu")


def test_the_record_holds_the_encoders_identity_which_the_job_that_loads_the_encoder_checks(lite_medsam, tmp_path):
    """Jobs that do not run the encoder take its identity from the record; the embed job compares the two."""
    from tilesam.models.load import encoder_sha256
    from tilesam.models.record import ModelRecord, RecordError
    from tilesam.runtime import ENCODER, PROMPTED, load_record

    weights, path = tmp_path / "lite.pt", tmp_path / "lite.json"
    torch.save(lite_medsam.state_dict(), weights)
    record = make_record(str(weights), "lite")
    record.write(path)
    assert record.encoder_sha256 == encoder_sha256(lite_medsam)
    sam, _ = load_record(path, str(weights), False, "cpu", parts=ENCODER)
    assert encoder_sha256(sam) == record.encoder_sha256
    edited = record.to_dict() | {"encoder_sha256": "0" * 64}
    path.write_text(json.dumps(edited))
    sam, _ = load_record(path, str(weights), False, "cpu", parts=PROMPTED)  # the encoder is not loaded: not checked
    assert all(p.is_meta for p in sam.image_encoder.parameters())
    with pytest.raises(RecordError, match=f"model record {path}: encoder_sha256 is 0+, but .*delete {path} and rerun"):
        load_record(path, str(weights), False, "cpu", parts=ENCODER)
    path.write_text(json.dumps(edited | {"encoder_sha256": "vit_b"}))
    with pytest.raises(RecordError, match="wrong type of encoder_sha256"):
        ModelRecord.read(path)


def test_the_searched_setting_is_the_tables_first_row(tmp_path):
    table = pd.DataFrame(
        {
            "center_distance_threshold": [0.4, 0.5],
            "boundary_distance_threshold": [0.6, 0.5],
            "distance_smoothing": [1.2, 1.6],
            "min_size": [100, 50],
            "mSA": [0.6, 0.5],
        }
    )
    table.to_csv(tmp_path / "ais.csv", index=False)
    params = best_setting(AisParams(foreground_threshold=0.4, tiles_per_batch=2), tmp_path / "ais.csv", SEARCHED["ais"])
    assert params == AisParams(0.4, 0.6, 0.4, 1.0, 1.2, 100, 2)
    assert isinstance(params.min_size, int)
    table.drop(columns="min_size").to_csv(tmp_path / "amg.csv", index=False)
    with pytest.raises(ValueError, match=r"amg.csv: not a search table of .* \(no column min_size\)"):
        best_setting(AisParams(), tmp_path / "amg.csv", SEARCHED["ais"])
    amg = pd.DataFrame({"pred_iou_thresh": [0.7, 0.9], "stability_score_thresh": [0.8, 0.6], "mSA": [0.3, 0.2]})
    amg.to_csv(tmp_path / "amg.csv", index=False)
    assert best_setting(AmgParams(points_per_side=4), tmp_path / "amg.csv", SEARCHED["amg"]) == AmgParams(
        points_per_side=4, pred_iou_thresh=0.7, stability_score_thresh=0.8
    )
    pd.DataFrame({"sigma": [2, 1], "h": [1.5, 2.0], "mSA": [0.5, 0.4]}).to_csv(tmp_path / "c.csv", index=False)
    classical = best_setting(ClassicalParams(), tmp_path / "c.csv", CLASSICAL_SEARCHED)
    assert classical.sigma == 2.0 and isinstance(classical.sigma, float) and classical.h == 1.5
    pd.DataFrame({"sigma": [-1.0], "h": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="baseline.params.sigma"):  # a table is checked like a config
        best_setting(ClassicalParams(), tmp_path / "bad.csv", CLASSICAL_SEARCHED)


def test_labels_do_not_depend_on_how_the_tiles_are_grouped_into_blocks(tmp_path, monkeypatch):
    """The embed -> segment -> stitch jobs on 2 tiles as 1 block and as 2 (min_blocks 1 and 2); the embed
    job builds the image encoder only, the (AMG) segment job the prompt encoder and mask decoder only."""
    from helpers.embedded import import_synthetic
    from tilesam import runtime
    from tilesam.config import EmbedParams, StitchParams, Tiling
    from tilesam.data import ome
    from tilesam.data.synthetic import SyntheticSpec
    from tilesam.jobs import embed, segment, stitch
    from tilesam.models.load import PARTS
    from tilesam.tiling import TileGrid

    image = import_synthetic(tmp_path, SyntheticSpec("cells", (128, 256), 8, (9.0, 16.0), seed=4), (128, 128))
    model = tmp_path / "lite_medsam.json"  # the record the fetch_model job writes for a registry model
    make_record("lite_medsam", "lite_medsam").write(model)
    amg = AmgParams(prompt="box", points_per_side=3, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    real_load, loaded = runtime.load_record, []  # each job's model: a job builds only the parts it runs

    def load_record(*args, **kwargs):
        sam, record = real_load(*args, **kwargs)
        loaded.append(sam)
        return sam, record

    monkeypatch.setattr(runtime, "load_record", load_record)
    labels, n_jobs = {}, {}
    for min_blocks in (1, 2):
        tiling = Tiling(tile_shape=(128, 128), halo=(16, 16), tiles_per_block=16, min_blocks=min_blocks)
        run = tmp_path / f"min_blocks{min_blocks}"
        grid = TileGrid((128, 256), tiling.tile_shape, tiling.halo)
        blocks = []
        for b in range(grid.n_blocks(tiling.block_size(grid.n_tiles))):
            emb, seg = run / f"emb{b}.zarr", run / f"seg{b}.zarr"
            spec = {"spec": "lite_medsam", "model": model, "image": image, "block": b, "device": "cpu"}
            embed(**spec, out=emb, tiling=tiling, params=EmbedParams())
            segment(**spec, embeddings=emb, method="amg", out=seg, tiling=tiling,
                    embedding=EmbedParams(), amg=amg, ais=AisParams(), apg=ApgParams())  # fmt: skip
            blocks.append(str(seg))
        stitch(image=image, blocks=blocks, out=run / "labels.ome.zarr", tiling=tiling, params=StitchParams())
        labels[min_blocks], n_jobs[min_blocks] = ome.open_level0(run / "labels.ome.zarr")[...], len(blocks)
    assert n_jobs == {1: 1, 2: 2} and len(np.unique(labels[1])) > 3  # two layouts; instances found
    np.testing.assert_array_equal(labels[1], labels[2])
    for job, sam in zip(["embed", "segment"] * 3, loaded, strict=True):
        built = {part: not any(p.is_meta for p in getattr(sam, part).parameters()) for part in PARTS}
        assert built == {
            "image_encoder": job == "embed",
            "prompt_encoder": job != "embed",
            "mask_decoder": job != "embed",
        }


def test_auto_segments_with_the_method_whose_search_scored_higher_and_says_so(tmp_path):
    from tilesam.jobs import choose

    ais = tmp_path / "ais_search.csv"
    pd.DataFrame({k: [0.5, 0.4] for k in SEARCHED["ais"]} | {"mSA": [0.62, 0.5]}).to_csv(ais, index=False)
    apg = tmp_path / "apg_search.csv"
    pd.DataFrame({k: [0.5, 0.4] for k in SEARCHED["apg"]} | {"mSA": [0.71, 0.6]}).to_csv(apg, index=False)
    assert choose([str(ais), str(apg)]) == (
        "apg",
        str(apg),
        {"auto": {"method": "apg", "validation_mSA": {"ais": 0.62, "apg": 0.71}}},
    )
    pd.DataFrame({k: [0.5] for k in SEARCHED["apg"]} | {"mSA": [0.55]}).to_csv(apg, index=False)
    assert choose([str(apg), str(ais)])[:2] == ("ais", str(ais))  # the order of the tables does not matter
    pd.DataFrame({k: [0.5] for k in SEARCHED["apg"]} | {"mSA": [0.62]}).to_csv(apg, index=False)
    assert choose([str(ais), str(apg)])[0] == "ais"  # a tie: micro-sam's default
    pd.DataFrame({"sigma": [1.0], "h": [2.0], "mSA": [0.3]}).to_csv(tmp_path / "c.csv", index=False)
    with pytest.raises(ValueError, match="neither an AIS nor an APG search table"):
        choose([str(tmp_path / "c.csv")])
