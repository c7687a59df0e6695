"""AIS against AMG at micro-sam's default 32 x 32 points, per tile, from the same stored embedding.

Issue 15 asks AIS to cost at least 10x less than tilesam's own AMG on CPU. Both start from one
embedding of the same window (the encoder is excluded from both), as the workflow's segment jobs
do: AIS is the decoder's maps (`unetr.decode_maps`) plus micro-sam's post-processing
(`segment.ais.ais_labels`, the schema's defaults); AMG is `segment.amg.generate_masks` with a
32 x 32 point grid and micro-sam's thresholds (the schema's defaults).

The window is the top-left corner of the first large enough DSB2018 image in `../shared/data`
(smoothed noise without it). Models: lite_medsam (real weights; 256 input, decoder 4x) and vit_b
(random weights; 1024 input, decoder 16x, exactly micro-sam's). The decoder has random weights
(seed 0) unless `--decoder PATH` names a checkpoint with a `decoder_state` for lite_medsam (e.g. the
default run's `results/finetuned/demo_train/lite_medsam.pth`). Random maps make the watershed's
work different from a trained decoder's, so the post-processing time is reported on its own.

    python benchmarks/ais_speed.py                                   # CPU, 512 windows
    python benchmarks/ais_speed.py --decoder results/finetuned/demo_train/lite_medsam.pth

Prints a markdown table and writes it to benchmarks/out/ais_speed_<device>.md.
"""

from __future__ import annotations

import numpy as np
import torch
from _common import load_model, machine, markdown_table, speed_parser, timed
from amg_speed import load_tile
from segment_anything.utils.transforms import ResizeLongestSide

from tilesam.config import AisParams, AmgParams
from tilesam.embed import encode
from tilesam.models import load_decoder_state
from tilesam.models.unetr import InstanceDecoder, decode_maps, decoder_upscale, load_decoder
from tilesam.segment.ais import ais_labels
from tilesam.segment.amg import generate_masks


def instance_decoder(model, name: str, path: str | None, device: str) -> tuple[torch.nn.Module, str]:
    upscale = decoder_upscale(model)
    if path and name == "lite_medsam":
        return load_decoder(load_decoder_state(path), source=path, device=device, upscale=upscale), path
    torch.manual_seed(0)
    return InstanceDecoder(upscale=upscale).to(device).eval(), "random (seed 0)"


def measure(name: str, model, decoder, source: str, tile: int, points: int, device: str) -> str:
    """One window: AIS (maps, post-processing) and AMG from the same embedding, as a table row."""
    image = load_tile(tile)
    features = encode(model, [image])
    shape, side = image.shape[:2], model.image_encoder.img_size
    size = ResizeLongestSide.get_preprocess_shape(*shape, side)
    maps, maps_s, maps_cpu = timed(lambda: decode_maps(decoder, features, size, shape, model_size=side), device)
    labels, post_s, post_cpu = timed(lambda: ais_labels(maps[0], AisParams()), device)
    amg = AmgParams(points_per_side=points)
    masks, amg_s, amg_cpu = timed(lambda: generate_masks(model, features, shape, amg), device)
    ais_s, ais_cpu = maps_s + post_s, maps_cpu + post_cpu
    return (
        f"{name} | {tile} | {source} | {maps_s:.2f} | {post_s:.2f} | {ais_s:.2f} ({ais_cpu:.1f} cpu) "
        f"| {int(np.max(labels))} | {points}x{points} | {amg_s:.1f} ({amg_cpu:.1f} cpu) | {len(masks)} "
        f"| {amg_s / ais_s:.0f}x ({amg_cpu / ais_cpu:.0f}x cpu)"
    )


def main() -> None:
    parser = speed_parser(__doc__)
    parser.set_defaults(tiles=[512])
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--decoder", default=None, help="checkpoint with a decoder_state for lite_medsam")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        model = load_model(name, args.device)
        decoder, source = instance_decoder(model, name, args.decoder, args.device)
        for tile in args.tiles:
            rows.append(measure(name, model, decoder, source, tile, args.points_per_side, args.device))
            print(rows[-1], flush=True)
    head = (
        "model | window | decoder | AIS maps s | AIS post s | AIS s | AIS objects | AMG points | AMG s | AMG masks "
        "| AMG / AIS"
    )
    text = f"{machine(args.device)}\n\n{markdown_table(head, rows)}\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"ais_speed_{args.device.split(':')[0]}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
