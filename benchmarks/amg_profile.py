"""Where tilesam's AMG spends its time on one tile: a per-part profile of ``generate_masks`` + painting.

The parts are timed by wrapping the functions that do them (wall and this process's CPU time;
nested parts are subtracted from their parent, so the parts add up to the total):

* prompt encoding: ``model.prompt_encoder`` (points or boxes to tokens);
* transformer: SAM's two-way transformer and the IoU head, per prompt;
* mask head: the upscaling convolutions and hypernetwork (low-res logits, per surviving mask);
* upscaling + stability: low-res logits to the window's size, binarised, stability score;
* boxes, NMS: mask boxes and box NMS;
* painting: ``masks_to_labels`` (the tile's label image);
* other: everything else (thresholds, gathers, concatenation).

The input is one window (tile + halo) of a DSB2018 image (else smoothed noise), embedded once
(`amg_speed.load_tile`); models as in the speed benchmarks (vit_b: random weights, seed 0).

    python benchmarks/amg_profile.py --models vit_b --tiles 640 --points-per-side 16 --repeats 3

Prints one markdown table (seconds per tile, min over repeats of the total).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torchvision.ops
from _common import load_model, machine, markdown_table, speed_parser
from amg_speed import load_tile

import tilesam.segment.amg as amg
import tilesam.segment.box_amg as box_amg
import tilesam.segment.decoder as decoder
import tilesam.segment.labels as labels
from tilesam.config import AmgParams
from tilesam.embed import encode

PARTS = ("prompt encoding", "transformer", "mask head", "upscaling + stability", "boxes", "NMS", "painting", "other")


class Profile:
    """Exclusive wall and CPU seconds per part: a part's time minus the parts nested inside it."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        self._stack.append([0.0, 0.0])
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            nested_wall, nested_cpu = self._stack.pop()
            self.wall[name] += wall - nested_wall
            self.cpu[name] += cpu - nested_cpu
            if self._stack:
                self._stack[-1][0] += wall
                self._stack[-1][1] += cpu

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.part(name):
                return fn(*args, **kwargs)

        return timed


@contextmanager
def instrumented(profile: Profile, model: torch.nn.Module) -> Iterator[None]:
    """Patch the AMG modules' functions (module globals, looked up at call time) with timed ones."""
    patches = [
        (decoder, "run_transformer", "transformer"),
        (decoder, "decode_mask_logits", "mask head"),
        (decoder, "binarise_and_score", "upscaling + stability"),
        (box_amg, "binarise_and_score", "upscaling + stability"),
        (decoder, "masks_to_boxes", "boxes"),
        (box_amg, "masks_to_boxes", "boxes"),
        (torchvision.ops, "batched_nms", "NMS"),  # amg imports it at call time
    ]
    originals = [(mod, attr, getattr(mod, attr)) for mod, attr, _ in patches]
    prompt_forward = model.prompt_encoder.forward
    try:
        for mod, attr, name in patches:
            setattr(mod, attr, profile.wrap(name, getattr(mod, attr)))
        model.prompt_encoder.forward = profile.wrap("prompt encoding", prompt_forward)
        yield
    finally:
        for mod, attr, fn in originals:
            setattr(mod, attr, fn)
        del model.prompt_encoder.forward


def profile_tile(model: torch.nn.Module, tile: int, params: AmgParams) -> tuple[Profile, int]:
    """One tile's AMG and painting, instrumented; returns the profile and the number of masks."""
    image = load_tile(tile)
    features = encode(model, [image])
    profile = Profile()
    with instrumented(profile, model), profile.part("other"):
        masks = amg.generate_masks(model, features, image.shape[:2], params)
        with profile.part("painting"):
            labels.masks_to_labels(masks, image.shape[:2], with_background=params.with_background)
    return profile, len(masks)


def main() -> None:
    parser = speed_parser(__doc__)
    parser.set_defaults(models=["vit_b"], tiles=[640])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--points-per-batch", type=int, default=None, help="default: the schema's")
    parser.add_argument("--prompt", choices=["point", "box"], default="point")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    extra = {"points_per_batch": args.points_per_batch} if args.points_per_batch else {}
    params = AmgParams(points_per_side=args.points_per_side, prompt=args.prompt, **extra)
    rows = []
    for name in args.models:
        model = load_model(name, args.device)
        for tile in args.tiles:
            runs = [profile_tile(model, tile, params) for _ in range(args.repeats)]
            best, n_masks = min(runs, key=lambda run: sum(run[0].wall.values()))
            total_wall, total_cpu = sum(best.wall.values()), sum(best.cpu.values())
            for part in PARTS:
                rows.append(
                    f"{name} | {tile} | {part} | {best.wall[part]:.3f} | {best.cpu[part]:.3f} "
                    f"| {100 * best.wall[part] / total_wall:.0f}%"
                )
            rows.append(f"{name} | {tile} | **total** ({n_masks} masks) | {total_wall:.3f} | {total_cpu:.3f} | 100%")
    print(
        f"{machine(args.device)}; {args.prompt} grid {args.points_per_side}x{args.points_per_side}, "
        f"points_per_batch {params.points_per_batch}, best of {args.repeats}"
    )
    print(markdown_table("model | window | part | wall s | cpu s | share of wall", rows))


if __name__ == "__main__":
    main()
