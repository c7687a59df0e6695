"""Prompted evaluation of whole tiled images, and the AMG threshold search, with the real model."""

from __future__ import annotations

import numpy as np
import pytest

from tilesam.config import AmgParams, StitchParams
from tilesam.data import synthetic
from tilesam.embed import encode, normalize
from tilesam.interactive.evaluate import evaluate_prompts, object_tiles, prompt_image
from tilesam.interactive.prompts import prompt_objects
from tilesam.metrics import relabel_gt, segmentation_scores
from tilesam.segment.amg import filter_candidates, masks_to_labels
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.search import SearchImage, protocol_range, search_amg
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import TileGrid

SPEC = synthetic.SyntheticSpec("cells", (200, 260), 16, (9.0, 18.0), seed=11)


@pytest.fixture(scope="module")
def cells():
    gt = synthetic.make_labels(SPEC)
    return synthetic.render(gt, SPEC.seed), gt


def embedder(model, image):
    """tile -> embedding of its window, computed once per tile (as the embed jobs store them)."""
    cache = {}
    rng = (float(image.min()), float(image.max()))

    def embedding_of(tile):
        if tile.window not in cache:
            cache[tile.window] = encode(model, [normalize(image[tile.window_slices()], rng)])
        return cache[tile.window]

    return embedding_of


def test_protocol_range_is_inclusive_and_exact():
    assert protocol_range(0.6, 0.9) == [round(0.6 + 0.025 * k, 6) for k in range(13)]
    assert protocol_range(0.6, 0.95)[-1] == 0.95 and len(protocol_range(0.6, 0.95)) == 15


def test_every_object_is_prompted_on_exactly_one_tile_holding_its_centre(cells):
    _, gt = cells
    grid = TileGrid(gt.shape, (64, 64), (16, 16))
    assigned = object_tiles(gt, grid)
    ids = np.concatenate(list(assigned.values()))
    assert sorted(ids) == sorted(np.unique(gt[gt > 0]))
    for tile_id, objects in assigned.items():
        (y0, y1), (x0, x1) = grid.tile(tile_id).inner
        for i in objects:
            ys, xs = np.nonzero(gt == i)
            cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
            assert y0 <= cy < y1 and x0 <= cx < x1


def test_volume_objects_are_prompted_per_section():
    gt = np.zeros((3, 40, 40), np.uint16)
    gt[0:2, 5:15, 5:15] = 1  # two sections
    gt[2, 25:35, 25:35] = 2
    assigned = object_tiles(gt, TileGrid(gt.shape, (20, 20), (4, 4)))
    grid = TileGrid(gt.shape, (20, 20), (4, 4))
    assert assigned == {grid.tile_id(0, 0, 0): [1], grid.tile_id(1, 0, 0): [1], grid.tile_id(2, 1, 1): [2]}


def test_one_tile_gives_the_whole_image_result(lite_medsam, cells):
    image, gt = cells
    grid = TileGrid(gt.shape, (256, 320), (0, 0))
    tiled = list(prompt_image(lite_medsam, gt, grid, embedder(lite_medsam, image), "box"))
    embedding = encode(lite_medsam, [normalize(image, (float(image.min()), float(image.max())))])
    whole = prompt_objects(lite_medsam, embedding, gt.shape, relabel_gt(gt), "box", relabel=False)
    assert len(tiled) == 1 and np.array_equal(tiled[0], whole[0])


def test_tiled_box_prompts_find_the_objects_and_iterations_are_recorded(lite_medsam, cells):
    image, gt = cells
    grid = TileGrid(gt.shape, (128, 128), (24, 24))
    embedding_of = embedder(lite_medsam, image)
    box = evaluate_prompts(lite_medsam, gt, grid, embedding_of, "box")
    assert len(box) == 1 and box[0]["iteration"] == 0 and box[0]["n_true"] == 16
    assert box[0]["msa"] > 0.7  # LiteMedSAM answers boxes well (0.93 measured)
    iterative = evaluate_prompts(lite_medsam, gt, grid, embedding_of, "iterative_box")
    assert [r["iteration"] for r in iterative] == list(range(8))
    assert iterative[0]["msa"] == pytest.approx(box[0]["msa"])  # same start prompt
    with pytest.raises(ValueError, match="unknown prompt mode"):
        evaluate_prompts(lite_medsam, gt, grid, embedding_of, "lasso")
    with pytest.raises(ValueError, match="ground truth has shape"):
        evaluate_prompts(lite_medsam, gt[:100], grid, embedding_of, "box")


def test_search_scores_each_setting_as_a_direct_run_with_it(lite_medsam, cells):
    """Decoding once at the loosest thresholds and filtering equals decoding with each setting."""
    image, gt = cells
    grid = TileGrid(gt.shape, (128, 128), (24, 24))
    embedding_of = embedder(lite_medsam, image)
    params = AmgParams(points_per_side=4)
    sizes = (0.12, 0.24)
    table = search_amg(
        lite_medsam,
        [SearchImage("cells", grid, embedding_of, gt)],
        params,
        prompt="box",
        box_sizes=sizes,
        pred_iou_grid=[0.6, 0.8],
        stability_grid=[0.6, 0.9],
    )
    assert len(table) == 4 and table["mSA"].is_monotonic_decreasing
    for row in table.itertuples():
        direct = AmgParams(
            points_per_side=4, pred_iou_thresh=row.pred_iou_thresh, stability_score_thresh=row.stability_score_thresh
        )
        tiles = {}
        for tile in grid.tiles():
            c = decode_box_candidates(lite_medsam, embedding_of(tile), tile.window_shape, direct, sizes)
            kept = filter_candidates(c, direct.pred_iou_thresh, direct.stability_score_thresh, direct.box_nms_thresh)
            tiles[tile.id] = masks_to_labels(kept, tile.window_shape, with_background=True)
        msa = segmentation_scores(gt, stitch_in_memory(grid, tiles, StitchParams())).msa
        assert row.mSA == pytest.approx(msa, abs=1e-12)
