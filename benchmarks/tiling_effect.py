"""Does tiling hurt? mSA of tiled-and-stitched vs whole-image automatic segmentation on dsb2018.

For every image of ../shared/data/dsb2018 larger than one tile, the same model and AMG
parameters segment it twice: in one piece (one window covering the image) and tiled (tile 256,
halo 64: each window embedded, segmented, then stitched by tilesam.stitch.tiles). Both label images
are scored against the ground truth (tilesam.metrics, micro-sam's mSA). The issue's bar: the
tiled mean mSA is no more than 0.02 below the whole-image one.

The model is LiteMedSAM (the offline model), so AMG prompts a grid of boxes (its only prompt
kind); box sizes are fractions of the window, as in the workflow. Windows are embedded exactly as
the embed jobs do (tilesam.embed.normalize with the image's range; encode).

    /tmp/venv/bin/python benchmarks/tiling_effect.py [--tile 256] [--halo 64] [--points-per-side 6]
        [--box-sizes 0.12] [--pred-iou 0.6] [--stability 0.6] [--threads 1] [--limit N] [--report-only]

The tiled results are also stitched with `fill_background: false` (column mSA_tiled_nofill), to
show what filling a tile's background from its neighbours does.

Writes benchmarks/out/tiling_effect.csv (per image) and tiling_effect.md (means, the paired difference and its
standard error, the verdict, what the fill changed, and means by tiles per image); `--report-only` rewrites
the .md from the .csv.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch
from _common import OUT, REPO

from tilesam.config import AmgParams, StitchParams
from tilesam.embed import encode, normalize
from tilesam.metrics import segmentation_scores
from tilesam.models import load_model
from tilesam.segment.amg import generate_masks
from tilesam.segment.labels import masks_to_labels
from tilesam.stitch.tiles import stitch_in_memory
from tilesam.tiling import TileGrid

DATA = REPO.parent / "shared" / "data" / "dsb2018"


def segment_tiles(model, image: np.ndarray, grid: TileGrid, params: AmgParams) -> dict[int, np.ndarray]:
    """AMG labels of every window of the grid (a one-tile grid is the whole image).

    Per window what the workflow's embed and segment jobs do (tilesam.segment.blocks.segment_block),
    without the stores in between: normalise with the image's range, encode, generate_masks,
    masks_to_labels.
    """
    lo, hi = float(image.min()), float(image.max())
    tiles = {}
    for tile in grid.tiles():
        embedding = encode(model, [normalize(image[tile.window_slices()], (lo, hi))])
        masks = generate_masks(model, embedding, tile.window_shape, params)
        tiles[tile.id] = masks_to_labels(masks, tile.window_shape, with_background=params.with_background)
    return tiles


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--halo", type=int, default=64)
    p.add_argument("--points-per-side", type=int, default=6)
    p.add_argument("--box-sizes", type=float, nargs="+", default=[0.12])
    p.add_argument("--pred-iou", type=float, default=0.6)
    p.add_argument("--stability", type=float, default=0.6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit", type=int, help="only the first N qualifying images (a quick check)")
    p.add_argument("--report-only", action="store_true", help="summarise the existing tiling_effect.csv again")
    args = p.parse_args()
    if args.report_only:
        return report(pd.read_csv(OUT / "tiling_effect.csv"), "as in the run that wrote tiling_effect.csv")
    if not (args.data / "images").is_dir():
        print(f"needs the dsb2018 data in {args.data} (../shared beside the checkout)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    model = load_model("lite_medsam", device="cpu")
    params = AmgParams(
        points_per_side=args.points_per_side,
        pred_iou_thresh=args.pred_iou,
        stability_score_thresh=args.stability,
        prompt="box",
        box_sizes=tuple(args.box_sizes),
    )
    sizes = params.box_sizes
    rows = []
    paths = sorted((args.data / "images").glob("*.tif"))
    for path in paths:
        image = tifffile.imread(path)
        shape = image.shape[:2]
        if max(shape) <= args.tile:
            continue
        gt = tifffile.imread(args.data / "labels" / path.name)
        row = {"image": path.stem, "shape": "x".join(map(str, shape)), "n_objects": len(np.unique(gt)) - 1}
        whole_grid = TileGrid(shape, shape, (0, 0))
        tiled_grid = TileGrid(shape, (args.tile, args.tile), (args.halo, args.halo))
        for kind, grid in (("whole", whole_grid), ("tiled", tiled_grid)):
            t0 = time.perf_counter()
            tiles = segment_tiles(model, image, grid, params)
            labels = stitch_in_memory(grid, tiles, StitchParams())
            row[f"seconds_{kind}"] = time.perf_counter() - t0
            row[f"mSA_{kind}"] = segmentation_scores(gt, labels).msa
            row[f"tiles_{kind}"] = grid.n_tiles
        # the same tile results (the last loop's) stitched without filling background from neighbours
        unfilled = stitch_in_memory(tiled_grid, tiles, StitchParams(fill_background=False))
        row["mSA_tiled_nofill"] = segmentation_scores(gt, unfilled).msa
        rows.append(row)
        print(
            f"{len(rows):2d} {path.stem[:12]} {row['shape']:>9}  whole {row['mSA_whole']:.3f}  "
            f"tiled {row['mSA_tiled']:.3f} (no fill {row['mSA_tiled_nofill']:.3f})",
            flush=True,
        )
        if args.limit and len(rows) >= args.limit:
            break
    df = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    df.to_csv(OUT / "tiling_effect.csv", index=False, float_format="%.4f")
    settings = (
        f"tile {args.tile}, halo {args.halo}, points_per_side {args.points_per_side}, box_sizes {sizes}, "
        f"pred_iou_thresh {args.pred_iou}, stability_score_thresh {args.stability}"
    )
    return report(df, settings)


def report(df: pd.DataFrame, settings: str) -> int:
    """Means, the paired difference with its standard error, the fill's effect and the split by tile count."""
    whole, tiled = df["mSA_whole"].mean(), df["mSA_tiled"].mean()
    diff = df["mSA_tiled"] - df["mSA_whole"]
    fill = df["mSA_tiled"] - df["mSA_tiled_nofill"]
    verdict = "PASS" if tiled >= whole - 0.02 else "FAIL"
    by_tiles = df.groupby("tiles_tiled")[["mSA_whole", "mSA_tiled"]].agg(["mean"]).droplevel(1, axis=1)
    by_tiles["images"] = df.groupby("tiles_tiled").size()
    summary = (
        f"# Tiling effect on dsb2018 ({len(df)} images larger than one tile; LiteMedSAM box-grid AMG)\n\n"
        f"settings: {settings}\n\n"
        f"| | mean mSA | seconds |\n|---|---|---|\n"
        f"| whole image | {whole:.4f} | {df['seconds_whole'].sum():.0f} |\n"
        f"| tiled + stitched | {tiled:.4f} | {df['seconds_tiled'].sum():.0f} |\n"
        f"| tiled + stitched, no background fill | {df['mSA_tiled_nofill'].mean():.4f} | |\n\n"
        f"tiled - whole = {diff.mean():+.4f} (standard error {diff.std() / len(df) ** 0.5:.4f}; "
        f"bar: >= -0.02): {verdict}\n\n"
        f"background fill: raised {(fill > 0).sum()}, lowered {(fill < 0).sum()} of the "
        f"{(fill != 0).sum()} images it changed\n\n"
        f"by tiles per image:\n\n{by_tiles.to_markdown(floatfmt=('.0f', '.4f', '.4f', '.0f'))}\n"
    )
    (OUT / "tiling_effect.md").write_text(summary)
    print(summary)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
