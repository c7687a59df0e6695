"""The parameter searches: AMG thresholds (decode once, filter per setting, with the real model),
the AIS protocol's grid (every setting scored on maps decoded once per tile) and micro-sam's APG grid
(prompts decoded once per tile and threshold pair)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.ais_maps import embedding_with_maps, map_reading_decoder
from helpers.label_images import disc_truth, paint_disc
from helpers.tiled_cells import embedder, make_cells
from tilesam.config import (
    AisParams,
    AisSearchGrid,
    AmgParams,
    ApgParams,
    ApgSearchGrid,
    StitchParams,
    best_row,
    replace,
)
from tilesam.data import synthetic
from tilesam.embed import encode, normalize
from tilesam.metrics import segmentation_scores
from tilesam.models.unetr import decode_maps
from tilesam.segment.ais import ais_labels
from tilesam.segment.amg import filter_candidates
from tilesam.segment.apg import apg_labels
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.labels import masks_to_labels
from tilesam.segment.search import (
    AIS_SEARCHED,
    APG_KEYS,
    SearchImage,
    ais_grid,
    apg_grid,
    protocol_range,
    search_ais,
    search_amg,
    search_apg,
)
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import TileGrid

IMG_SIZE = 256  # the AIS maps' model input (helpers.ais_maps)


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
    # 9 boxes a tile (each costs a full LiteMedSAM decode); on this image every setting below keeps
    # some masks and they score 3 different mSAs, so each threshold's filtering is compared
    sizes = (0.24,)
    params = AmgParams(points_per_side=3, prompt="box", box_sizes=sizes)
    table = search_amg(
        lite_medsam,
        [SearchImage("cells", grid, embedding_of, gt)],
        params,
        pred_iou_grid=[0.6, 0.8],
        stability_grid=[0.6, 0.8],
    )
    assert len(table) == 4 and table["mSA"].is_monotonic_decreasing
    assert (table.mSA > 0).all() and table.mSA.nunique() >= 3
    for row in table.itertuples():
        direct = AmgParams(
            points_per_side=3,
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


def test_the_default_grid_is_the_protocols():
    grid = ais_grid()
    assert grid["center_distance_threshold"] == grid["boundary_distance_threshold"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert grid["distance_smoothing"] == [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]
    assert grid["min_size"] == [50, 100, 200]
    assert ais_grid(AisSearchGrid(min_size=(200, 50, 50)))["min_size"] == [50, 200]


def _image(seed: int) -> tuple[SearchImage, np.ndarray, dict]:

    truth = disc_truth((112, 112), np.random.default_rng(seed), [], 7, radii=(7, 11))
    paint_disc(truth, (106, 6), 2, truth.max() + 1)  # 13 pixels: only a min_size keeps it out
    grid = TileGrid(truth.shape, (56, 56), (8, 8))  # windows of 64
    embeddings = {t.id: embedding_with_maps(truth[t.window_slices()], seed=t.id) for t in grid.tiles()}
    embedding_of = lambda tile: torch.from_numpy(embeddings[tile.id])[None]  # noqa: E731
    return SearchImage(f"im{seed}", grid, embedding_of, truth), truth, embeddings


def test_every_setting_is_scored_and_the_best_is_what_segmenting_with_it_scores():
    decoder = map_reading_decoder()
    images = [_image(1)[0], _image(2)[0]]
    grid = {
        "center_distance_threshold": [0.0, 0.5],
        "boundary_distance_threshold": [0.5],
        "distance_smoothing": [1.0, 1.6],
        "min_size": [0, 30],
    }
    table = search_ais(decoder, images, AisParams(), IMG_SIZE, grid=grid)
    assert list(table.columns) == [*AIS_SEARCHED, "mSA"] and len(table) == 8
    assert table.mSA.is_monotonic_decreasing
    assert table.mSA.iloc[0] > 0.5
    assert (table[table.center_distance_threshold == 0.0].mSA == 0).all()  # no seeds, no objects
    # the best row's mSA is what segmenting the images with its setting scores
    best = table.iloc[0]
    params = replace(AisParams(), **{k: (int(best[k]) if k == "min_size" else float(best[k])) for k in AIS_SEARCHED})
    scores = []
    for image in images:
        tiles = {}
        for tile in image.grid.tiles():
            window = tile.window_shape
            s = IMG_SIZE / max(window)
            maps = decode_maps(
                decoder, image.embedding_of(tile), (int(window[0] * s + 0.5), int(window[1] * s + 0.5)), window,
                model_size=IMG_SIZE,
            )[0]  # fmt: skip
            tiles[tile.id] = ais_labels(maps, params)
        scores.append(segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles)).msa)
    assert np.isclose(np.mean(scores), best.mSA)
    pd.testing.assert_frame_equal(table, search_ais(decoder, images, AisParams(), IMG_SIZE, grid=grid))


# --- APG: maps from the map-reading decoder, prompts decoded by LiteMedSAM from real embeddings ---


def _apg_image(model, seed: int) -> SearchImage:
    """Like `_image`, with each window's embedding LiteMedSAM's own of its rendered image (channels 3-255)."""
    image, truth, embeddings = _image(seed)
    pixels = synthetic.render(truth, seed)
    for tile in image.grid.tiles():
        own = encode(model, [normalize(pixels[tile.window_slices()], (0.0, 255.0))])[0].numpy()
        embeddings[tile.id][3:] = own[3:]
    return image


def test_the_default_apg_grid_is_micro_sams():
    grid = apg_grid()
    assert list(grid) == list(APG_KEYS)
    assert grid["center_distance_threshold"] == grid["boundary_distance_threshold"] == [0.3, 0.4, 0.5, 0.6, 0.7]
    assert grid["min_size"] == [50, 100, 200] and grid["nms_threshold"] == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert grid["intersection_over_min"] == [True, False]
    with pytest.raises(ValueError, match="segmentation.apg_search.nms_threshold"):
        apg_grid(ApgSearchGrid(nms_threshold=(0.5, 1.5, 0.5)))


def test_apg_search_decodes_once_per_threshold_pair_and_scores_as_segmenting(lite_medsam, monkeypatch):
    from tilesam.segment import apg as apg_module

    decoder = map_reading_decoder()
    image = _apg_image(lite_medsam, 3)
    params = ApgParams(refine_with_box_prompts=True)  # LiteMedSAM answers boxes better than points
    grid = {
        "center_distance_threshold": [0.3, 0.6],
        "boundary_distance_threshold": [0.5],
        "min_size": [0, 20],
        "nms_threshold": [0.5, 0.9],
        "intersection_over_min": [True, False],
    }
    real, calls = apg_module.decode_prompts, []
    monkeypatch.setattr(apg_module, "decode_prompts", lambda *a, **k: calls.append(1) or real(*a, **k))
    table = search_apg(lite_medsam, decoder, [image], params, IMG_SIZE, grid=grid)
    assert list(table.columns) == [*APG_KEYS, "mSA"] and len(table) == 16
    # LiteMedSAM (box-trained) answers these points with masks of a few pixels: every mSA is 0 here,
    # so the search's reuse is what this checks, and that each row is what segmenting with it scores
    assert table.mSA.is_monotonic_decreasing
    # 4 windows x 2 threshold pairs x 2 rounds (points, boxes): not once per NMS or size setting
    assert len(calls) == image.grid.n_tiles * 2 * 2
    monkeypatch.setattr(apg_module, "decode_prompts", real)
    for row in (table.iloc[0], table.iloc[-1]):
        setting = replace(
            params,
            center_distance_threshold=float(row.center_distance_threshold),
            boundary_distance_threshold=float(row.boundary_distance_threshold),
            min_size=int(row.min_size),
            nms_threshold=float(row.nms_threshold),
            intersection_over_min=bool(row.intersection_over_min),
        )
        tiles = {}
        for tile in image.grid.tiles():
            window = tile.window_shape
            s = IMG_SIZE / max(window)
            size = (int(window[0] * s + 0.5), int(window[1] * s + 0.5))
            embedding = image.embedding_of(tile)
            maps = decode_maps(decoder, embedding, size, window, model_size=IMG_SIZE)[0]
            tiles[tile.id] = apg_labels(lite_medsam, embedding, maps, setting)
        assert segmentation_scores(image.gt, stitch_in_memory(image.grid, tiles)).msa == pytest.approx(row.mSA)


def test_the_best_apg_setting_of_a_search_table_is_read_back(tmp_path):
    table = pd.DataFrame(
        [
            {"center_distance_threshold": 0.4, "boundary_distance_threshold": 0.6, "min_size": 100,
             "nms_threshold": 0.7, "intersection_over_min": True, "mSA": 0.5},
            {"center_distance_threshold": 0.3, "boundary_distance_threshold": 0.3, "min_size": 50,
             "nms_threshold": 0.9, "intersection_over_min": False, "mSA": 0.4},
        ]
    )  # fmt: skip
    table.to_csv(tmp_path / "apg.csv", index=False)
    best = best_row(ApgParams(refine_with_box_prompts=True), tmp_path / "apg.csv", APG_KEYS)
    assert best == ApgParams(0.4, 0.6, 0.5, 100, False, 0.7, True, None, True, 32, 1)
    table.drop(columns="nms_threshold").to_csv(tmp_path / "ais.csv", index=False)
    with pytest.raises(ValueError, match=r"ais.csv: not a search table of .*\(no column nms_threshold\)"):
        best_row(ApgParams(), tmp_path / "ais.csv", APG_KEYS)
