"""Image-encoder throughput: tiles per second of tilesam.embed.encode, per model, tile size, batch and precision.

encode() is what the workflow's embed jobs run per batch of windows: SAM's preprocessing (resize
of the longest side to the model's input size, normalisation, padding) and the image encoder. The
encoder always sees the model's input size (256 for lite_medsam, 1024 for vit_b), so the tile size
changes only the resize; it is measured anyway because that is the setting users choose.

Models: lite_medsam (real weights) and vit_b (random weights, seed 0; speed does not depend on
them). Windows are random uint8 RGB images. Each setting runs `--warmup` times untimed, then
`--repeats` times; the table gives the fastest run (least disturbed by other load). Precision is
the encoder's arithmetic (torch.autocast); on CPU only float32 is run, since encode() ignores
the precision there. Peak memory is, per setting, the GPU's peak allocation on CUDA and the
process's peak resident memory (VmHWM, reset before each setting) on CPU.

    python benchmarks/encoder_speed.py                          # CPU: float32, batches 1 and 4, tiles 256 and 512
    python benchmarks/encoder_speed.py --device cuda --repeats 10   # adds bfloat16 and float16
    python benchmarks/encoder_speed.py --models vit_b --tiles 512 --batch-sizes 1 --attention fused segment-anything

`--attention` runs the ViT encoders (vit_b/l/h) with tilesam's fused attention
(tilesam.models.vit_attention, the default) and/or segment-anything's own, for the comparison.

Writes benchmarks/out/encoder_speed_<device>.csv and prints a markdown table.
"""

from __future__ import annotations

import csv
import resource
from pathlib import Path

import numpy as np
import torch
from _common import load_model, machine, markdown_table, parse_speed_args, speed_parser, timed

from tilesam.embed import encode
from tilesam.models.vit_attention import FusedAttention, fuse_attention

FIELDS = [
    "model",
    "attention",
    "input",
    "tile",
    "batch",
    "precision",
    "seconds",
    "tiles_per_s",
    "s_per_tile",
    "peak_mb",
]


def reset_peak(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or Linux's resident high-water mark (VmHWM)."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # not Linux: the peak stays the process's peak so far
        pass


def peak_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(
    model, name: str, attention: str, tile: int, batch: int, precision: str, device: str, warmup: int, repeats: int
) -> dict:
    rng = np.random.default_rng(0)
    windows = [rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8) for _ in range(batch)]
    reset_peak(device)
    for _ in range(warmup):
        encode(model, windows, precision)
    seconds = min(timed(lambda: encode(model, windows, precision), device)[1] for _ in range(repeats))
    return {
        "model": name,
        "attention": attention,
        "input": model.image_encoder.img_size,
        "tile": tile,
        "batch": batch,
        "precision": precision,
        "seconds": round(seconds, 4),
        "tiles_per_s": round(batch / seconds, 2),
        "s_per_tile": round(seconds / batch, 4),
        "peak_mb": round(peak_mb(device)),
    }


def markdown(rows: list[dict]) -> str:
    return markdown_table(
        "model | attention | input | tile | batch | precision | tiles/s | s/tile | peak MB",
        (
            f"{r['model']} | {r['attention']} | {r['input']} | {r['tile']} | {r['batch']} | {r['precision']} | "
            f"{r['tiles_per_s']:.2f} | {r['s_per_tile']:.3f} | {r['peak_mb']}"
            for r in rows
        ),
    )


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4])
    parser.add_argument(
        "--precisions", nargs="+", default=None, help="default: float32 on CPU; float32 bfloat16 float16 on CUDA"
    )
    parser.add_argument(
        "--attention",
        nargs="+",
        default=["fused"],
        choices=["fused", "segment-anything"],
        help="ViT encoders' attention",
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parse_speed_args(parser)
    cuda = args.device.startswith("cuda")
    precisions = args.precisions or (["float32", "bfloat16", "float16"] if cuda else ["float32"])

    rows = []
    for name in args.models:
        model = load_model(name, args.device)
        vit = any(isinstance(m, FusedAttention) for m in model.image_encoder.modules())
        for attention in args.attention if vit else ["-"]:
            fuse_attention(model.image_encoder, fused=attention != "segment-anything")
            for tile in args.tiles:
                for batch in args.batch_sizes:
                    for precision in precisions:
                        case = (tile, batch, precision, args.device, args.warmup, args.repeats)
                        rows.append(run_case(model, name, attention, *case))
                        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        del model
        if cuda:
            torch.cuda.empty_cache()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"encoder_speed_{args.device.split(':')[0]}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    print(
        f"\ndevice {args.device}: {machine(args.device)}; fastest of {args.repeats} run(s) after {args.warmup} warm-up"
    )
    print(markdown(rows))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
