"""Segmenting a block from its embedding store: the labels, and the record of params the store keeps.

The record is read by the result tables and by the resume check, so its keys, their order and
their values must not change when the parameters' code does.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import zarr

from tilesam.config import AmgParams
from tilesam.data import io, synthetic
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
