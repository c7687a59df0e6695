"""The classical baseline: Otsu foreground, h-maxima seeded watershed, tiled and stitched, searched."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from tilesam.config import ClassicalGrid, ClassicalParams
from tilesam.data import io, synthetic
from tilesam.metrics import segmentation_scores
from tilesam.segment import classical
from tilesam.segment.results import tile_reader
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import TileGrid


def _demo(name: str) -> tuple[np.ndarray, np.ndarray]:
    spec = synthetic.demo_specs()[name]
    gt = synthetic.make_labels(spec)
    return synthetic.render(gt, spec.seed), gt


def _foreground(image: np.ndarray, side: str = "auto") -> classical.Foreground:
    counts, edges = np.histogram(image, bins=classical.N_BINS, range=(float(image.min()), float(image.max())))
    return classical.foreground_from_histogram(counts, edges, side)


@pytest.fixture(scope="module")
def nuclei() -> tuple[np.ndarray, np.ndarray]:
    return _demo("nuclei_large")  # 512 x 640, 48 synthetic nuclei, some touching


def test_finds_most_demo_nuclei_with_the_default_settings(nuclei):
    image, gt = nuclei
    scores = segmentation_scores(gt, classical.segment_window(image, _foreground(image), ClassicalParams()))
    assert scores.recall > 0.75 and scores.sa50 > 0.6
    assert scores.msa > 0.3  # a floor, not a SAM-level result (0.44 measured)


def test_touching_nuclei_are_split_by_the_seeds():
    gt = np.zeros((60, 90), np.uint16)
    yy, xx = np.mgrid[:60, :90]
    gt[(yy - 30) ** 2 + (xx - 30) ** 2 < 15**2] = 1
    gt[((yy - 30) ** 2 + (xx - 55) ** 2 < 15**2) & (gt == 0)] = 2  # overlapping disks: one blob
    image = np.where(gt > 0, 200.0, 20.0)
    fg = _foreground(image)
    assert classical.segment_window(image, fg, ClassicalParams(sigma=0, h=1.0)).max() == 2
    assert classical.segment_window(image, fg, ClassicalParams(sigma=0, h=30.0)).max() == 1  # h too high: one seed


def test_auto_foreground_is_the_smaller_side_whatever_the_polarity(nuclei):
    image, gt = nuclei
    bright, dark = _foreground(image), _foreground(image.max() - image)
    assert bright.bright and not dark.bright
    params = ClassicalParams()
    on_bright = segmentation_scores(gt, classical.segment_window(image, bright, params)).msa
    on_dark = segmentation_scores(gt, classical.segment_window(image.max() - image, dark, params)).msa
    assert on_dark == pytest.approx(on_bright, abs=0.02)  # the same up to the histogram's bin edges
    assert not _foreground(image, "dark").bright and _foreground(image.max() - image, "bright").bright
    flat = np.full((20, 20), 7.0)
    assert classical.segment_window(flat, _foreground(flat), params).max() == 0  # a constant image has no objects


def test_tiled_and_stitched_matches_the_whole_image(nuclei):
    image, gt = nuclei
    fg, params = _foreground(image), ClassicalParams()
    whole = segmentation_scores(gt, classical.segment_window(image, fg, params)).msa
    grid = TileGrid(gt.shape, (256, 256), (48, 48))
    tiles = {t.id: classical.segment_window(image[t.window_slices()], fg, params) for t in grid.tiles()}
    tiled = segmentation_scores(gt, stitch_in_memory(grid, tiles)).msa
    assert tiled == pytest.approx(whole, abs=0.03)


def test_blocks_of_an_imported_image_stitch_like_the_models(tmp_path, nuclei):
    image, gt = nuclei
    tifffile.imwrite(tmp_path / "img.tif", image.astype(np.uint16))
    imported = tmp_path / "img.ome.zarr"
    io.import_image(tmp_path / "img.tif", imported, ndim=2, tile_shape=(256, 256))
    fg = classical.image_foreground(imported, "auto")
    assert fg == _foreground(image.astype(np.uint16))  # the streamed histogram is the whole image's
    grid, params = TileGrid(gt.shape, (256, 256), (48, 48)), ClassicalParams()
    stores = [str(tmp_path / f"block{b}.zarr") for b in range(grid.n_blocks(4))]
    for b, store in enumerate(stores):
        stats = classical.segment_block(imported, grid, b, 4, store, fg, params)
        assert stats["computed"] == stats["tiles"] and stats["encoder_seconds"] is None
    read = tile_reader(stores, grid, 4)
    stitched = stitch_in_memory(grid, {t.id: read(t) for t in grid.tiles()})
    expected = {t.id: classical.segment_window(image[t.window_slices()], fg, params) for t in grid.tiles()}
    np.testing.assert_array_equal(stitched, stitch_in_memory(grid, expected))
    # a rerun of a finished block recomputes nothing (resumable like the model blocks)
    again = classical.segment_block(imported, grid, 0, 4, stores[0], fg, params)
    assert again["tiles"] == 4


def test_search_is_best_first_deterministic_and_beats_a_bad_setting():
    images = []
    for name in ("nuclei_small", "nuclei_large"):
        image, gt = _demo(name)
        grid = TileGrid(gt.shape, (256, 256), (32, 32))
        window_of = lambda tile, image=image: image[tile.window_slices()]  # noqa: E731
        images.append(classical.SearchImage(name, grid, window_of, _foreground(image), gt))
    grid = ClassicalGrid(sigma_values=(0.0, 1.0, 4.0), h_values=(1.0, 30.0))
    table = classical.search_classical(images, ClassicalParams(), grid)
    assert len(table) == 6 and table["mSA"].is_monotonic_decreasing
    assert table.iloc[-1]["sigma"] == 4.0  # smoothing this much blurs neighbours together
    assert table.iloc[0]["sigma"] < 4.0 and table.iloc[0]["mSA"] > table.iloc[-1]["mSA"] + 0.1
    assert table.equals(classical.search_classical(images, ClassicalParams(), grid))


def test_searched_takes_the_best_row(tmp_path):
    from tilesam.baseline_jobs import CLASSICAL_SEARCHED
    from tilesam.config import best_row

    (tmp_path / "s.csv").write_text("sigma,h,mSA\n2.0,4.0,0.5\n0.0,1.0,0.4\n")
    params = best_row(ClassicalParams(min_size=3), tmp_path / "s.csv", CLASSICAL_SEARCHED)
    assert (params.sigma, params.h, params.min_size) == (2.0, 4.0, 3)
