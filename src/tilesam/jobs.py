"""Per-image steps that join the package's pieces: stitching and evaluation.

Each function reads and writes files (the workflow's unit of work) and leaves
the logic to the modules it calls.
"""

from __future__ import annotations

import json
from pathlib import Path

import zarr

from tilesam.config import StitchParams
from tilesam.data import io, ome
from tilesam.segment.blocks import tile_reader
from tilesam.stitch.tiles import StitchResult, stitch
from tilesam.tiling import TileGrid


def stitch_image(
    image: str | Path,
    blocks: list[str | Path],
    tile_shape: tuple[int, int],
    halo: tuple[int, int],
    tiles_per_block: int,
    out: str | Path,
    params: StitchParams | None = None,
) -> StitchResult:
    """Per-tile labels of all blocks of an image -> one OME-Zarr label image at `out`."""

    info = io.read_info(image)
    grid = TileGrid(info.shape, tile_shape, halo)
    if len(blocks) != grid.n_blocks(tiles_per_block):
        raise ValueError(
            f"{image}: {len(blocks)} block stores given, the tile grid has {grid.n_blocks(tiles_per_block)}"
        )
    chunks = (1,) * (len(info.shape) - 2) + tuple(min(t, s) for t, s in zip(tile_shape, info.shape[-2:]))
    labels = ome.create(out, info.shape, "uint32", chunks, attrs={"tilesam": {"image": str(image)}})
    result = stitch(grid, tile_reader(blocks, grid, tiles_per_block), labels, params)
    ome.build_pyramid(out, labels=True)
    return result


def evaluate_image(
    pred: str | Path, gt: str | Path, out: str | Path, meta: dict | None = None, blocks: list[str | Path] = ()
) -> dict:
    """Scores of a stitched label image against ground truth, with the blocks' costs, written as JSON."""
    from tilesam.metrics import segmentation_scores
    from tilesam.segment.blocks import costs

    p, g = ome.open_level0(pred), ome.open_level0(gt)
    if p.shape != g.shape:
        raise ValueError(f"{pred} has shape {p.shape} but its ground truth {gt} has {g.shape}")
    scores = segmentation_scores(g[...], p[...]).as_dict()
    record = {**(meta or {}), "iteration": 0, **(costs(blocks) if blocks else {}), **scores}
    if blocks:  # the parameters the blocks were segmented with (after any threshold search)
        seg = zarr.open_group(str(blocks[0]), mode="r").attrs["tilesam"]["segmentation"]
        record["params"] = json.dumps({**seg["params"], "prompt": seg["prompt"], "box_sizes": seg["box_sizes"]})
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=1))
    return record
