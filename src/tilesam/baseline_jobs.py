"""The classical baseline's jobs (tilesam.segment.classical): no model, so every SAM row has a floor.

One `tilesam` subcommand each, listed in `tilesam.jobs.JOBS`; their block stores have the models'
layout, so `stitch` and `evaluate` treat the baseline like any model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from tilesam import config as schema
from tilesam.config import ClassicalGrid, ClassicalParams, StitchParams, Tiling
from tilesam.relay import Block, Image, In, Json, Out, Output, Param
from tilesam.runtime import write_json

log = logging.getLogger("tilesam")
Search = Annotated[str | None, In(help="the baseline's search table (CSV, best first): its best sigma and h win")]
CLASSICAL_SEARCHED = ("sigma", "h")  # the grid's sigma_values x h_values


def classical_foreground(*, image: Image, out: Output, params: ClassicalParams) -> dict:
    """The classical baseline's Otsu threshold of a whole image."""
    from tilesam.segment.classical import image_foreground

    foreground = asdict(image_foreground(image, params.foreground))
    write_json(out, foreground)
    log.info("%s: foreground %s", image, foreground)
    return foreground


def classical_segment(
    *,
    image: Image,
    threshold: Annotated[str, In(help="JSON of `tilesam classical-foreground`")],
    block: Block,
    search: Search = None,
    out: Output,
    tiling: Tiling,
    params: ClassicalParams,
) -> dict:
    """The classical baseline on one block of tiles."""
    from tilesam.data import io
    from tilesam.segment import classical

    params = schema.best_row(params, search, CLASSICAL_SEARCHED) if search else params
    rule = classical.Foreground(**json.loads(Path(threshold).read_text()))
    grid = tiling.grid(io.read_info(image).shape)
    stats = classical.segment_block(image, grid, block, tiling.block_size(grid.n_tiles), out, rule, params)
    log.info("classical block %d: %s", block, stats)
    return stats


def classical_search(
    *,
    images: Annotated[Json, Param(help='JSON list of {"image", "gt"}')],
    out: Annotated[str, Out(help="CSV: mSA per setting, best first")],
    tiling: Tiling,
    params: ClassicalParams,
    grid: ClassicalGrid,
    stitch: StitchParams,
) -> Any:
    """Grid search of the classical baseline's sigma and h."""
    from tilesam.data import io
    from tilesam.segment import classical

    searched = []
    for item in images:
        tile_grid = tiling.grid(io.read_info(item["image"]).shape)
        searched.append(classical.search_image(item["image"], item["gt"], tile_grid, params.foreground))
    table = classical.search_classical(searched, params, grid, stitch)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    log.info("best classical setting: %s (on %d images)", dict(table.iloc[0]), len(images))
    return table
