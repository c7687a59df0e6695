"""Segmenting a block from its embedding store: the labels, and the record of params the store keeps;
AIS in a block job: per-window labels from the decoder's maps, batching, provenance, resume, volumes;
APG in a block job: the same, with each window's prompts decoded by SAM and its stage seconds.

The record is read by the result tables and by the resume check, so its keys, their order and
their values must not change when the parameters' code does.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
import zarr

from helpers.ais_maps import embedding_with_maps, map_reading_decoder
from helpers.embedded import Clock, embedded_block
from helpers.label_images import disc_truth
from tilesam.config import AisParams, AmgParams, ApgParams, replace
from tilesam.data import stores, synthetic
from tilesam.embed import Provenance, encode, normalize, read_embedding
from tilesam.models.unetr import decode_maps
from tilesam.segment import ais as ais_module
from tilesam.segment import results
from tilesam.segment.ais import ais_labels
from tilesam.segment.amg import filter_candidates, generate_masks
from tilesam.segment.apg import apg_labels
from tilesam.segment.blocks import ais_batches, segment_block
from tilesam.segment.box_amg import decode_box_candidates
from tilesam.segment.labels import masks_to_labels
from tilesam.segment.results import params_column
from tilesam.tiling import TileGrid

TILE = (128, 128)


@pytest.fixture(scope="module")
def embedded(lite_medsam, tmp_path_factory):
    """One tile (block 0) of a synthetic image, embedded by LiteMedSAM: (store, provenance, grid)."""
    spec = synthetic.SyntheticSpec("b", TILE, 6, (8.0, 14.0), seed=3)
    return embedded_block(lite_medsam, tmp_path_factory.mktemp("blocks"), spec, TILE)


@pytest.mark.parametrize("prompt", ["point", "box"])
def test_block_labels_and_params_record(lite_medsam, embedded, tmp_path, prompt):
    store, prov, grid = embedded
    params = AmgParams(
        points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, prompt=prompt, box_sizes=[0.12, 0.24]
    )
    segment_block(lite_medsam, store, prov, grid, tmp_path / "seg.zarr", params=params)
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")

    record = dict(root.attrs["tilesam"]["segmentation"])
    assert list(record) == [*asdict(prov), "method", "params", "prompt", "box_sizes"]
    assert {k: record[k] for k in asdict(prov)} == asdict(prov) and record["method"] == "amg"
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


@pytest.fixture(scope="module")
def two_tiles(lite_medsam, tmp_path_factory):
    """A block of two tiles, embedded: (store, provenance, grid)."""
    spec = synthetic.SyntheticSpec("two", (TILE[0], 2 * TILE[1]), 8, (8.0, 14.0), seed=4)
    return embedded_block(lite_medsam, tmp_path_factory.mktemp("two"), spec, TILE)


def test_a_resumed_block_reports_the_costs_of_an_uninterrupted_one(
    lite_medsam, two_tiles, tmp_path, monkeypatch, caplog
):
    """Killed after its first tile and resumed, a block's costs count both tiles; a changed parameter
    moves the partial store aside and recomputes."""
    import tilesam.segment.blocks as blocks

    store, prov, grid = two_tiles
    params = AmgParams(points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0, prompt="box")
    monkeypatch.setattr(blocks, "time", Clock())  # each tile takes 1 s
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
    cost = results.costs([out])
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


# --- AIS blocks: maps from helpers.ais_maps' decoder, which reads them from the embedding ---

IMG_SIZE = 256  # a LiteMedSAM-sized model input: 4 input pixels per embedding pixel
DECODER_ID = {"sha256": "test-decoder"}
#: 64 x 140 pixels in 64 x 64 tiles: windows (64, 64), (64, 64), (64, 12) (longest side 64: see
#: helpers.ais_maps, whose decoder reads each window's maps from its embedding)
GRID = TileGrid((64, 140), (64, 64), (0, 0))


@pytest.fixture(scope="module")
def decoder():
    return map_reading_decoder()


def truth_of(grid: TileGrid, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if grid.is_volume:
        return np.stack([disc_truth(grid.shape[1:], rng, [], 5, radii=(6, 10)) for _ in range(grid.shape[0])])
    return disc_truth(grid.shape, rng, [], 8, radii=(6, 10))


def embedding_store(path, grid: TileGrid, truth: np.ndarray, model=None) -> Provenance:
    """A finished embedding store of block 0 holding every tile of `grid`: noise, the window's maps in channels 0-2.

    With `model`, the rest of each embedding is the model's own of the window's rendered image instead
    of noise, so that SAM decodes real masks from it (APG).
    """
    tiles = grid.block(0, grid.n_tiles)
    prov = Provenance("sha", IMG_SIZE, grid.to_dict(), 0, grid.n_tiles, "sig", "float32")
    root = stores.open_partial(path, "embeddings", asdict(prov), len(tiles))
    embeddings = np.stack([embedding_with_maps(truth[tile.window_slices()], seed=i) for i, tile in enumerate(tiles)])
    if model is not None:
        image = synthetic.render(truth, seed=0)
        for i, tile in enumerate(tiles):
            own = encode(model, [normalize(image[tile.window_slices()], (0.0, 255.0))])[0].numpy()
            embeddings[i, 3:] = own[3:]
    root.create_array("embeddings", data=embeddings)
    root["done"][:] = True
    root.attrs["stats"] = {"encoder_seconds": 1.0, "peak_mem_mb": 1.0}
    stores.finish(path)
    return prov


def expected_labels(decoder, store, grid: TileGrid, params: AisParams) -> list[np.ndarray]:
    """Each tile decoded alone and post-processed: what the block must store."""
    root = zarr.open_group(str(store), mode="r")
    out = []
    for i, tile in enumerate(grid.block(0, grid.n_tiles)):
        window = tile.window_shape
        scale = IMG_SIZE / max(window)
        input_size = (int(window[0] * scale + 0.5), int(window[1] * scale + 0.5))
        emb = torch.from_numpy(root["embeddings"][i][None])
        out.append(ais_labels(decode_maps(decoder, emb, input_size, window, model_size=IMG_SIZE)[0], params))
    return out


def test_ais_block_stores_each_windows_labels_whatever_the_batch(decoder, tmp_path):
    truth = truth_of(GRID, 2)
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth)
    params = AisParams(min_size=5, tiles_per_batch=1)
    expected = expected_labels(decoder, tmp_path / "emb.zarr", GRID, params)
    n_big = 0
    for tile, labels in zip(GRID.tiles(), expected):  # the windows' objects, found
        window = truth[tile.window_slices()]
        big = [t for t in np.unique(window[window > 0]) if (window == t).sum() >= 40]
        n_big += len(big)
        found = [np.bincount(labels[window == t]).argmax() for t in big]
        assert all(found) and len(set(found)) == len(big)
        if not big:
            continue
        ious = [
            ((window == t) & (labels == f)).sum() / ((window == t) | (labels == f)).sum() for t, f in zip(big, found)
        ]
        assert min(ious) > 0.6, ious
    assert n_big >= 5
    for batch, workers in ((1, 1), (3, 1), (1, 3), (2, 2)):  # workers: post-processing beside the decoder (GPU)
        out = tmp_path / f"seg{batch}_{workers}.zarr"
        stats = segment_block(
            None, tmp_path / "emb.zarr", prov, GRID, out, method="ais",
            params=replace(params, tiles_per_batch=batch), decoder=decoder, decoder_id=DECODER_ID, workers=workers,
        )  # fmt: skip
        assert stats["tiles"] == stats["computed"] == 3 and stats["device"] == "cpu"
        root = zarr.open_group(str(out), mode="r")
        for i, tile in enumerate(GRID.tiles()):
            labels = root[f"t{i}"][...]
            assert labels.dtype == np.uint32 and labels.shape == tile.window_shape
            np.testing.assert_array_equal(labels, expected[i])
    record = dict(zarr.open_group(str(tmp_path / "seg3_1.zarr"), mode="r").attrs["tilesam"]["segmentation"])
    assert {k: record[k] for k in asdict(prov)} == asdict(prov)
    assert record["method"] == "ais" and record["decoder"] == DECODER_ID
    assert record["params"] == params.postprocessing()  # the batch size is not part of what made the labels
    column = params_column(record)
    assert column["min_size"] == 5 and column["decoder"] == "test-decoder"


def test_batches_hold_one_window_shape_and_skip_done_tiles():
    tiles = TileGrid((100, 150), (64, 64), (8, 8)).tiles()  # windows of 4 shapes
    batches = ais_batches(tiles, [0, 1, 2, 3, 4, 5], 4)
    assert [i for b in batches for i in b] == [0, 1, 2, 3, 4, 5]
    assert all(len({tiles[i].window_shape for i in b}) == 1 and len(b) <= 4 for b in batches)
    assert ais_batches(tiles, [1, 4], 4) == [[1], [4]]  # windows (72, 80) and (44, 80)
    assert ais_batches(GRID.tiles(), [0, 1, 2], 4) == [[0, 1], [2]]
    same = TileGrid((64, 256), (64, 64), (0, 0)).tiles()
    assert ais_batches(same, [0, 1, 2, 3], 3) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_interrupted_ais_block_resumes_at_its_first_missing_tile(decoder, tmp_path, monkeypatch, workers):
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 3))
    params = AisParams(tiles_per_batch=1)
    calls = {"n": 0}

    def failing(maps, p, source=""):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("killed")
        return ais_labels(maps, p, source=source)

    monkeypatch.setattr(ais_module, "ais_labels", failing)
    out = tmp_path / "seg.zarr"
    kwargs = {"method": "ais", "params": params, "decoder": decoder, "decoder_id": DECODER_ID, "workers": workers}
    with pytest.raises(RuntimeError, match="killed"):
        segment_block(None, tmp_path / "emb.zarr", prov, GRID, out, **kwargs)
    assert not out.exists() and zarr.open_group(str(stores.partial_path(out)))["done"][:].tolist() == [1, 0, 0]
    monkeypatch.setattr(ais_module, "ais_labels", ais_labels)
    stats = segment_block(None, tmp_path / "emb.zarr", prov, GRID, out, **kwargs)
    assert stats["computed"] == 2
    expected = expected_labels(decoder, tmp_path / "emb.zarr", GRID, params)
    root = zarr.open_group(str(out), mode="r")
    for i in range(GRID.n_tiles):
        np.testing.assert_array_equal(root[f"t{i}"][...], expected[i])


def test_a_partial_store_of_other_ais_settings_or_decoder_is_moved_aside(decoder, tmp_path, monkeypatch):
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 4))
    for k, (params, decoder_id) in enumerate(((AisParams(min_size=9), DECODER_ID), (AisParams(), {"sha256": "other"}))):
        out = tmp_path / f"seg{k}.zarr"
        monkeypatch.setattr(ais_module, "ais_labels", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("killed")))
        with pytest.raises(RuntimeError):
            segment_block(
                None, tmp_path / "emb.zarr", prov, GRID, out, method="ais", decoder=decoder, decoder_id=DECODER_ID
            )
        monkeypatch.setattr(ais_module, "ais_labels", ais_labels)
        stats = segment_block(
            None, tmp_path / "emb.zarr", prov, GRID, out, method="ais", params=params, decoder=decoder,
            decoder_id=decoder_id,
        )  # fmt: skip
        assert stats["computed"] == stats["tiles"]  # nothing taken over from the other settings' partial store
        assert len(list(tmp_path.glob(f"seg{k}.zarr*.stale-*"))) == 1  # kept aside, not deleted


def test_a_volume_is_segmented_per_section(decoder, tmp_path):
    grid = TileGrid((2, 64, 64), (64, 64), (8, 8))
    truth = truth_of(grid, 5)
    prov = embedding_store(tmp_path / "emb.zarr", grid, truth)
    params = AisParams()
    segment_block(
        None, tmp_path / "emb.zarr", prov, grid, tmp_path / "seg.zarr", method="ais", params=params,
        decoder=decoder, decoder_id=DECODER_ID,
    )  # fmt: skip
    root = zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")
    expected = expected_labels(decoder, tmp_path / "emb.zarr", grid, params)
    for i in range(2):
        assert root[f"t{i}"].shape == (64, 64)
        np.testing.assert_array_equal(root[f"t{i}"][...], expected[i])
        assert root[f"t{i}"][...].max() == truth[i].max()  # each section's own objects


def test_ais_without_a_decoder_or_with_amg_params_is_an_error(tmp_path):
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 6))
    with pytest.raises(ValueError, match="needs the instance decoder of model m, none was given"):
        segment_block(
            None, tmp_path / "emb.zarr", prov, GRID, tmp_path / "seg.zarr", method="ais", model_id={"model": "m"}
        )
    with pytest.raises(ValueError, match="unknown segmentation method 'auto'"):
        segment_block(None, tmp_path / "emb.zarr", prov, GRID, tmp_path / "seg.zarr", method="auto")


# --- APG blocks: the same maps, prompts decoded by LiteMedSAM from the window's embedding ---


def expected_apg_labels(model, decoder, store, grid: TileGrid, params: ApgParams) -> list[np.ndarray]:
    """Each tile's maps decoded alone, then APG on its own embedding: what the block must store."""
    root = zarr.open_group(str(store), mode="r")
    out = []
    for i, tile in enumerate(grid.block(0, grid.n_tiles)):
        window = tile.window_shape
        scale = IMG_SIZE / max(window)
        input_size = (int(window[0] * scale + 0.5), int(window[1] * scale + 0.5))
        emb = torch.from_numpy(root["embeddings"][i][None])
        maps = decode_maps(decoder, emb, input_size, window, model_size=IMG_SIZE)[0]
        out.append(apg_labels(model, emb, maps, params))
    return out


def test_apg_block_stores_each_windows_labels_and_stage_seconds(lite_medsam, decoder, tmp_path, monkeypatch):
    import tilesam.segment.blocks as blocks

    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 7), lite_medsam)
    # LiteMedSAM, trained on boxes, answers points on these small windows with masks of a few pixels;
    # its box round gives larger ones (the labels only have to be the block's and the direct call's)
    params = ApgParams(min_size=0, refine_with_box_prompts=True, tiles_per_batch=2, prompts_per_batch=3)
    expected = expected_apg_labels(lite_medsam, decoder, tmp_path / "emb.zarr", GRID, params)
    assert sum(len(np.unique(e)) - 1 for e in expected) >= 3  # the windows' prompts gave masks
    monkeypatch.setattr(blocks, "time", Clock())  # every perf_counter() call is 1 s later
    out = tmp_path / "seg.zarr"
    stats = segment_block(
        lite_medsam, tmp_path / "emb.zarr", prov, GRID, out, method="apg", params=params, decoder=decoder,
        decoder_id=DECODER_ID,
    )  # fmt: skip
    assert stats["tiles"] == stats["computed"] == 3 and stats["device"] == "cpu"
    root = zarr.open_group(str(out), mode="r")
    for i, tile in enumerate(GRID.tiles()):
        labels = root[f"t{i}"][...]
        assert labels.dtype == np.uint32 and labels.shape == tile.window_shape
        np.testing.assert_array_equal(labels, expected[i])
    # batches [0, 1] and [2]: maps 1 s shared by two tiles or 1 s alone, then 1 s for prompts + masks, 1 s for NMS
    assert root["stage_seconds"][:].tolist() == [[0.5, 1.0, 1.0], [0.5, 1.0, 1.0], [1.0, 1.0, 1.0]]
    assert root["seconds"][:].tolist() == [2.5, 2.5, 3.0]
    cost = results.costs([out])
    assert (cost["maps_s_per_tile"], cost["prompts_masks_s_per_tile"], cost["nms_s_per_tile"]) == (2 / 3, 1.0, 1.0)
    assert cost["segment_s_per_image"] == 8.0
    record = dict(root.attrs["tilesam"]["segmentation"])
    assert record["method"] == "apg" and record["decoder"] == DECODER_ID
    assert record["params"] == params.postprocessing()  # batch sizes are not part of what made the labels
    assert params_column(record)["decoder"] == "test-decoder" and params_column(record)["nms_threshold"] == 0.9


def test_apg_windows_finished_on_worker_threads_give_the_same_labels(lite_medsam, decoder, tmp_path):
    """A GPU job's path (prompts, masks and NMS of a batch on threads beside the next batch's maps), on the CPU."""
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 7), lite_medsam)
    params = ApgParams(min_size=0, refine_with_box_prompts=True, tiles_per_batch=1, prompts_per_batch=3)
    expected = expected_apg_labels(lite_medsam, decoder, tmp_path / "emb.zarr", GRID, params)
    out = tmp_path / "seg.zarr"
    stats = segment_block(
        lite_medsam, tmp_path / "emb.zarr", prov, GRID, out, method="apg", params=params, decoder=decoder,
        decoder_id=DECODER_ID, workers=3,
    )  # fmt: skip
    assert stats["computed"] == 3
    root = zarr.open_group(str(out), mode="r")
    for i in range(GRID.n_tiles):
        np.testing.assert_array_equal(root[f"t{i}"][...], expected[i])
    assert np.isfinite(root["stage_seconds"][:]).all()


def test_an_interrupted_apg_block_resumes_and_other_settings_are_not_taken_over(
    lite_medsam, decoder, tmp_path, monkeypatch
):
    from tilesam.segment import apg as apg_module

    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 8), lite_medsam)
    params = ApgParams(min_size=0, refine_with_box_prompts=True)
    real, calls = apg_module.decode_prompts, []

    def killed_at_the_second_window(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two rounds (points, boxes) a window
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(apg_module, "decode_prompts", killed_at_the_second_window)
    out = tmp_path / "seg.zarr"
    kwargs = {"method": "apg", "decoder": decoder, "decoder_id": DECODER_ID}
    with pytest.raises(RuntimeError, match="killed"):
        segment_block(lite_medsam, tmp_path / "emb.zarr", prov, GRID, out, params=params, **kwargs)
    monkeypatch.setattr(apg_module, "decode_prompts", real)
    assert zarr.open_group(str(stores.partial_path(out)))["done"][:].tolist() == [1, 0, 0]
    stats = segment_block(lite_medsam, tmp_path / "emb.zarr", prov, GRID, out, params=params, **kwargs)
    assert stats["computed"] == 2
    expected = expected_apg_labels(lite_medsam, decoder, tmp_path / "emb.zarr", GRID, params)
    root = zarr.open_group(str(out), mode="r")
    for i in range(GRID.n_tiles):
        np.testing.assert_array_equal(root[f"t{i}"][...], expected[i])
    assert np.isfinite(root["stage_seconds"][:]).all()
    # another NMS threshold: a partial store of the old one is set aside, not resumed
    monkeypatch.setattr(apg_module, "decode_prompts", killed_at_the_second_window)
    calls.clear()
    with pytest.raises(RuntimeError):
        segment_block(lite_medsam, tmp_path / "emb.zarr", prov, GRID, tmp_path / "b.zarr", params=params, **kwargs)
    monkeypatch.setattr(apg_module, "decode_prompts", real)
    changed = replace(params, nms_threshold=0.5)
    stats = segment_block(lite_medsam, tmp_path / "emb.zarr", prov, GRID, tmp_path / "b.zarr", params=changed, **kwargs)
    assert stats["computed"] == 3 and len(list(tmp_path.glob("b.zarr*.stale-*"))) == 1


def test_apg_without_a_decoder_or_with_ais_params_is_an_error(lite_medsam, decoder, tmp_path):
    prov = embedding_store(tmp_path / "emb.zarr", GRID, truth_of(GRID, 9))
    with pytest.raises(ValueError, match="method apg needs the instance decoder of model m, none was given"):
        segment_block(
            lite_medsam, tmp_path / "emb.zarr", prov, GRID, tmp_path / "s.zarr", method="apg", model_id={"model": "m"}
        )
    with pytest.raises(TypeError, match="method apg takes ApgParams, got AisParams"):
        segment_block(
            lite_medsam, tmp_path / "emb.zarr", prov, GRID, tmp_path / "s.zarr", method="apg", params=AisParams(),
            decoder=decoder,
        )  # fmt: skip
