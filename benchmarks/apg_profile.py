"""Where one APG window's time goes: encoder, maps, prompts, SAM's transformer, mask head, binarising, NMS.

Runs tilesam's APG steps on one window (tile + halo) of an image with a checkpoint that has an
instance decoder, one torch thread, and prints the CPU seconds of each part. The parts inside
`decode_prompts` are timed by wrapping the functions it calls.

    python benchmarks/apg_profile.py CHECKPOINT IMAGE.tif --window 960 960 1152 1152

docs/benchmarks.md ("Tiled APG against micro-sam's") ran it on `vs_microsam.py`'s 4096 x 4096 image
(`<work>/images/nuclei_4096.tif`) with the APG equality check's checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import numpy as np
import tifffile
import torch

from tilesam.config import ApgParams
from tilesam.embed import encode
from tilesam.models.load import load_decoder_state, load_model
from tilesam.models.unetr import decode_maps, load_decoder
from tilesam.resize import resized_shape
from tilesam.segment import apg, nms

SPENT: dict[str, float] = defaultdict(float)


def charged(name: str, fn):
    """`fn`, its CPU seconds added to SPENT[name] on every call."""

    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.process_time() - start

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("image")
    parser.add_argument("--window", type=int, nargs=4, default=[960, 960, 1152, 1152], help="y x height width")
    parser.add_argument(
        "--apg-params", default='{"center_distance_threshold": 0.65, "boundary_distance_threshold": 0.85}'
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    y, x, h, w = args.window
    window = np.asarray(tifffile.imread(args.image)[y : y + h, x : x + w])
    rgb = np.repeat(window[..., None], 3, axis=-1) if window.ndim == 2 else window
    params = ApgParams(**json.loads(args.apg_params))
    sam = load_model(args.checkpoint)
    decoder = load_decoder(load_decoder_state(args.checkpoint), source=args.checkpoint)
    embedding = charged("encoder", encode)(sam, [rgb], "float32")
    shape = window.shape[:2]
    maps = charged("maps", decode_maps)(decoder, embedding, resized_shape(*shape, sam.image_encoder.img_size), shape)[0]
    points = charged("prompts (seeds)", apg.point_prompts)(maps, params)
    for name, attr in [("transformer", "decode_prompt_tokens"), ("mask head", "decode_mask_logits"),
                       ("upscale + binarise", "binarise_and_score")]:  # fmt: skip
        setattr(apg, attr, charged(name, getattr(apg, attr)))
    masks = charged("decode prompts (all)", apg.decode_prompts)(sam, embedding, shape, params, points=points)
    pairs = charged("NMS overlaps", nms.overlaps)(masks.masks, masks.boxes)
    labels = charged("NMS + painting", nms.apply_nms)(
        masks, params.min_size, params.nms_threshold, params.intersection_over_min, pairs=pairs
    )
    print(f"window {args.window}, {len(points)} prompts, {int(labels.max())} instances; CPU seconds, one thread:")
    for name, seconds in SPENT.items():
        print(f"  {name:22s} {seconds:7.2f}")


if __name__ == "__main__":
    main()
