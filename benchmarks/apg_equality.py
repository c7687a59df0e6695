"""APG and AIS equality with micro-sam on one untiled image with many objects (issue 29): `vs_microsam.py --apg-equality`.

The image: synthetic nuclei, 512 x 512 (micro-sam computes APG's distance transform in 512 x 512
blocks, exact on one block), `--apg-objects` of them, uint8 stretched to 0..255. The checkpoint: a
random-weight (seed 0) `vit_b` with an instance decoder fitted on this image
(`tests/helpers/decoder_fit.py`, as the AIS check's), in micro-sam's `{"model_state", "decoder_state"}`
format, so that the maps hold the objects; SAM's own weights stay random, so its masks are not good
ones, only the same ones (what an equality check needs: every step from the maps to the labels is
exercised, NMS included).

micro-sam (its venv, `microsam_driver.py --untiled --mode apg`): `get_predictor_and_decoder`,
`precompute_image_embeddings`, `InstanceSegmentationWithDecoder.initialize` + `generate` (AIS), then
`AutomaticPromptGenerator` with those maps (`set_state`) and `generate` once per APG parameter set.
tilesam (its API): `load_model`, `load_decoder`, `embed.encode`, `unetr.decode_maps`,
`segment.ais.ais_labels` and `segment.apg.apg_labels`. Adjusted Rand index (all pixels) of each pair of
label images, instance counts, each side's seconds. Exits 1 if any ARI is below 0.99.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from _common import microsam_driver

REPO = Path(__file__).resolve().parents[1]

#: micro-sam's generate defaults except the seed thresholds (the fitted maps' distances stay high
#: inside objects, see vs_microsam.AIS_PARAMS); APG: the same thresholds, its own defaults otherwise
APG_PARAMS = [
    {"center_distance_threshold": 0.65, "boundary_distance_threshold": 0.85},
    {"center_distance_threshold": 0.65, "boundary_distance_threshold": 0.85, "refine_with_box_prompts": True},
    {
        "center_distance_threshold": 0.65, "boundary_distance_threshold": 0.85, "multimasking": True,
        "intersection_over_min": True, "nms_threshold": 0.5, "min_size": 50,
    },
]  # fmt: skip


def equality_image(work: Path, n_objects: int) -> tuple[Path, Path]:
    """512 x 512 synthetic nuclei (uint8 0..255) and their labels, written once under `work`."""
    from tilesam.data.synthetic import SyntheticSpec, make_labels, render

    folder = work / "apg_equality"
    image_path, labels_path = folder / f"nuclei512_{n_objects}.tif", folder / "labels" / f"nuclei512_{n_objects}.tif"
    if not (image_path.exists() and labels_path.exists()):
        labels = make_labels(SyntheticSpec("apg_eq", (512, 512), n_objects, (8.0, 15.0), seed=29))
        image = render(labels, 29).astype(np.float32)
        image = np.round((image - image.min()) * (255.0 / max(float(image.max() - image.min()), 1.0))).astype(np.uint8)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(image_path, image)
        tifffile.imwrite(labels_path, labels.astype(np.uint16))
    return image_path, labels_path


def fitted_checkpoint(work: Path, image_path: Path, labels_path: Path, steps: int, crop: int) -> Path:
    """A random-weight (seed 0) vit_b with a decoder fitted on the image, in micro-sam's checkpoint format."""
    path = work / "apg_equality" / f"vit_b_random_fitted{steps}x{crop}_{image_path.stem}.pt"
    if path.exists():
        return path
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.decoder_fit import fit_decoder
    from tilesam.models.load import build_sam

    torch.manual_seed(0)
    sam = build_sam("vit_b")
    start = time.perf_counter()
    fit = fit_decoder(sam, tifffile.imread(image_path), tifffile.imread(labels_path), out=path, steps=steps, crop=crop)
    print(f"fitted a decoder in {time.perf_counter() - start:.0f} s, loss {fit.losses[0]:.3f} -> {fit.losses[-1]:.3f}")
    return path


def microsam(args, image_path: Path, checkpoint: Path, ais: dict, apg: list[dict], out: Path) -> dict:
    """micro-sam's untiled AIS and APG (the driver in micro-sam's venv): labels and stage seconds."""
    record = microsam_driver(args, out, [
        "--mode", "apg", "--image", str(image_path), "--checkpoint", str(checkpoint), "--model-type", "vit_b",
        "--generate", json.dumps(ais), "--generate-apg", json.dumps(apg),
    ])  # fmt: skip
    record["ais"] = np.load(out.with_suffix(".npy"))
    record["apg"] = [np.load(out.with_suffix(f".apg{k}.npy")) for k in range(len(apg))]
    record["seconds"] = {r["stage"]: r["wall_s"] for r in record["stages"]}
    record["features"] = np.load(out.with_suffix(".features.npy"))
    record["maps"] = np.load(out.with_suffix(".maps.npy"))
    return record


def tilesam(image_path: Path, checkpoint: Path, ais: dict, apg: list[dict], shared: dict | None = None) -> dict:
    """tilesam's AIS and APG of the whole image through its API: labels and seconds.

    `shared`: micro-sam's embedding and maps (`features`, `maps`) instead of tilesam's own (equal to the
    last bit in `--ais-equality`): only the post-processing and prompting are compared, in minutes less.
    """
    from segment_anything.utils.transforms import ResizeLongestSide

    from tilesam.config import AisParams, ApgParams
    from tilesam.embed import encode, normalize
    from tilesam.models import load_decoder_state, load_model
    from tilesam.models.unetr import decode_maps, load_decoder
    from tilesam.segment.ais import ais_labels
    from tilesam.segment.apg import apg_labels, point_prompts

    seconds = {}
    model = load_model(checkpoint, device="cpu")
    decoder = load_decoder(load_decoder_state(checkpoint), source=str(checkpoint))
    image = tifffile.imread(image_path)
    size = model.image_encoder.img_size
    if shared is None:
        start = time.perf_counter()
        with torch.inference_mode():
            embedding = encode(model, [normalize(image, (float(image.min()), float(image.max())))])
        seconds["embedding"] = time.perf_counter() - start
        start = time.perf_counter()
        maps = decode_maps(
            decoder, embedding, ResizeLongestSide.get_preprocess_shape(*image.shape, size), image.shape, model_size=size
        )[0]
        seconds["segmentation"] = time.perf_counter() - start
    else:
        embedding, maps = torch.from_numpy(shared["features"]), shared["maps"]
        seconds["embedding"] = seconds["segmentation"] = float("nan")
    start = time.perf_counter()
    ais_out = ais_labels(maps, AisParams(**ais, tiles_per_batch=1))
    seconds["merging"] = time.perf_counter() - start
    apg_out, prompts = [], []
    for k, params in enumerate(apg):
        start = time.perf_counter()
        with torch.inference_mode():
            apg_out.append(apg_labels(model, embedding, maps, ApgParams(**params)))
        seconds[f"apg {k}"] = time.perf_counter() - start
        prompts.append(len(point_prompts(maps, ApgParams(**params))))
    return {"ais": ais_out, "apg": apg_out, "prompts": prompts, "seconds": seconds}


def _count(labels: np.ndarray) -> int:
    return int(len(np.unique(labels[labels > 0])))


def apg_equality(args, ais_params: dict, markdown) -> int:
    """micro-sam's untiled AIS and APG against tilesam's on one 512 x 512 image with >= 50 objects."""
    from sklearn.metrics import adjusted_rand_score

    torch.set_num_threads(args.cores)
    work = args.work.resolve()
    image_path, labels_path = equality_image(work, args.apg_objects)
    truth = tifffile.imread(labels_path)
    if _count(truth) < 50:
        raise SystemExit(f"{labels_path}: {_count(truth)} objects, the check needs at least 50 (--apg-objects)")
    apg = [{**p, **json.loads(args.apg_params)} for p in APG_PARAMS]
    checkpoint = fitted_checkpoint(work, image_path, labels_path, args.fit_steps, args.fit_crop)
    ms = microsam(args, image_path, checkpoint, ais_params, apg, work / "apg_equality" / "microsam.json")
    ts = tilesam(image_path, checkpoint, ais_params, apg, ms if args.apg_shared_maps else None)
    rows, ok = [], True
    cases = [("ais", json.dumps(ais_params), ms["ais"], ts["ais"], "merging", "merging")]
    cases += [
        (f"apg {k}", json.dumps(p), ms["apg"][k], ts["apg"][k], f"apg {k}", f"apg {k}") for k, p in enumerate(apg)
    ]
    for method, params, theirs, ours, ms_stage, ts_stage in cases:
        ari = adjusted_rand_score(theirs.ravel(), ours.ravel())
        ok &= ari >= 0.99
        rows.append(
            {
                "method": method, "params": params,
                "prompts": ts["prompts"][int(method[4:])] if method.startswith("apg") else "",
                "instances micro-sam / tilesam": f"{_count(theirs)} / {_count(ours)}", "ARI": f"{ari:.4f}",
                "ARI micro-sam vs truth": f"{adjusted_rand_score(truth.ravel(), theirs.ravel()):.3f}",
                "s micro-sam / tilesam": f"{ms['seconds'][ms_stage]:.2f} / {ts['seconds'][ts_stage]:.2f}",
            }
        )  # fmt: skip
    header = (
        f"AIS and APG equality, untiled 512 x 512 synthetic nuclei ({_count(truth)} objects), vit_b (random weights, "
        f"seed 0) + a decoder fitted {args.fit_steps} x {args.fit_crop} on the image; micro-sam "
        f"{ms['versions']['micro_sam']}; {platform.platform()}, torch threads {args.cores}; encoder s micro-sam / "
        f"tilesam {ms['seconds']['embedding']:.1f} / {ts['seconds']['embedding']:.1f}, decoder maps "
        f"{ms['seconds']['segmentation']:.1f} / {ts['seconds']['segmentation']:.1f}"
        + ("; tilesam on micro-sam's embedding and maps (--apg-shared-maps)" if args.apg_shared_maps else "")
    )
    text = header + "\n\n" + markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_microsam_apg_equality.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if ok else 1
