"""Segmenting a block from its embedding store: the labels, and the record of params the store keeps.

The record is read by the result tables and by the resume check, so its keys, their order and
their values must not change when the parameters' code does.
"""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest
import zarr

from tilesam.config import AmgParams
from tilesam.data import io, stores, synthetic
from tilesam.embed import Provenance, embed_block, read_embedding
from tilesam.segment.amg import filter_candidates, generate_masks
from tilesam.segment.blocks import segment_block
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.labels import masks_to_labels
from tilesam.tiling import TileGrid

TILE = (128, 128)


@pytest.fixture(scope="module")
def embedded(lite_medsam, tmp_path_factory):
    """One tile (block 0) of a synthetic image, embedded by LiteMedSAM: (store, provenance, grid)."""
    d = tmp_path_factory.mktemp("blocks")
    spec = synthetic.SyntheticSpec("b", TILE, 6, (8.0, 14.0), seed=3)
    synthetic.write_demo(spec, d / "b.tif", d / "b_gt.tif")
    info = io.import_image(d / "b.tif", d / "b.ome.zarr", ndim=2, tile_shape=TILE)
    grid = TileGrid(info.shape, TILE, (0, 0))
    prov = Provenance("lite_medsam", "sha-test", 256, grid.to_dict(), 0, 1, info.signature, "float32")
    embed_block(lite_medsam, prov, d / "b.ome.zarr", grid, d / "emb.zarr")
    return d / "emb.zarr", asdict(prov), grid


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_block_labels_and_params_record(lite_medsam, embedded, tmp_path, prompt):
    store, prov, grid = embedded
    params = AmgParams(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, prompt=prompt, box_sizes=[0.12, 0.24]
    )
    segment_block(lite_medsam, store, prov, grid, tmp_path / "seg.zarr", params=params)
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")

    record = dict(root.attrs["tilesam"]["segmentation"])
    assert list(record) == [*prov, "method", "params", "prompt", "box_sizes"]
    assert {k: record[k] for k in prov} == prov and record["method"] == "amg"
    assert list(record["params"].items()) == [
        ("points_per_side", 2),
        ("points_per_batch", 64),
        ("pred_iou_thresh", 0.0),
        ("stability_score_thresh", 0.0),
        ("stability_score_offset", 1.0),
        ("box_nms_thresh", 0.7),
        ("crop_nms_thresh", 0.7),
        ("min_mask_region_area", 0),
        ("with_background", True),
    ]
    assert record["prompt"] == prompt
    assert record["box_sizes"] == ([0.12, 0.24] if prompt == "box" else None)

    embedding = read_embedding(zarr.open_group(str(store), mode="r"), 0)
    if prompt == "point":
        masks = generate_masks(lite_medsam, embedding, TILE, params)
    else:
        candidates = decode_box_candidates(lite_medsam, embedding, TILE, params)
        masks = filter_candidates(candidates, 0.0, 0.0, params.box_nms_thresh)
    expected = masks_to_labels(masks, TILE, with_background=True)
    assert expected.max() > 0
    np.testing.assert_array_equal(root["t0"][...], expected)


class _Clock:
    """A stand-in for the `time` module of the code under test: each perf_counter() call is 1 s later."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture(scope="module")
def two_tiles(lite_medsam, tmp_path_factory):
    """A block of two tiles, embedded: (store, provenance, grid)."""
    d = tmp_path_factory.mktemp("two")
    spec = synthetic.SyntheticSpec("two", (TILE[0], 2 * TILE[1]), 8, (8.0, 14.0), seed=4)
    synthetic.write_demo(spec, d / "two.tif", d / "two_gt.tif")
    info = io.import_image(d / "two.tif", d / "two.ome.zarr", ndim=2, tile_shape=TILE)
    grid = TileGrid(info.shape, TILE, (0, 0))
    prov = Provenance("lite_medsam", "sha-test", 256, grid.to_dict(), 0, 2, info.signature, "float32")
    embed_block(lite_medsam, prov, d / "two.ome.zarr", grid, d / "emb.zarr")
    return d / "emb.zarr", asdict(prov), grid


def test_a_resumed_block_reports_the_costs_of_an_uninterrupted_one(
    lite_medsam, two_tiles, tmp_path, monkeypatch, caplog
):
    """Killed after its first tile and resumed, a block's costs count both tiles; a changed parameter
    moves the partial store aside and recomputes."""
    import tilesam.segment.blocks as blocks

    store, prov, grid = two_tiles
    params = AmgParams(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, prompt="box")
    monkeypatch.setattr(blocks, "time", _Clock())  # each tile takes 1 s
    real, calls = blocks.generate_masks, []

    def killed_at_the_second_tile(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(blocks, "generate_masks", killed_at_the_second_tile)
    out = tmp_path / "seg.zarr"
    with pytest.raises(KeyboardInterrupt):
        segment_block(lite_medsam, store, prov, grid, out, params=params)
    stats = segment_block(lite_medsam, store, prov, grid, out, params=params)
    assert stats["computed"] == 1 and stats["segment_seconds"] == 2.0  # as one job: 2 tiles of 1 s
    cost = blocks.costs([out])
    assert (cost["n_tiles"], cost["timed_tiles"], cost["segment_s_per_image"]) == (2, 2, 2.0)
    encoder = stores.tile_seconds(zarr.open_group(str(store), mode="r"))
    assert cost["encoder_s_per_tile"] == pytest.approx(encoder.mean()) and (encoder > 0).all()

    # interrupted again, then rerun with other thresholds: the old partial store goes aside
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        segment_block(lite_medsam, store, prov, grid, tmp_path / "other.zarr", params=params)
    changed = replace(params, pred_iou_thresh=0.5)
    with caplog.at_level("WARNING", logger="tilesam"):
        stats = segment_block(lite_medsam, store, prov, grid, tmp_path / "other.zarr", params=changed)
    assert stats["computed"] == 2 and "pred_iou_thresh" in caplog.text
    assert len(list(tmp_path.glob("other.zarr.stale-*"))) == 1
