"""Time tilesam.segment.amg.generate_masks against SamAutomaticMaskGenerator.generate on the same input.

Both start from the same stored embedding, so the image encoder is excluded from both. The input
is the top-left window of a real DSB2018 image, made SAM's uint8 RGB input and embedded as the
workflow's embed jobs do it (tilesam.embed.normalize over the image's range, then encode). The
generator's ``predictor.set_image`` is replaced by one that installs the precomputed features
(what ``set_image`` leaves behind), so its ``generate()`` times point decoding, filtering, RLE
encoding and output records, the work ``generate_masks`` replaces. Our time includes moving the
masks to host memory, since SAM returns numpy masks. Each run also checks the two results are
the same masks (count and exact pixels).

Models: lite_medsam (real weights, 256 input) and vit_b (random weights, 1024 input; its
encoder only produces the embedding). Parameter sets: micro-sam's defaults, and all thresholds
at 0 (every decoded mask is upscaled, scored and goes through NMS: the worst case for us).

    python benchmarks/amg_speed.py                       # CPU, 16x16 points, tiles 256 and 512
    python benchmarks/amg_speed.py --device cuda --points-per-side 32 --repeats 3 --grid

Writes benchmarks/out/amg_speed_<device>.csv and prints a markdown table.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import torch
from _common import REPO, load_model, machine, markdown_table, speed_parser, timed
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from tilesam.config import AmgParams
from tilesam.embed import encode, normalize
from tilesam.segment.amg import decode_candidates, filter_candidates, generate_masks
from tilesam.segment.masks import MaskSet

DSB_IMAGES = REPO.parent / "shared" / "data" / "dsb2018" / "images"


@dataclass
class Row:
    model: str
    tile: int
    params: str
    points: int
    masks_sam: int
    masks_ours: int
    identical: bool
    sam_s: float
    ours_s: float
    sam_cpu_s: float
    ours_cpu_s: float

    @property
    def speedup(self) -> float:
        return self.sam_s / self.ours_s

    @property
    def cpu_speedup(self) -> float:
        """CPU-time ratio: steadier than wall time on a machine shared with other jobs."""
        return self.sam_cpu_s / self.ours_cpu_s


def load_tile(size: int) -> np.ndarray:
    """Top-left size x size window of the first real DSB2018 image that large (else noise), as SAM's input.

    Normalised as the workflow's embed jobs do it (tilesam.embed.normalize over the image's range).
    """
    import tifffile

    for path in sorted(DSB_IMAGES.glob("*.tif")):
        image = tifffile.imread(path)
        if min(image.shape[:2]) >= size:
            return normalize(image[:size, :size], (float(image.min()), float(image.max())))
    print(f"no DSB2018 image of {size}x{size} under {DSB_IMAGES}: using smoothed noise")
    rng = np.random.default_rng(0)
    noise = rng.random((size // 8, size // 8)).repeat(8, 0).repeat(8, 1)
    return normalize(noise, (float(noise.min()), float(noise.max())))


def sam_generator(model: Sam, features: torch.Tensor, params: AmgParams) -> SamAutomaticMaskGenerator:
    """SAM's generator whose set_image installs the stored embedding instead of encoding."""
    generator = SamAutomaticMaskGenerator(
        model,
        points_per_side=params.points_per_side,
        points_per_batch=params.points_per_batch,
        pred_iou_thresh=params.pred_iou_thresh,
        stability_score_thresh=params.stability_score_thresh,
        stability_score_offset=params.stability_score_offset,
        box_nms_thresh=params.box_nms_thresh,
    )
    predictor = generator.predictor

    def set_stored_image(image: np.ndarray, image_format: str = "RGB") -> None:
        predictor.reset_image()
        predictor.original_size = image.shape[:2]
        predictor.input_size = ResizeLongestSide.get_preprocess_shape(*image.shape[:2], model.image_encoder.img_size)
        predictor.features = features
        predictor.is_image_set = True

    predictor.set_image = set_stored_image
    return generator


def same_masks(ours: MaskSet, records: list[dict]) -> bool:
    if len(ours) != len(records):
        return False
    masks = ours.masks.cpu().numpy()
    return all(np.array_equal(m, r["segmentation"]) for m, r in zip(masks, records))


def run_case(model_name: str, model: Sam, tile: int, label: str, params: AmgParams, device: str, repeats: int) -> Row:
    image = load_tile(tile)
    features = encode(model, [image])
    generator = sam_generator(model, features, params)

    def ours() -> MaskSet:
        result = generate_masks(model, features, image.shape[:2], params)
        result.masks = result.masks.cpu()
        return result

    sam_times, our_times = [], []
    for _ in range(repeats):  # alternate, so background load hits both alike
        records, wall, cpu = timed(lambda: generator.generate(image), device)
        sam_times.append((wall, cpu))
        mine, wall, cpu = timed(ours, device)
        our_times.append((wall, cpu))
    (sam_s, sam_cpu), (ours_s, ours_cpu) = min(sam_times), min(our_times)
    return Row(
        model=model_name,
        tile=tile,
        params=label,
        points=params.points_per_side**2,
        masks_sam=len(records),
        masks_ours=len(mine),
        identical=same_masks(mine, records),
        sam_s=sam_s,
        ours_s=ours_s,
        sam_cpu_s=sam_cpu,
        ours_cpu_s=ours_cpu,
    )


def time_grid_search(model: Sam, tile: int, points_per_side: int, device: str) -> str:
    """micro-sam's threshold grid (IoU 0.6-0.9 x stability 0.6-0.95, step 0.025) from one decode.

    SAM has to run the whole generator once per setting; here the decoder runs once with the
    grid's loosest thresholds and each setting is a filter + NMS over the kept candidates.
    """
    image = load_tile(tile)
    features = encode(model, [image])
    floor = AmgParams(points_per_side=points_per_side, pred_iou_thresh=0.6, stability_score_thresh=0.6)
    candidates, decode_s, _ = timed(lambda: decode_candidates(model, features, image.shape[:2], floor), device)
    grid = [(i, s) for i in np.arange(0.6, 0.9001, 0.025) for s in np.arange(0.6, 0.9501, 0.025)]

    def all_settings() -> None:
        for iou, stab in grid:
            filter_candidates(candidates, float(iou), float(stab), floor.box_nms_thresh)

    _, filter_s, _ = timed(all_settings, device)
    return (
        f"grid search, tile {tile}: {len(grid)} settings from one decode: decode {decode_s:.2f} s "
        f"({len(candidates.maskset)} candidates) + all filters {filter_s:.2f} s"
    )


def markdown(rows: list[Row]) -> str:
    head = (
        "model | tile | params | points | masks SAM / ours | identical | SAM s | ours s | speedup "
        "| SAM cpu s | ours cpu s | cpu speedup"
    )
    return markdown_table(
        head,
        (
            f"{r.model} | {r.tile} | {r.params} | {r.points} | {r.masks_sam} / {r.masks_ours} | "
            f"{'yes' if r.identical else 'NO'} | {r.sam_s:.2f} | {r.ours_s:.2f} | {r.speedup:.2f}x | "
            f"{r.sam_cpu_s:.2f} | {r.ours_cpu_s:.2f} | {r.cpu_speedup:.2f}x"
            for r in rows
        ),
    )


def main() -> None:
    parser = speed_parser(__doc__)
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--grid", action="store_true", help="also time a threshold grid search from one decode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    param_sets = {
        "defaults": AmgParams(points_per_side=args.points_per_side),
        "thresholds 0": AmgParams(
            points_per_side=args.points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0
        ),
    }
    rows, grid_lines = [], []
    for model_name in args.models:
        model = load_model(model_name, args.device)
        for tile in args.tiles:
            for label, params in param_sets.items():
                row = run_case(model_name, model, tile, label, params, args.device, args.repeats)
                print(markdown([row]).splitlines()[-1], flush=True)
                rows.append(row)
            if args.grid:
                grid_lines.append(f"{model_name}: " + time_grid_search(model, tile, args.points_per_side, args.device))
                print(grid_lines[-1], flush=True)
        del model

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"amg_speed_{args.device.split(':')[0]}.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*Row.__dataclass_fields__, "speedup", "cpu_speedup"])
        for r in rows:
            fields = [getattr(r, f) for f in Row.__dataclass_fields__]
            writer.writerow([*fields, round(r.speedup, 3), round(r.cpu_speedup, 3)])

    def geomean(values: list[float]) -> float:
        return float(np.exp(np.mean(np.log(values))))

    print()
    print(
        f"device {args.device}: {machine(args.device)}; "
        f"{args.points_per_side}x{args.points_per_side} points, min of {args.repeats} run(s)"
    )
    print(markdown(rows))
    print(
        f"\ngeometric mean speedup (SAM / ours): wall {geomean([r.speedup for r in rows]):.2f}x, "
        f"cpu {geomean([r.cpu_speedup for r in rows]):.2f}x; wrote {path}"
    )
    for line in grid_lines:
        print(line)


if __name__ == "__main__":
    main()
