"""Prompted evaluation of whole tiled images, with the real model."""

from __future__ import annotations

import numpy as np
import pytest

from helpers.tiled_cells import embedder, make_cells
from tilesam.data import synthetic
from tilesam.embed import encode, normalize
from tilesam.interactive.evaluate import evaluate_prompts, object_tiles, prompt_image
from tilesam.interactive.prompts import prompt_objects
from tilesam.metrics import relabel_gt
from tilesam.tiling import TileGrid

#: The tiled prompt test's image: 8 cells on 128 x 200 pixels, 2 tiles of 128 x 128 (+24 halo). The prompt
#: decoder's cost grows with the objects (one decoder pass each, per iteration) and the encoder's with the
#: tiles: 8 objects in 2 tiles cost a third of make_cells()' 16 objects in 6 tiles (measured, 107 s vs 356 s
#: on a busy machine), and prove the same.
TILED = synthetic.SyntheticSpec("cells", (128, 200), 8, (9.0, 18.0), seed=11)


@pytest.fixture(scope="module")
def cells():
    return make_cells()


@pytest.fixture(scope="module")
def tiled_cells():
    gt = synthetic.make_labels(TILED)
    return synthetic.render(gt, TILED.seed), gt


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


def test_tiled_box_prompts_find_the_objects_and_iterations_are_recorded(lite_medsam, tiled_cells):
    image, gt = tiled_cells
    grid = TileGrid(gt.shape, (128, 128), (24, 24))
    assert grid.n_tiles == 2 and len(object_tiles(gt, grid)) == 2  # both tiles prompt objects
    embedding_of = embedder(lite_medsam, image)
    box = evaluate_prompts(lite_medsam, gt, grid, embedding_of, "box")
    assert len(box) == 1 and box[0]["iteration"] == 0 and box[0]["n_true"] == TILED.n_objects == 8
    assert box[0]["msa"] > 0.7  # LiteMedSAM answers boxes well (0.92 measured)
    iterative = evaluate_prompts(lite_medsam, gt, grid, embedding_of, "iterative_box")
    assert [r["iteration"] for r in iterative] == list(range(8))
    assert iterative[0]["msa"] == pytest.approx(box[0]["msa"])  # same start prompt
    # feeding the last logits back (not the default) changes what the corrections give
    fed = evaluate_prompts(lite_medsam, gt, grid, embedding_of, "iterative_box", feed_logits=True)
    assert fed[0]["msa"] == pytest.approx(iterative[0]["msa"])  # nothing to feed at the start
    assert [r["msa"] for r in fed[1:]] != pytest.approx([r["msa"] for r in iterative[1:]], abs=1e-6)
    with pytest.raises(ValueError, match="unknown prompt mode"):
        evaluate_prompts(lite_medsam, gt, grid, embedding_of, "lasso")
    with pytest.raises(ValueError, match="ground truth has shape"):
        evaluate_prompts(lite_medsam, gt[:100], grid, embedding_of, "box")
