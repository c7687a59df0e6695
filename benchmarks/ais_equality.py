"""AIS equality with micro-sam on one untiled image (issues 15 and 16): `vs_microsam.py --ais-equality`.

On one untiled image (tilesam's synthetic 256 x 256 nuclei demo, 14 objects), micro-sam's own `InstanceSegmentationWithDecoder` (loaded with
`get_predictor_and_decoder` from a `{"model_state", "decoder_state"}` checkpoint, as its users do;
`microsam_driver.py --untiled`) against tilesam's AIS through its API (`load_model`,
`load_decoder_state` + `load_decoder`, `embed.encode`, `unetr.decode_maps`, `segment.ais.ais_labels`),
same checkpoint, image and post-processing parameters (`--ais-params`). Adjusted Rand index (sklearn,
all pixels, background included) of the two label images, instance counts, the maps' largest
difference (and the embeddings') and each side's wall times. Two checkpoints:

* `fitted`: a random-weight (seed 0) `vit_b` (segment_anything's builder) with an instance decoder
  fitted on the demo image (`tests/helpers/decoder_fit.py`, `--fit-steps`, `--fit-crop`), so that the maps hold
  the objects;
* `finetuned` (issue 16): tilesam's `finetune()` of that checkpoint on the same image with
  `train_parts [mask_decoder, decoder]` (`--finetune-iterations`), the checkpoint in micro-sam's
  format that tilesam's finetuning writes.

A diagnostic row runs tilesam's decoder with its BatchNorm layers on the image's batch statistics
(train mode) on micro-sam's embedding: micro-sam 1.8.14 never puts its UNETR decoder in eval mode, so
its BatchNorm normalises with each image's statistics, not the stored running ones. Exits 1 if the
adjusted Rand index of tilesam as it is (eval mode) is below 0.99.
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


def equality_inputs(work: Path) -> tuple[Path, Path]:
    """The demo's synthetic nuclei (256 x 256, 14 objects) as a uint8 TIFF stretched to 0..255, and its labels."""
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.decoder_fit import demo_image

    image_path, labels_path = (
        work / "ais_equality" / "nuclei_demo.tif",
        work / "ais_equality" / "labels" / "nuclei_demo.tif",  # finetune() pairs files by name
    )
    if not (image_path.exists() and labels_path.exists()):
        image, labels = demo_image()
        image = image.astype(np.float32)
        image = np.round((image - image.min()) * (255.0 / max(float(image.max() - image.min()), 1.0))).astype(np.uint8)
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(image_path, image)
        tifffile.imwrite(labels_path, labels.astype(np.uint16))
    return image_path, labels_path


def fitted_checkpoint(
    work: Path, architecture: str, image_path: Path, labels_path: Path, steps: int, crop: int
) -> Path:
    """A random-weight (seed 0) SAM with a decoder fitted on the image, in micro-sam's checkpoint format."""
    path = work / "ais_equality" / f"{architecture}_random_fitted{steps}x{crop}.pt"
    if path.exists():
        return path
    sys.path.insert(0, str(REPO / "tests"))
    from helpers.decoder_fit import fit_decoder
    from tilesam.models.load import build_sam

    torch.manual_seed(0)
    sam = build_sam(architecture)
    start = time.perf_counter()
    fit = fit_decoder(sam, tifffile.imread(image_path), tifffile.imread(labels_path), out=path, steps=steps, crop=crop)
    print(f"fitted a decoder in {time.perf_counter() - start:.0f} s, loss {fit.losses[0]:.3f} -> {fit.losses[-1]:.3f}")
    return path


def finetuned_checkpoint(work: Path, base: Path, image_path: Path, labels_path: Path, iterations: int) -> Path:
    """tilesam's finetuning of ``base`` with the decoder trained (micro-sam's format), on the image itself."""
    from tilesam.config import FinetuneConfig
    from tilesam.finetune.trainer import finetune

    out = work / "ais_equality" / f"{base.stem}_ft{iterations}.pt"
    config = FinetuneConfig(
        iterations=iterations, iterations_per_epoch=iterations, objects_per_image=4, sub_iterations=2,
        augment_variants=1, train_parts=("mask_decoder", "decoder"), decoder_crop=8, seed=0,
    )  # fmt: skip
    start = time.perf_counter()
    result = finetune(
        base, [str(image_path)], [str(labels_path)], out, config=config, name=f"{base.stem}-ft", dataset="demo",
        embedding_cache=work / "ais_equality" / "embedding_cache", progress=False,
    )  # fmt: skip
    before = torch.load(base, map_location="cpu", weights_only=True)
    after = torch.load(result.checkpoint, map_location="cpu", weights_only=True)
    stats = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm buffers, not weights
    moved = {
        f"{part} {kind}": max(
            (after[part][k].float() - v.float()).abs().max().item()
            for k, v in before[part].items()
            if k.endswith(stats) == (kind == "BatchNorm statistics")
        )
        for part, kind in (
            ("model_state", "weights"), ("decoder_state", "weights"), ("decoder_state", "BatchNorm statistics")
        )
    }  # fmt: skip
    print(
        f"finetuned {base.name} -> {result.checkpoint} in {time.perf_counter() - start:.0f} s; keys "
        f"{sorted(after)}; largest weight change: {', '.join(f'{k} {v:.2e}' for k, v in moved.items())}"
    )
    return Path(result.checkpoint)


def microsam_untiled(args, image_path: Path, checkpoint: Path, model_type: str, params: dict, out: Path) -> dict:
    """micro-sam's InstanceSegmentationWithDecoder on the whole image (the driver, in micro-sam's venv)."""
    record = microsam_driver(args, out, [
        "--mode", "ais", "--image", str(image_path), "--checkpoint", str(checkpoint), "--model-type", model_type,
        "--generate", json.dumps(params),
    ])  # fmt: skip
    record["labels"] = np.load(out.with_suffix(".npy"))
    record["features"] = np.load(out.with_suffix(".features.npy"))
    record["maps"] = np.load(out.with_suffix(".maps.npy"))
    return record


def tilesam_untiled(
    image_path: Path, checkpoint: Path, params: dict, features: np.ndarray | None = None, batch_stats: bool = False
) -> dict:
    """tilesam's AIS on the whole image through its API; on ``features`` (an embedding) instead of its own if given.

    ``batch_stats``: run the decoder in train mode, so that its BatchNorm layers normalise with the image's
    own statistics instead of the running ones, as micro-sam 1.8.14 does (it never calls ``.eval()`` on
    the UNETR it builds); a diagnostic, not tilesam's behaviour.
    """
    from tilesam.config import AisParams
    from tilesam.embed import encode, normalize
    from tilesam.models import load_decoder_state, load_model
    from tilesam.models.unetr import decode_maps, load_decoder
    from tilesam.segment.ais import ais_labels

    times = {}
    start = time.perf_counter()
    model = load_model(checkpoint, device="cpu")
    decoder = load_decoder(load_decoder_state(checkpoint), source=str(checkpoint))
    if batch_stats:
        decoder.train()  # only BatchNorm differs: the decoder has no dropout, InstanceNorm keeps no statistics
    times["load model"] = time.perf_counter() - start
    image = tifffile.imread(image_path)
    model_size = model.image_encoder.img_size
    start = time.perf_counter()
    if features is None:
        with torch.inference_mode():
            embedding = encode(model, [normalize(image, (float(image.min()), float(image.max())))])
    else:
        embedding = torch.from_numpy(features)
    times["embedding"] = time.perf_counter() - start
    from segment_anything.utils.transforms import ResizeLongestSide

    input_size = ResizeLongestSide.get_preprocess_shape(*image.shape[:2], model_size)
    start = time.perf_counter()
    maps = decode_maps(decoder, embedding, input_size, image.shape[:2], model_size=model_size)[0]
    times["segmentation"] = time.perf_counter() - start
    start = time.perf_counter()
    labels = ais_labels(maps, AisParams(**params, tiles_per_batch=1))
    times["merging"] = time.perf_counter() - start
    return {
        "labels": labels,
        "maps": maps,
        "features": embedding.numpy(),
        "times": times,
        "n_instances": int(len(np.unique(labels[labels > 0]))),
    }


def ais_equality(args, params: dict, markdown) -> int:
    """micro-sam's untiled AIS against tilesam's on the demo image, for a fitted and a finetuned checkpoint."""
    from sklearn.metrics import adjusted_rand_score

    torch.set_num_threads(args.cores)
    work = args.work.resolve()
    image_path, labels_path = equality_inputs(work)
    fitted = fitted_checkpoint(work, "vit_b", image_path, labels_path, args.fit_steps, args.fit_crop)
    checkpoints = {"fitted": lambda: fitted}
    if args.finetune_iterations:
        checkpoints["finetuned"] = lambda: finetuned_checkpoint(
            work, fitted, image_path, labels_path, args.finetune_iterations
        )
    truth = tifffile.imread(labels_path)
    rows, ok = [], True
    for name, make in checkpoints.items():
        checkpoint = make()
        print(f"== AIS equality: {name} ({checkpoint})", flush=True)
        ms = microsam_untiled(
            args, image_path, checkpoint, "vit_b", params, work / "ais_equality" / f"microsam_{name}.json"
        )
        own = tilesam_untiled(image_path, checkpoint, params)
        batch = tilesam_untiled(image_path, checkpoint, params, features=ms["features"], batch_stats=True)
        ms_times = {r["stage"]: r["wall_s"] for r in ms["stages"]}
        cases = (
            ("tilesam (decoder in eval mode)", "each tool's own", own),
            ("diagnostic: decoder BatchNorm on batch statistics, as micro-sam", "micro-sam's", batch),
        )
        for tilesam, embedding, ts in cases:
            ari = adjusted_rand_score(ms["labels"].ravel(), ts["labels"].ravel())
            if ts is own:
                ok &= ari >= 0.99
            rows.append(
                {
                    "checkpoint": name, "tilesam": tilesam, "embedding": embedding,
                    "instances_microsam": ms["n_instances"], "instances_tilesam": ts["n_instances"],
                    "ari": f"{ari:.4f}",
                    "ari_microsam_vs_truth": f"{adjusted_rand_score(truth.ravel(), ms['labels'].ravel()):.3f}",
                    "embedding_max_abs_diff": f"{np.abs(ms['features'] - ts['features']).max():.2e}",
                    "maps_max_abs_diff": f"{np.abs(ms['maps'] - ts['maps']).max():.2e}",
                    **{
                        f"{stage}_s microsam/tilesam": f"{ms_times[stage]:.2f} / {ts['times'][stage]:.2f}"
                        for stage in ("embedding", "segmentation", "merging")
                    },
                }
            )  # fmt: skip
        print(markdown(rows[-len(cases) :]), flush=True)
    header = (
        f"AIS equality, untiled 256 x 256 demo image, vit_b (random weights, seed 0) + decoder; "
        f"generate/AisParams {json.dumps(params)}; {platform.platform()}, torch threads {args.cores}; "
        f"times: embedding = encoder, segmentation = decoder maps, merging = post-processing"
    )
    text = header + "\n\n" + markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vs_microsam_ais_equality.md").write_text(text + "\n")
    print("\n" + text)
    return 0 if ok else 1
