"""The GPU check: tiles per second per stage and end to end, on whatever device this machine has.

One command, for the day a GPU is lent (small sizes by default on a CPU; a test runs it tiny):

    python benchmarks/gpu_check.py                      # cuda if torch sees one, else cpu
    python benchmarks/gpu_check.py --size 4096 --volume 16 2048 2048 --stage-tiles 256   # the issue's sizes
    python benchmarks/gpu_check.py --tiny               # seconds on a CPU: that it works, not speed
    python benchmarks/gpu_check.py --no-e2e --size 8192 --stage-tiles 2 --feed-tiles 256 --feed-repeats 3   # the data path on a CPU

1. Stages, per model (vit_b and vit_t with random weights, LiteMedSAM with its real ones), on the
   512-pixel tiles of a synthetic uint16 image: `read` (window read, decoded and mapped to grey
   levels on the host, one thread, each chunk once as the embed jobs read), `prepare` (the levels to
   the device, resized and normalised there), `encode` (the image encoder, batched, `precision:
   auto`), `decode` (the instance decoder's maps, batched), `prompts` (the mask decoder on 64 box
   prompts a tile), `write` (a float32 embedding into a zarr store). Then the data path alone on
   `--feed-tiles` tiles: `supply`, tiles read, decoded and prepared per host CPU-second on one torch
   thread (what one host core can feed a GPU: "reading, decoding, resizing"; on a CPU device the
   resize and normalisation count, on a GPU they run there), and `feed`: `embed_block`
   with the encoder replaced by one that returns zeros (reader thread, device preparation and the
   writer of the 4 MB float32 embeddings), per second and per CPU-second. The process keeps freed
   memory as embed jobs do (`tilesam.runtime.keep_freed_memory`). On a GPU also the bfloat16
   encoder's mask IoU against float32.
2. End to end: `snakemake` on a `--size`^2 image and a `--volume` stack per model (AIS with a
   random decoder; blocks sized by `tilesam.costs.block_size` for the device), tiles per second of
   the whole run, and per job the fraction of its wall time spent on tiles (the block stores'
   per-tile seconds over the job's benchmark-file seconds). Needs `snakemake` on the PATH.

Prints markdown tables and writes them to benchmarks/out/gpu_check.md (or --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml
import zarr
from _common import OUT, REPO
from large_run import write_synthetic

from tilesam.costs import block_size
from tilesam.data import headers, io
from tilesam.data.windows import WindowReader
from tilesam.embed import Provenance, device_input, embed_block, encode_input, levels, resolve_precision
from tilesam.models.load import build_sam, load_model
from tilesam.models.spec import model_id
from tilesam.models.unetr import InstanceDecoder, decoder_upscale
from tilesam.runtime import keep_freed_memory
from tilesam.tiling import TileGrid

MODELS = {"vit_b": "vit_b", "vit_t": "vit_t", "lite_medsam": "lite_medsam_tinyvit"}
TILE, HALO = 512, 64


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, func, *args):
    """(result, wall seconds, CPU seconds of this process) of one call, the device synchronised."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    result = func(*args)
    sync(device)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def model_of(name: str, device: str):
    torch.manual_seed(0)
    sam = load_model("lite_medsam", device="cpu") if name == "lite_medsam" else build_sam(MODELS[name])
    return sam.to(device).eval()


def checkpoint_with_decoder(name: str, path: Path) -> Path:
    """The model's weights and a random instance decoder as one training checkpoint (what AIS loads)."""
    if not path.exists():
        sam = model_of(name, "cpu")
        torch.manual_seed(1)
        decoder = InstanceDecoder(upscale=decoder_upscale(sam))
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model_state": sam.state_dict(), "decoder_state": decoder.state_dict()}, path)
    return path


class ZeroEncoder(torch.nn.Module):
    """An image encoder that returns zeros: what is left of a job is its data path."""

    def __init__(self, img_size: int) -> None:
        super().__init__()
        self.img_size = img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros((x.shape[0], 256, 64, 64), device=x.device)


def _boxes(n: int, side: int, device) -> torch.Tensor:
    """n boxes on a grid, in the model's input frame (AMG's box grid)."""
    k = int(np.ceil(np.sqrt(n)))
    centres = (np.arange(k) + 0.5) * side / k
    half = side / k / 2
    boxes = [[x - half, y - half, x + half, y + half] for y in centres for x in centres][:n]
    return torch.tensor(boxes, dtype=torch.float32, device=device)


def _masks(sam, embedding: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    sparse, dense = sam.prompt_encoder(points=None, boxes=boxes, masks=None)
    logits, _ = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    return logits[:, 0] > 0


@torch.no_grad()
def stages(
    name: str,
    image: Path,
    work: Path,
    device: torch.device,
    n_tiles: int,
    batch: int,
    feed_tiles: int | None = None,
    feed_repeats: int = 1,
) -> dict:
    """Tiles per second of each stage of one model on the first `n_tiles` tiles of `image` (the data path
    alone, `feed`, on the first `feed_tiles`: it is fast, so it needs more tiles to be timed)."""
    sam = model_of(name, str(device))
    info = io.read_info(image)
    pixels = zarr.open_array(str(image / "0"), mode="r")
    grid = TileGrid(info.shape, (TILE, TILE), (HALO, HALO))
    tiles = grid.block(0, n_tiles)
    n = len(tiles)
    row: dict = {"model": name, "tiles": n, "batch": batch}

    def read():  # as the embed jobs read: each chunk decoded and mapped to grey levels once (`WindowReader`)
        reader = WindowReader(pixels, info.channels, transform=partial(levels, intensity_range=info.intensity_range))
        return [reader(t.window_slices()) for t in tiles]

    windows, wall, cpu = timed(device, read)
    row["read"], row["read_cpu_ms"] = n / wall, 1000 * cpu / n
    batches = [windows[i : i + batch] for i in range(0, n, batch)]
    inputs, wall, _ = timed(device, lambda: [device_input(sam, b) for b in batches])
    row["prepare"] = n / wall
    precision = resolve_precision("auto", sam)
    encode_input(sam, inputs[0], precision)  # warm-up: kernels, cuDNN autotuning
    embeddings, wall, _ = timed(device, lambda: [encode_input(sam, x, precision) for x in inputs])
    row["encode"], row["precision"] = n / wall, precision
    decoder = InstanceDecoder(upscale=decoder_upscale(sam)).to(device).eval()
    decoder(embeddings[0])
    _, wall, _ = timed(device, lambda: [decoder(e) for e in embeddings])
    row["decode"] = n / wall
    boxes = _boxes(64, int(sam.image_encoder.img_size), device)
    _, wall, _ = timed(device, lambda: [_masks(sam, e[j : j + 1], boxes) for e in embeddings for j in range(len(e))])
    row["prompts"] = n / wall
    # uncompressed, as the embed jobs' stores
    store = zarr.create_array(str(work / f"write_{name}.zarr"), shape=(n, 256, 64, 64), chunks=(1, 256, 64, 64), dtype="float32", compressors=None, overwrite=True)  # fmt: skip
    flat = torch.cat(embeddings).cpu().numpy()

    def write():
        for i in range(n):
            store[i] = flat[i]

    _, wall, _ = timed(device, write)
    row["write"] = n / wall
    if device.type == "cuda" and precision != "float32":
        full = torch.cat([encode_input(sam, x, "float32") for x in inputs])
        a, b = _masks(sam, full[:1], boxes), _masks(sam, torch.cat(embeddings)[:1], boxes)
        row["bf16_mask_iou"] = float((a & b).sum() / max(int((a | b).sum()), 1))
    n_feed = feed_tiles or n
    if n_feed > grid.n_tiles:
        raise SystemExit(f"--feed-tiles {n_feed}: the {info.shape} image has {grid.n_tiles} tiles (raise --size)")
    row["feed_tiles"] = n_feed
    runs = [feed(sam, image, grid, n_feed, work / f"feed_{name}.zarr", batch) for _ in range(feed_repeats)]
    row.update({k: " / ".join(f"{run[k]:.3g}" for run in runs) for k in runs[0]})
    return row


def feed(sam, image: Path, grid: TileGrid, n: int, out: Path, batch: int) -> dict:
    """The data path alone, on the first n tiles: tiles per host CPU-second of reading, decoding and preparing
    them (grey levels, resize, normalise: the encoder's input on the device, then dropped), and tiles per
    second and per CPU-second of embed_block with a zero encoder (that path plus the writer)."""
    info = io.read_info(image)
    pixels = zarr.open_array(str(image / "0"), mode="r")
    reader = WindowReader(pixels, info.channels, transform=partial(levels, intensity_range=info.intensity_range))
    tiles = grid.block(0, n)

    parts = {"read": 0.0, "prepare": 0.0}  # CPU seconds of each

    def supply():
        for i in range(0, n, batch):
            t0 = time.process_time()
            windows = [reader(t.window_slices()) for t in tiles[i : i + batch]]
            t1 = time.process_time()
            device_input(sam, windows)
            sync(sam.device)
            parts["read"], parts["prepare"] = parts["read"] + t1 - t0, parts["prepare"] + time.process_time() - t1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core: with more, a CPU device's idle threads spin and count as CPU time
    try:
        _, _, cpu = timed(sam.device, supply)
    finally:
        torch.set_num_threads(threads)
    row = {"supply_per_cpu_s": n / max(cpu, 1e-9), **{f"supply_{k}_ms": 1000 * v / n for k, v in parts.items()}}
    encoder, sam.image_encoder = sam.image_encoder, ZeroEncoder(int(sam.image_encoder.img_size))
    try:
        prov = Provenance("gpu-check", int(encoder.img_size), grid.to_dict(), 0, n, io.read_info(image).signature, "float32")  # fmt: skip
        shutil.rmtree(out, ignore_errors=True)
        wall, cpu = time.perf_counter(), time.process_time()
        embed_block(sam, prov, image, grid, out, batch_size=batch, on_device=True)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        sam.image_encoder = encoder
    return {**row, "feed": n / wall, "feed_per_cpu_s": n / max(cpu, 1e-9)}


# --- end to end ---------------------------------------------------------------------------------
def end_to_end(name: str, work: Path, image_tif: Path, volume_tif: Path, args, device: str) -> dict:
    """snakemake on the image and the volume with one model (AIS): whole-run tiles/s, tile share per job."""
    run = work / f"e2e_{name}"
    ckpt = checkpoint_with_decoder(name, work / "checkpoints" / f"{name}.pt").resolve()
    shapes = {"image": headers.probe(image_tif, 2), "volume": headers.probe(volume_tif, 3)}
    n_tiles = {k: TileGrid(s, (TILE, TILE), (HALO, HALO)).n_tiles for k, s in shapes.items()}
    vit = MODELS[name].startswith("vit_") and name != "vit_t"
    precision = "bfloat16" if device == "cuda" and vit and torch.cuda.is_bf16_supported() else "float32"  # auto's rule
    size = args.tiles_per_block or max(block_size(n, MODELS[name], device, "ais") for n in n_tiles.values())
    config = {
        "datasets": {"image": {"images": str(image_tif), "ndim": 2}, "volume": {"images": str(volume_tif), "ndim": 3}},
        "models": [str(ckpt)],
        "device": device,
        "offline": True,
        "segmentation": {"methods": ["ais"], "tile_shape": [TILE, TILE], "halo": [HALO, HALO], "tiles_per_block": size},
        "embeddings": {"keep_embeddings": True, "precision": precision},
        "baseline": {"classical": False},
    }
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    stem = {"image": image_tif.name.split(".")[0], "volume": volume_tif.name.split(".")[0]}
    targets = [f"results/segmentation/{d}/{stem[d]}/{model_id(str(ckpt))}/ais/labels.ome.zarr" for d in shapes]
    exe = shutil.which("snakemake", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        return {"model": name, "error": "snakemake not found"}
    # the greedy scheduler: no ILP solver (pulp) needed on a GPU machine without a package index
    command = [exe, "-s", str(REPO / "Snakefile"), "--directory", str(run), "--configfile", str(run / "config.yaml"),
               "--cores", str(args.cores), "--scheduler", "greedy", *targets]  # fmt: skip
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    with (run / "snakemake.log").open("w") as log:
        rc = subprocess.run(command, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    if rc:
        return {"model": name, "error": f"snakemake failed ({rc}): {run / 'snakemake.log'}"}
    shares = {rule: tile_shares(run, rule) for rule in ("embed", "segment")}
    return {
        "model": name, "tiles_per_block": size, "tiles": sum(n_tiles.values()), "wall_s": wall,
        "tiles_per_s": sum(n_tiles.values()) / wall,
        **{f"{rule}_jobs": len(s) for rule, s in shares.items()},
        **{f"{rule}_tile_share": float(np.mean(s)) if s else float("nan") for rule, s in shares.items()},
        **{f"{rule}_tile_share_min": float(np.min(s)) if s else float("nan") for rule, s in shares.items()},
    }  # fmt: skip


def tile_shares(run: Path, rule: str) -> list[float]:
    """Per job of `rule`: its block store's per-tile seconds over the job's wall seconds (benchmark file)."""
    kind = {"embed": "embeddings", "segment": "segmentation"}[rule]
    shares = []
    for tsv in sorted((run / "logs" / "benchmarks" / rule).rglob("*.tsv")):
        relative = tsv.relative_to(run / "logs" / "benchmarks" / rule).with_suffix(".zarr")
        store = run / "results" / kind / relative
        if not store.exists():
            continue
        with tsv.open() as handle:
            job_s = float(next(csv.DictReader(handle, delimiter="\t"))["s"])
        seconds = zarr.open_group(str(store), mode="r")["seconds"][:]
        shares.append(float(np.nansum(seconds)) / max(job_s, 1e-9))
    return shares


def table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main() -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--size", type=int, default=4096 if cuda else 1024, help="side of the 2D image")
    parser.add_argument("--volume", type=int, nargs=3, default=[16, 2048, 2048] if cuda else [2, 512, 512])
    parser.add_argument("--stage-tiles", type=int, default=256 if cuda else 4, help="tiles timed per stage")
    parser.add_argument("--feed-tiles", type=int, help="tiles through the data path alone (default: --stage-tiles)")
    parser.add_argument(
        "--feed-repeats", type=int, default=1, help="data path runs, each into a fresh store (all reported)"
    )
    parser.add_argument("--batch", type=int, default=32 if cuda else 1, help="encoder/decoder batch of the stages")
    parser.add_argument("--tiles-per-block", type=int, help="default: tilesam.costs.block_size for the device")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--no-e2e", action="store_true", help="stages only, no snakemake run")
    parser.add_argument("--tiny", action="store_true", help="a 512^2 image, a 2 x 256^2 volume, 2 tiles a stage")
    parser.add_argument("--work", type=Path, default=Path("/tmp/tilesam_gpu_check"))
    parser.add_argument("--out", type=Path, default=OUT / "gpu_check.md")
    args = parser.parse_args()
    keep_freed_memory()  # as the embed jobs
    if args.tiny:
        args.size, args.volume, args.stage_tiles = 512, [2, 256, 256], 2
    work = args.work.resolve()
    device = torch.device(args.device)
    image_tif, volume_tif = work / "data" / "image.tif", work / "data" / "volume.tif"
    write_synthetic(image_tif, (args.size, args.size), seed=100)
    write_synthetic(volume_tif, tuple(args.volume), seed=200)
    image = work / "image.ome.zarr"
    if not image.exists():
        io.import_image(image_tif, image, ndim=2, tile_shape=(TILE, TILE))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    head = f"# gpu_check: {args.device} ({name}), torch {torch.__version__}, {os.cpu_count()} CPUs"
    print(head, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows, e2e = [], []

    def report() -> str:  # written after every row: a run cut off by a time limit keeps what it measured
        text = "\n".join([head, "", *STAGES_HEAD, table(rows, STAGE_COLUMNS), ""])
        if e2e:
            where = f"snakemake --cores {args.cores}, AIS; {args.size}^2 image and {args.volume} volume"
            text += "\n".join(["", f"End to end ({where}):", "", table(e2e, E2E_COLUMNS), ""])
        args.out.write_text(text + "\n")
        return text

    for model in args.models:
        rows.append(
            stages(model, image, work, device, args.stage_tiles, args.batch, args.feed_tiles, args.feed_repeats)
        )
        print(json.dumps(rows[-1]), flush=True)
        report()
    for model in [] if args.no_e2e else args.models:
        e2e.append(end_to_end(model, work, image_tif, volume_tif, args, args.device))
        print(json.dumps(e2e[-1]), flush=True)
        report()
    print(report())
    return 1 if any("error" in r for r in e2e) else 0


STAGE_COLUMNS = ["model", "tiles", "batch", "precision", "read", "read_cpu_ms", "prepare", "encode", "decode",
                 "prompts", "write", "feed_tiles", "supply_per_cpu_s", "supply_read_ms", "supply_prepare_ms", "feed",
                 "feed_per_cpu_s", "bf16_mask_iou"]  # fmt: skip
STAGES_HEAD = [
    "Tiles per second per stage; supply_per_cpu_s: tiles read, decoded and prepared (levels, resize,",
    "normalise) per host CPU-second, one torch thread (supply_read_ms, supply_prepare_ms: CPU ms a tile",
    "of each); feed_per_cpu_s: the same plus the writer (embed_block, zero encoder):",
    "",
]
E2E_COLUMNS = ["model", "tiles", "tiles_per_block", "wall_s", "tiles_per_s", "embed_jobs", "embed_tile_share",
               "embed_tile_share_min", "segment_jobs", "segment_tile_share", "segment_tile_share_min", "error"]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
