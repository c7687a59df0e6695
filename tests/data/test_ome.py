"""Every kind of store tilesam writes is valid OME-Zarr 0.5 and opens in ome-zarr-py's reader.

Validation is ome-zarr-models' (`open_ome_zarr` guesses the group type, then
its 0.5 models check axes, datasets, `dimension_names` and `image-label`); it
does not resolve `image-label.source`, so that is checked here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Reader
from ome_zarr_models import open_ome_zarr
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel

from helpers.label_images import disc_truth
from helpers.label_images import tile_reader as truth_tiles
from tilesam import jobs
from tilesam.config import StitchParams, Tiling
from tilesam.data import io, ome
from tilesam.tiling import TileGrid

TILE = (128, 128)

# (image shape as written to the TIFF, ndim, axes of the stored image); 520 px so that a second level exists
CASES = {
    "2d": ((600, 520), 2, ("y", "x")),
    "3d": ((3, 520, 530), 3, ("z", "y", "x")),
    "rgb": ((520, 600, 3), 2, ("c", "y", "x")),
}


def _imported_image(tmp_path: Path, case: str) -> Path:
    shape, ndim, _ = CASES[case]
    pixels = np.random.default_rng(0).integers(0, 200, size=shape).astype(np.uint8)
    tifffile.imwrite(tmp_path / "raw.tif", pixels, photometric="rgb" if case == "rgb" else "minisblack")
    store = tmp_path / "results/images/d/a.ome.zarr"
    io.import_image(tmp_path / "raw.tif", store, ndim=ndim, tile_shape=TILE)
    return store


def _truth(spatial: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(1)
    sections = [disc_truth(spatial[-2:], rng, [], 30, radii=(5, 20)) for _ in range(int(np.prod(spatial[:-2])))]
    return np.stack(sections).reshape(spatial)


def _validated(store: Path, kind: type) -> Image | ImageLabel:
    """The store as ome-zarr-models reads it, asserting it is an OME-Zarr 0.5 group of `kind`."""
    model = open_ome_zarr(zarr.open_group(str(store), mode="r"), version="0.5")
    assert type(model) is kind, f"{store} validates as {type(model).__name__}, not {kind.__name__}"
    multiscale = model.ome_attributes.multiscales[0]
    assert len(multiscale.datasets) >= 2, "the pyramid's lower levels must be validated too"
    names = tuple(a.name for a in multiscale.axes)
    for dataset in multiscale.datasets:
        assert zarr.open_array(str(store / dataset.path), mode="r").metadata.dimension_names == names
    return model


def _level_shapes(store: Path, model: Image | ImageLabel) -> list[tuple[int, ...]]:
    return [zarr.open_array(str(store / d.path), mode="r").shape for d in model.ome_attributes.multiscales[0].datasets]


def _assert_source_resolves(labels: Path, image: Path) -> None:
    """`image-label.source.image` leads from the label store to its image, which validates and matches it."""
    model = _validated(labels, ImageLabel)
    source = model.ome_attributes.image_label.source.image
    assert (labels / source).resolve() == image.resolve()
    parent = _validated(labels / source, Image)
    label_levels, image_levels = _level_shapes(labels, model), _level_shapes(image, parent)
    spatial = len(label_levels[0])
    assert label_levels == [s[-spatial:] for s in image_levels], "labels and image pyramids differ"
    assert ome.open_level0(labels).dtype.kind in "iu"


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_image_is_valid_ome_zarr(tmp_path, case):
    store = _imported_image(tmp_path, case)
    model = _validated(store, Image)
    assert tuple(a.name for a in model.ome_attributes.multiscales[0].axes) == CASES[case][2]
    assert io.read_info(store).source == str(tmp_path / "raw.tif")  # tilesam's own attributes survive


@pytest.mark.parametrize("case", ["2d", "3d"])
def test_imported_labels_are_valid_and_point_at_their_image(tmp_path, case):
    image = _imported_image(tmp_path, case)
    truth = _truth(io.read_info(image).shape)
    tifffile.imwrite(tmp_path / "gt.tif", truth.astype(np.uint16), photometric="minisblack")
    labels = tmp_path / "results/labels/d/a.ome.zarr"
    io.import_labels(tmp_path / "gt.tif", labels, image=image)
    _assert_source_resolves(labels, image)
    np.testing.assert_array_equal(ome.open_level0(labels)[...], truth)


@pytest.mark.parametrize("case", ["2d", "3d"])
def test_stitched_segmentation_is_valid_and_points_at_its_image(tmp_path, case):
    image = _imported_image(tmp_path, case)
    info = io.read_info(image)
    tiling = Tiling(tile_shape=TILE, halo=(16, 16), tiles_per_block=8)
    grid = TileGrid(info.shape, tiling.tile_shape, tiling.halo)
    truth = _truth(info.shape)
    read = truth_tiles(truth, grid, seed=3)
    blocks = []
    for b in range(grid.n_blocks(tiling.tiles_per_block)):  # block stores as `segment` writes them
        root = zarr.open_group(str(tmp_path / f"blocks/b{b}.zarr"), mode="w")
        for i, tile in enumerate(grid.block(b, tiling.tiles_per_block)):
            root.create_array(f"t{i}", data=read(tile))
        blocks.append(str(tmp_path / f"blocks/b{b}.zarr"))
    out = tmp_path / "results/segmentation/d/a/model/amg/labels.ome.zarr"
    jobs.stitch(image=image, blocks=blocks, out=out, tiling=tiling, params=StitchParams(workers=1))
    _assert_source_resolves(out, image)
    assert ome.open_level0(out).shape == info.shape


def test_labels_open_in_ome_zarr_reader_with_their_image(tmp_path, caplog):
    """The way napari-ome-zarr opens a path: Reader(parse_url(path))() -> nodes, the image found via the source."""
    image = _imported_image(tmp_path, "2d")
    truth = _truth(io.read_info(image).shape)
    tifffile.imwrite(tmp_path / "gt.tif", truth)
    labels = tmp_path / "results/labels/d/a.ome.zarr"
    io.import_labels(tmp_path / "gt.tif", labels, image=image)
    with caplog.at_level(logging.DEBUG, logger="ome_zarr"):
        nodes = list(Reader(parse_url(str(labels)))())
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("ome_zarr") and r.levelno >= logging.WARNING]
    assert warned == []
    by_spec = {type(s): n for n in nodes for s in n.specs}
    assert Label in by_spec, "the store was not read as a label image"
    label_node = by_spec[Label]
    np.testing.assert_array_equal(np.asarray(label_node.data[0]), truth)
    assert [a["name"] for a in label_node.metadata["axes"]] == ["y", "x"]
    parents = [n for n in nodes if n is not label_node and Multiscales in map(type, n.specs)]
    assert len(parents) == 1 and Path(parents[0].zarr.path).resolve() == image.resolve()
    np.testing.assert_array_equal(np.asarray(parents[0].data[0]), ome.open_level0(image)[...])


def test_label_image_without_image_claims_no_source(tmp_path):
    arr = ome.create(tmp_path / "l.ome.zarr", (520, 520), np.uint32, TILE)
    arr[...] = _truth((520, 520))
    ome.build_pyramid(tmp_path / "l.ome.zarr", labels=True)
    model = _validated(tmp_path / "l.ome.zarr", ImageLabel)
    assert model.ome_attributes.image_label.source is None


def test_float_labels_and_mismatched_axes_are_refused(tmp_path):
    ome.create(tmp_path / "l.ome.zarr", (64, 64), np.float32, (32, 32))
    with pytest.raises(ValueError, match="integer"):
        ome.build_pyramid(tmp_path / "l.ome.zarr", labels=True)
    ome.create(tmp_path / "rgb.ome.zarr", (3, 64, 64), np.uint8, (3, 32, 32))  # created as a volume (z, y, x)
    with pytest.raises(ValueError, match="must agree on `channels`"):
        ome.build_pyramid(tmp_path / "rgb.ome.zarr", labels=False, channels=True)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_written_by_ome_zarr_py_imports(tmp_path, version):
    """Inputs from other tools: level 0 is found through the multiscales metadata ("s0" in ome-zarr-py), any version."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    pixels = np.random.default_rng(2).integers(0, 200, size=(300, 280)).astype(np.uint8)
    group = zarr.open_group(str(tmp_path / "in.ome.zarr"), mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(pixels, group, axes="yx", fmt=FormatV04() if version == "0.4" else FormatV05(), scale_factors=(2,))
    assert "0" not in group  # so only the metadata can say where level 0 is
    io.import_image(tmp_path / "in.ome.zarr", tmp_path / "a.ome.zarr", ndim=2, tile_shape=TILE)
    np.testing.assert_array_equal(ome.open_level0(tmp_path / "a.ome.zarr")[...], pixels)
    np.testing.assert_array_equal(ome.open_level0(tmp_path / "in.ome.zarr")[...], pixels)


@pytest.mark.parametrize(
    "shape, dtype, labels, channels",
    [
        ((1041, 777), np.uint32, True, False),  # odd sides, three levels
        ((3, 530, 601), np.uint16, True, False),  # a volume: y, x halve, z stays
        ((611, 1029), np.uint8, False, False),  # 2x2 means truncated to the dtype
        ((2, 4, 520, 523), np.float32, False, True),  # channels and z
    ],
)
def test_pyramid_levels_and_metadata_are_ome_zarr_pys(tmp_path, shape, dtype, labels, channels):
    """Each level equals ome-zarr-py's `downscale_nearest` / `local_mean` of the level above, and the metadata
    equals what its `write_multiscales_metadata` and `add_metadata` write for those levels."""
    import dask.array as da
    from ome_zarr.dask_utils import downscale_nearest, local_mean
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 50 if labels else 250, size=shape).astype(dtype)
    store = tmp_path / "p.ome.zarr"
    ome.create(store, shape, dtype, (1,) * (len(shape) - 2) + (200, 256), channels=channels)[...] = pixels
    n_levels = ome.build_pyramid(
        store, labels=labels, channels=channels, image=tmp_path / "i.ome.zarr" if labels else None
    )
    root = zarr.open_group(str(store), mode="r")
    assert n_levels == 1 + sum(1 for k in range(1, 5) if min(shape[-2:]) // 2**k >= 256)
    upper = pixels
    for level in range(1, n_levels):
        trimmed = da.from_array(upper)[..., : upper.shape[-2] // 2 * 2, : upper.shape[-1] // 2 * 2]
        factors = (1,) * (upper.ndim - 2) + (2, 2)
        want = (
            downscale_nearest(trimmed, factors)
            if labels
            else local_mean(trimmed, tuple(s // f for s, f in zip(trimmed.shape, factors)))
        ).compute()
        got = root[str(level)][...]
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        upper = got

    oracle = zarr.open_group(str(tmp_path / "oracle.zarr"), mode="w", zarr_format=3)
    write_multiscales_metadata(
        oracle,
        ome._datasets(n_levels, len(shape), labels=labels),
        fmt=FormatV05(),
        axes=ome._axes(len(shape), channels),
        name=store.name,
    )
    if labels:
        add_metadata(oracle, {"image-label": {"version": "0.5", "source": {"image": "../i.ome.zarr"}}}, fmt=FormatV05())
    assert root.attrs.asdict() == oracle.attrs.asdict()
    _validated(store, ImageLabel if labels else Image)
