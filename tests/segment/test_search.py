"""The AMG threshold search (decode once, filter per setting), with the real model."""

from __future__ import annotations

import pytest

from helpers.tiled_cells import embedder, make_cells
from tilesam.config import AmgParams, StitchParams
from tilesam.metrics import segmentation_scores
from tilesam.segment.amg import filter_candidates
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.labels import masks_to_labels
from tilesam.segment.search import SearchImage, protocol_range, search_amg
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import TileGrid


@pytest.fixture(scope="module")
def cells():
    return make_cells()


def test_protocol_range_is_inclusive_and_exact():
    assert protocol_range(0.6, 0.9) == [round(0.6 + 0.025 * k, 6) for k in range(13)]
    assert protocol_range(0.6, 0.95)[-1] == 0.95 and len(protocol_range(0.6, 0.95)) == 15


def test_search_scores_each_setting_as_a_direct_run_with_it(lite_medsam, cells):
    """Decoding once at the loosest thresholds and filtering equals decoding with each setting."""
    image, gt = cells
    grid = TileGrid(gt.shape, (200, 130), (24, 24))  # two tiles: one border to stitch across
    embedding_of = embedder(lite_medsam, image)
    sizes = (0.12, 0.24)
    params = AmgParams(points_per_side=4, prompt="box", box_sizes=sizes)
    table = search_amg(
        lite_medsam,
        [SearchImage("cells", grid, embedding_of, gt)],
        params,
        pred_iou_grid=[0.6, 0.8],
        stability_grid=[0.6, 0.9],
    )
    assert len(table) == 4 and table["mSA"].is_monotonic_decreasing
    for row in table.itertuples():
        direct = AmgParams(
            points_per_side=4,
            pred_iou_thresh=row.pred_iou_thresh,
            stability_score_thresh=row.stability_score_thresh,
            prompt="box",
            box_sizes=sizes,
        )
        tiles = {}
        for tile in grid.tiles():
            c = decode_box_candidates(lite_medsam, embedding_of(tile), tile.window_shape, direct)
            kept = filter_candidates(c, direct.pred_iou_thresh, direct.stability_score_thresh, direct.box_nms_thresh)
            tiles[tile.id] = masks_to_labels(kept, tile.window_shape, with_background=True)
        msa = segmentation_scores(gt, stitch_in_memory(grid, tiles, StitchParams())).msa
        assert row.mSA == pytest.approx(msa, abs=1e-12)
