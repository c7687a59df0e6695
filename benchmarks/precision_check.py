"""bfloat16 against float32: does the encoder in bfloat16 give the float32 instances, tile by tile?

`embeddings.precision: auto` runs a ViT encoder (vit_b/l/h) in bfloat16 autocast on a GPU that has
it; issue 31 asks its masks to match float32's at IoU >= 0.99 on the same tiles. Per 512 + 64 window
of a synthetic nuclei image: the encoder's embedding in float32 and in bfloat16 (autocast on the
device, CPU or GPU), the checkpoint's instance decoder's maps from each, and tilesam's AIS labels
(vs_microsam's AIS_PARAMS: the fitted decoders' distance maps need its seed thresholds). Reported per
checkpoint: the embeddings' and maps' largest difference, the instances of each, and for each float32
instance the IoU of its best bfloat16 match (mean, lowest, share at least 0.9). Exits 1 if the mean
is below 0.99 for a checkpoint whose encoder `auto` runs in bfloat16 (a ViT; TinyViT stays float32).

    python benchmarks/precision_check.py [--checkpoints PATH ...] [--device cuda] [--size 1024]

Without `--checkpoints`: the vit_b checkpoint of `vs_microsam.py --apg-equality` (a random-weight
encoder and a decoder fitted 200 x 10 to it on 512^2 nuclei, so the maps hold the objects), fitted
here first if `--work` does not hold it yet (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import OUT, machine
from apg_equality import equality_image, fitted_checkpoint
from vs_microsam import AIS_PARAMS, make_image

from tilesam.config import AisParams
from tilesam.embed import autocast_encoder, encode_input, model_input, normalize
from tilesam.models import load_decoder_state, load_model
from tilesam.models.unetr import decode_maps, load_decoder
from tilesam.resize import resized_shape
from tilesam.segment.ais import ais_labels
from tilesam.tiling import TileGrid


def best_ious(reference: np.ndarray, other: np.ndarray) -> list[float]:
    """For each instance of `reference`, the IoU of the instance of `other` that overlaps it most (0 if none)."""
    ious = []
    for label in np.unique(reference[reference > 0]):
        mask = reference == label
        hits = other[mask]
        hits = hits[hits > 0]
        if hits.size == 0:
            ious.append(0.0)
            continue
        match = other == np.bincount(hits).argmax()
        ious.append(float((mask & match).sum() / (mask | match).sum()))
    return ious


@torch.no_grad()
def compare(checkpoint: Path, image: np.ndarray, device: str) -> dict:
    model = load_model(checkpoint, device=device)
    decoder = load_decoder(load_decoder_state(checkpoint), source=str(checkpoint)).to(device)
    size = int(model.image_encoder.img_size)
    params = replace(AisParams(**AIS_PARAMS), tiles_per_batch=1)
    intensity = (float(image.min()), float(image.max()))
    grid = TileGrid(image.shape, (512, 512), (64, 64))
    row = {"checkpoint": checkpoint.name, "auto on a GPU": "bfloat16" if autocast_encoder(model) else "float32",
           "tiles": grid.n_tiles, "embedding_diff": 0.0, "maps_diff": 0.0}  # fmt: skip
    counts, ious = [0, 0], []
    for tile in grid.tiles():
        window = image[tile.window_slices()]
        x = model_input(model, normalize(window, intensity))
        embeddings = [encode_input(model, x, precision) for precision in ("float32", "bfloat16")]
        input_size = resized_shape(*window.shape, size)
        maps = [decode_maps(decoder, e, input_size, window.shape, model_size=size)[0] for e in embeddings]
        labels = [ais_labels(m, params) for m in maps]
        row["embedding_diff"] = max(row["embedding_diff"], float((embeddings[0] - embeddings[1]).abs().max()))
        row["maps_diff"] = max(row["maps_diff"], float(np.abs(maps[0] - maps[1]).max()))
        counts = [c + int(len(np.unique(lab[lab > 0]))) for c, lab in zip(counts, labels)]
        ious += best_ious(labels[0], labels[1])
    row["instances float32 / bfloat16"] = f"{counts[0]} / {counts[1]}"
    row["mean IoU"] = float(np.mean(ious)) if ious else float("nan")
    row["lowest IoU"] = float(np.min(ious)) if ious else float("nan")
    row["share >= 0.9"] = float(np.mean(np.array(ious) >= 0.9)) if ious else float("nan")
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="default: the fitted vit_b (see above)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=1024, help="side of the synthetic nuclei image")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vs_microsam"))
    parser.add_argument("--out", type=Path, default=OUT / "precision_check.md")
    args = parser.parse_args()
    if not args.checkpoints:  # vs_microsam.py --apg-equality's defaults: 60 objects, 200 steps on 10 x 10 crops
        args.checkpoints = [fitted_checkpoint(args.work, *equality_image(args.work, 60), 200, 10)]
    image = tifffile.imread(make_image(args.work / "images" / f"nuclei_{args.size}.tif", args.size))
    rows = [compare(path, image, args.device) for path in args.checkpoints]
    columns = list(rows[0])
    lines = [f"# precision_check: {machine(args.device)}", "", "| " + " | ".join(columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 1 if any(row["auto on a GPU"] == "bfloat16" and not row["mean IoU"] >= 0.99 for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
