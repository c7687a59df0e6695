"""Embedding stores for the tests of the embed and segment steps: a synthetic image imported and
embedded by a real model, its provenance record, and a clock that makes job timings exact."""

from __future__ import annotations

from pathlib import Path

from tilesam.data import io, synthetic
from tilesam.embed import Provenance, embed_block
from tilesam.tiling import TileGrid


class Clock:
    """A stand-in for the `time` module of the code under test: each perf_counter() call is 1 s later."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def import_synthetic(directory: Path, spec: synthetic.SyntheticSpec, tile_shape: tuple[int, int]) -> Path:
    """`spec` written as `<name>.tif` (labels `<name>_gt.tif`) in `directory`, imported as `<name>.ome.zarr`."""
    tif = directory / f"{spec.name}.tif"
    synthetic.write_demo(spec, tif, directory / f"{spec.name}_gt.tif")
    image = directory / f"{spec.name}.ome.zarr"
    io.import_image(tif, image, ndim=2, tile_shape=tile_shape)
    return image


def provenance(model, image: Path, grid: TileGrid, *, block=0, tiles_per_block=4, dtype="float32") -> Provenance:
    """The embed step's record of a block of `image` (a made-up encoder hash)."""
    return Provenance(
        "encoder-sha-test",
        int(model.image_encoder.img_size),
        grid.to_dict(),
        block,
        tiles_per_block,
        io.read_info(image).signature,
        dtype,
    )


def embedded_block(model, directory: Path, spec: synthetic.SyntheticSpec, tile_shape: tuple[int, int]):
    """Every tile (no halo) of `spec` as block 0, embedded by `model` into `directory`/emb.zarr:
    (store, provenance, grid)."""
    image = import_synthetic(directory, spec, tile_shape)
    grid = TileGrid(io.read_info(image).shape, tile_shape, (0, 0))
    prov = provenance(model, image, grid, tiles_per_block=grid.n_tiles)
    embed_block(model, prov, image, grid, directory / "emb.zarr")
    return directory / "emb.zarr", prov, grid
