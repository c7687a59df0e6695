"""A large image and volume through the workflow's block jobs, and the peak memory of every job.

1. Writes a synthetic 2D image (default 4096 x 4096) and volume (default 8 x 2048 x 2048) of
   fluorescence nuclei, uint16, as tiled zlib TIFFs, into `<work>/data/`. They are rendered in
   pieces of 1024 x 1024 (tilesam.data.synthetic, nuclei cut by a piece's border left out) into a
   memory-mapped scratch file, then written tile by tile: neither is ever one array in memory.
2. Writes `<work>/config/config.yaml`: lite_medsam on CPU, offline, embeddings not kept, and a
   small box grid for AMG (this run is about memory and job structure, not segmentation quality).
3. Runs `snakemake --cores 2` with this repository's Snakefile in `<work>`, targeting the stitched
   labels of both inputs: import_image, embed and segment per block of tiles, stitch.
4. Reads the run's Snakemake benchmark files (`<work>/logs/benchmarks/<rule>/**.tsv`; `max_rss` is
   the summed RSS of the job's processes, sampled every 0.5 s for 15 s, then every 30 s) and the
   embed/segment jobs' own peak (getrusage, stored in the segmentation block stores), prints a
   table and writes it to benchmarks/out/large_run.md. The largest process of the whole run
   (getrusage of this script's children, exact) is reported too. Exits 1 if any of these peaks
   reaches `--limit-mb` (4096).

    python benchmarks/large_run.py                                   # full size, about 30 min on 2 cores
    python benchmarks/large_run.py --size 1024 --volume 2 512 512 --tiles-per-block 2 --work /tmp/large_small
    python benchmarks/large_run.py --method ais --model results/finetuned/demo_train/lite_medsam.pth \
        --work /tmp/large_ais   # AIS with the default run's finetuned LiteMedSAM (it has a decoder)

Measure in a fresh `--work` folder: in a finished one Snakemake has nothing to do, and the script
only re-reads the benchmark files (the synthetic inputs are kept and reused if of the same shape).
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml
import zarr
from _common import OUT, REPO

from tilesam.data.synthetic import SyntheticSpec, make_labels, render
from tilesam.models.spec import model_id
from tilesam.tiling import TileGrid

PIECE = 1024  # side of the pieces the synthetic data is rendered in
TIFF_TILE = 256
DENSITY = 48 / (512 * 640)  # nuclei per pixel, as in the demo's large image


def render_piece(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Synthetic nuclei (uint16, 12-bit range) filling `shape`; none cut by the piece's border."""
    layers = max(1.0, shape[0] / 4) if len(shape) == 3 else 1.0
    n = max(1, int(DENSITY * shape[-1] * shape[-2] * layers))
    labels = make_labels(SyntheticSpec("piece", shape, n, (9.0, 22.0), seed))
    edges = [labels[..., 0, :], labels[..., -1, :], labels[..., :, 0], labels[..., :, -1]]
    cut = np.unique(np.concatenate([e.ravel() for e in edges]))
    labels[np.isin(labels, cut[cut > 0])] = 0
    return render(labels, seed).astype(np.uint16) * 16


def write_synthetic(path: Path, shape: tuple[int, ...], seed: int) -> None:
    """A tiled TIFF of synthetic nuclei, rendered piece by piece into a memmap, written tile by tile."""
    if path.exists():
        with tifffile.TiffFile(path) as tif:
            if tif.series[0].shape == shape:
                return
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_suffix(".npy")
    canvas = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.uint16, shape=shape)
    height, width = shape[-2:]
    for k, (y, x) in enumerate((y, x) for y in range(0, height, PIECE) for x in range(0, width, PIECE)):
        piece = (*shape[:-2], min(PIECE, height - y), min(PIECE, width - x))
        canvas[..., y : y + piece[-2], x : x + piece[-1]] = render_piece(piece, seed + k)
    canvas.flush()

    def tiles(canvas=canvas):
        pages = canvas.reshape(-1, height, width)
        for page in pages:
            for y in range(0, height, TIFF_TILE):
                for x in range(0, width, TIFF_TILE):
                    tile = np.asarray(page[y : y + TIFF_TILE, x : x + TIFF_TILE])
                    yield np.pad(tile, ((0, TIFF_TILE - tile.shape[0]), (0, TIFF_TILE - tile.shape[1])))

    tmp = path.with_suffix(".part.tif")
    tifffile.imwrite(
        tmp,
        tiles(),
        shape=shape,
        dtype=np.uint16,
        tile=(TIFF_TILE, TIFF_TILE),
        compression="zlib",
        photometric="minisblack",
    )
    tmp.rename(path)
    del canvas
    scratch.unlink()


def write_config(work: Path, args) -> dict:
    config = {
        "datasets": {
            "large2d": {"images": "data/large2d/*.tif", "ndim": 2},
            "large3d": {"images": "data/large3d/*.tif", "ndim": 3},
        },
        "models": [args.model],
        "device": "cpu",
        "offline": True,
        "segmentation": {
            "methods": [args.method],
            "tile_shape": [args.tile, args.tile],
            "halo": [args.halo, args.halo],
            "tiles_per_block": args.tiles_per_block,
            "amg": {
                "prompt": "box",
                "box_sizes": [0.12],
                "points_per_side": args.points_per_side,
                "pred_iou_thresh": 0.8,
                "stability_score_thresh": 0.9,
            },
        },
        "embeddings": {"keep_embeddings": False, "batch_size": args.batch_size},
    }
    (work / "config").mkdir(parents=True, exist_ok=True)
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def read_benchmarks(work: Path) -> list[dict]:
    rows = []
    root = work / "logs" / "benchmarks"
    for path in sorted(root.rglob("*.tsv")):
        rule, *job = path.relative_to(root).with_suffix("").parts
        with path.open() as handle:
            for rec in csv.DictReader(handle, delimiter="\t"):
                rows.append(
                    {
                        "rule": rule,
                        "job": "/".join(job),
                        "s": float(rec["s"]),
                        "max_rss": float(rec["max_rss"]) if rec["max_rss"] != "NA" else float("nan"),
                        "cpu_time": float(rec["cpu_time"]),
                    }
                )
    return rows


def store_peaks(work: Path) -> list[float]:
    """The embed/segment jobs' own peak RSS (MB, getrusage), as the segmentation block stores record it."""
    return [
        float(zarr.open_group(str(p), mode="r").attrs["stats"]["peak_mem_mb"])
        for p in sorted((work / "results" / "segmentation").rglob("block*.zarr"))
    ]


def report(args, rows: list[dict], peaks: list[float], largest_mb: float, wall: float, grids: dict) -> str:
    lines = [
        f"# Large run: {args.size} x {args.size} image and {' x '.join(map(str, args.volume))} volume",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPUs; `snakemake --cores {args.cores}`, "
        f"model {args.model} on CPU, tile {args.tile} + halo {args.halo}, {args.tiles_per_block} tiles per block, "
        f"batch {args.batch_size}, "
        + (f"AMG box grid {args.points_per_side}x{args.points_per_side}." if args.method == "amg" else "AIS."),
        "",
        *(f"- {name}: {g.n_tiles} tiles in {g.n_blocks(args.tiles_per_block)} blocks" for name, g in grids.items()),
        f"- wall time of the whole run: {wall / 60:.1f} min",
        "",
        "| rule | jobs | max s | total s | max max_rss MB |",
        "|---|---|---|---|---|",
    ]
    for rule in sorted({r["rule"] for r in rows}):
        mine = [r for r in rows if r["rule"] == rule]
        lines.append(
            f"| {rule} | {len(mine)} | {max(r['s'] for r in mine):.0f} | {sum(r['s'] for r in mine):.0f} "
            f"| {max(r['max_rss'] for r in mine):.0f} |"
        )
    lines += [
        "",
        f"- largest max_rss of any job (Snakemake benchmark files): {max(r['max_rss'] for r in rows):.0f} MB",
        f"- embed/segment jobs' own peak RSS (getrusage, from the block stores): {max(peaks, default=0):.0f} MB",
        f"- largest single process of the whole run (getrusage of all children): {largest_mb:.0f} MB",
        "",
        "| rule | job | s | max_rss MB | cpu s |",
        "|---|---|---|---|---|",
        *(f"| {r['rule']} | {r['job']} | {r['s']:.1f} | {r['max_rss']:.0f} | {r['cpu_time']:.1f} |" for r in rows),
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/large_run"), help="run folder (outside the repo)")
    parser.add_argument("--size", type=int, default=4096, help="side of the 2D image")
    parser.add_argument("--volume", type=int, nargs=3, default=[8, 2048, 2048], metavar=("Z", "Y", "X"))
    parser.add_argument("--model", default="lite_medsam")
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--halo", type=int, default=64)
    parser.add_argument("--tiles-per-block", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--points-per-side", type=int, default=3, help="AMG box grid per side")
    parser.add_argument("--method", choices=["amg", "ais"], default="amg", help="ais: --model needs a decoder")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--limit-mb", type=float, default=4096)
    parser.add_argument("--out", type=Path, default=OUT / "large_run.md")
    args = parser.parse_args()
    work = args.work.resolve()
    if Path(args.model).is_file():  # a checkpoint: absolute, as the run in `work` must find it
        args.model = str(Path(args.model).resolve())

    t0 = time.perf_counter()
    write_synthetic(work / "data" / "large2d" / "image.tif", (args.size, args.size), seed=100)
    write_synthetic(work / "data" / "large3d" / "volume.tif", tuple(args.volume), seed=200)
    print(f"synthetic data in {work / 'data'} ({time.perf_counter() - t0:.0f} s)", flush=True)
    config = write_config(work, args)
    grids = {
        "large2d/image": TileGrid((args.size, args.size), (args.tile,) * 2, (args.halo,) * 2),
        "large3d/volume": TileGrid(tuple(args.volume), (args.tile,) * 2, (args.halo,) * 2),
    }
    targets = [f"results/segmentation/{name}/{model_id(args.model)}/{args.method}/labels.ome.zarr" for name in grids]
    snakemake = Path(sys.executable).with_name("snakemake")
    command = [
        str(snakemake if snakemake.exists() else "snakemake"),
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(work),
        "--configfile",
        str(work / "config" / "config.yaml"),
        "--cores",
        str(args.cores),
        "--printshellcmds",
        *targets,
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    print(" ".join(command), f"\nlog: {work / 'snakemake.log'}", flush=True)
    t0 = time.perf_counter()
    with (work / "snakemake.log").open("w") as log:
        rc = subprocess.run(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        print(f"snakemake failed ({rc}); see {work / 'snakemake.log'}")
        return rc
    largest_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    rows, peaks = read_benchmarks(work), store_peaks(work)
    text = report(args, rows, peaks, largest_mb, wall, grids)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n\nConfig:\n\n```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```\n")
    print(text, f"\n\nwrote {args.out}", sep="")
    worst = max([r["max_rss"] for r in rows] + peaks + [largest_mb])
    if not worst < args.limit_mb:
        print(f"FAIL: a job peaked at {worst:.0f} MB, not below {args.limit_mb:.0f} MB")
        return 1
    print(f"OK: every job's peak memory is below {args.limit_mb:.0f} MB (largest {worst:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
