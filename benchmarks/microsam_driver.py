"""micro-sam's tiled automatic segmentation, stage by stage, timed: run in micro-sam's own venv.

`benchmarks/vs_microsam.py` runs this file with the micro-sam environment's python (made by
`benchmarks/setup_microsam.sh`); it imports nothing from tilesam. It makes the calls that
`micro_sam.automatic_segmentation.automatic_instance_segmentation` makes for a 2D image, one
stage at a time, so that each stage gets its own times:

* load: `get_predictor_and_segmenter(model_type, checkpoint, is_tiled=True, segmentation_mode)`;
* embedding: `util.precompute_image_embeddings(predictor, image, tile_shape, halo)`;
* segmentation: `segmenter.initialize(image, image_embeddings)` (AMG: the decoder over every
  tile's point grid; AIS and APG: the decoder head over every tile);
* merging: `segmenter.generate(...)` (AMG: filtering, NMS across tiles and painting into one
  label image; AIS: the watershed over the assembled maps; APG (`TiledAutomaticPromptGenerator`):
  the point prompts of the assembled maps, each decoded by SAM in the tile (+ halo) that holds it,
  NMS over all masks of the image and painting).

As `automatic_instance_segmentation` does for a tiled decoder: `initialize(..., batch_size=1)`;
AIS's `generate` gets the tile shape and halo, APG's does not (it takes none).

`--untiled` (AIS only; the equality check of `vs_microsam.py --ais-equality`): the untiled path as
micro-sam's users write it: `get_predictor_and_decoder(model_type, checkpoint)` (a checkpoint with
`model_state` and `decoder_state`), `util.precompute_image_embeddings(predictor, image)`,
`InstanceSegmentationWithDecoder(predictor, decoder)`, `initialize(image, embeddings)` and
`generate(**params)` with the parameters given as `--generate` JSON. Writes, besides the labels,
the embedding (`<out>.features.npy`, with input_size / original_size in the JSON) and the decoder's
three maps (`<out>.maps.npy`), so that the caller can run its own decoder on the same embedding.

`--untiled --mode apg` (the equality check of `vs_microsam.py --apg-equality`): as `--untiled`, then
`AutomaticPromptGenerator(predictor, decoder)` given the AIS segmenter's maps (`set_state`) and its
`generate(**params)` for each parameter set of `--generate-apg` (a JSON list), each label image saved
as `<out>.apg<k>.npy`; the AIS labels (`--generate`) come from the same run.

Each stage reports wall time (perf_counter), this process's CPU time (process_time) and its own
peak resident memory: the kernel's high-water mark (VmHWM) is reset before the stage
(/proc/self/clear_refs) where Linux allows it, else the process's peak so far is reported.
Writes a JSON file with the stages and the label image as a .npy file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_mb() -> float:
    """VmHWM of this process (MB); getrusage's ru_maxrss where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Stages:
    """Wall, CPU and peak memory of each stage, in the order they ran."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, fn, *args, **kwargs):
        per_stage = _reset_peak()
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.records.append(
            {
                "stage": name,
                "wall_s": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "peak_mb": _peak_mb(),
                "peak_is_per_stage": per_stage,
            }
        )
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", required=True, help="a 2D uint8 TIFF")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--model-type", required=True, help="vit_b, vit_t, ... (micro-sam's model_type)")
    parser.add_argument("--mode", choices=["amg", "ais", "apg"], default="amg")
    parser.add_argument("--tile", type=int, nargs=2, help="required unless --untiled")
    parser.add_argument("--halo", type=int, nargs=2, help="required unless --untiled")
    parser.add_argument("--untiled", action="store_true", help="AIS on the whole image (the equality check)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--generate", default="{}", help="JSON keyword arguments of segmenter.generate")
    parser.add_argument("--generate-apg", default="[]", help="--untiled --mode apg: JSON list of APG generate kwargs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="JSON file; the labels go next to it as .npy")
    args = parser.parse_args()

    t_start = time.perf_counter()
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from micro_sam import util
    from micro_sam.automatic_segmentation import get_predictor_and_segmenter

    stages = Stages()
    image = stages.run("read image", util.load_image_data, args.image)
    if args.untiled:
        untiled_ais(args, image, stages, t_start)
        return
    if args.tile is None or args.halo is None:
        parser.error("--tile and --halo are required unless --untiled")
    extra = {"points_per_side": args.points_per_side, "points_per_batch": args.points_per_batch}
    predictor, segmenter = stages.run(
        "load model",
        get_predictor_and_segmenter,
        model_type=args.model_type,
        checkpoint=args.checkpoint,
        device=args.device,
        segmentation_mode=args.mode,
        is_tiled=True,
        **(extra if args.mode == "amg" else {}),
    )
    tile, halo = tuple(args.tile), tuple(args.halo)
    embeddings = stages.run(
        "embedding",
        util.precompute_image_embeddings,
        predictor=predictor,
        input_=image,
        ndim=2,
        tile_shape=tile,
        halo=halo,
        verbose=False,
        batch_size=1,
    )
    init = {"image": image, "image_embeddings": embeddings, "verbose": False}
    generate = json.loads(args.generate)
    if args.mode in ("ais", "apg"):  # as automatic_instance_segmentation does for a tiled decoder
        init["batch_size"] = 1
    if args.mode == "ais":
        generate.update({"tile_shape": tile, "halo": halo})
    stages.run("segmentation", segmenter.initialize, **init)
    labels = stages.run("merging", segmenter.generate, **generate)
    labels = np.asarray(labels)
    out = Path(args.out)
    np.save(out.with_suffix(".npy"), labels)
    out.write_text(
        json.dumps(
            {
                "stages": stages.records,
                "wall_s": time.perf_counter() - t_start,
                "cpu_s": time.process_time(),
                "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "n_instances": int(len(np.unique(labels[labels > 0]))),
                "n_tiles": len(embeddings["features"]),
                "torch_threads": torch.get_num_threads(),
                "versions": {"micro_sam": __import__("micro_sam").__version__, "torch": torch.__version__},
            },
            indent=1,
        )
    )


def untiled_ais(args, image, stages: Stages, t_start: float) -> None:
    """AIS on the whole image, as micro-sam's users call it; labels, embedding and maps saved for comparison."""
    import numpy as np
    import torch
    from micro_sam import util
    from micro_sam.instance_segmentation import InstanceSegmentationWithDecoder, get_predictor_and_decoder

    if args.mode not in ("ais", "apg"):
        raise SystemExit("--untiled is the AIS/APG equality check: use --mode ais or apg")
    predictor, decoder = stages.run(
        "load model", get_predictor_and_decoder, model_type=args.model_type, checkpoint_path=args.checkpoint,
        device=args.device,
    )  # fmt: skip
    embeddings = stages.run(
        "embedding", util.precompute_image_embeddings, predictor=predictor, input_=image, ndim=2, verbose=False
    )
    segmenter = InstanceSegmentationWithDecoder(predictor, decoder)
    stages.run("segmentation", segmenter.initialize, image=image, image_embeddings=embeddings, verbose=False)
    labels = np.asarray(stages.run("merging", segmenter.generate, **json.loads(args.generate)))
    out = Path(args.out)
    apg_instances = []
    if args.mode == "apg":
        from micro_sam.instance_segmentation import AutomaticPromptGenerator

        apg = AutomaticPromptGenerator(predictor, decoder)
        apg.set_state(segmenter.get_state())  # the same maps; the predictor holds the embedding
        for k, params in enumerate(json.loads(args.generate_apg)):
            apg_labels = np.asarray(stages.run(f"apg {k}", apg.generate, **params))
            np.save(out.with_suffix(f".apg{k}.npy"), apg_labels)
            apg_instances.append(int(len(np.unique(apg_labels[apg_labels > 0]))))
    np.save(out.with_suffix(".npy"), labels)
    np.save(out.with_suffix(".features.npy"), np.asarray(embeddings["features"], dtype=np.float32))
    state = segmenter.get_state()
    maps = [state[k] for k in ("foreground", "center_distances", "boundary_distances")]
    np.save(out.with_suffix(".maps.npy"), np.stack(maps).astype(np.float32))
    out.write_text(
        json.dumps(
            {
                "stages": stages.records,
                "wall_s": time.perf_counter() - t_start,
                "cpu_s": time.process_time(),
                "n_instances": int(len(np.unique(labels[labels > 0]))),
                "input_size": [int(s) for s in embeddings["input_size"]],
                "original_size": [int(s) for s in embeddings["original_size"]],
                "generate": json.loads(args.generate),
                "generate_apg": json.loads(args.generate_apg),
                "apg_instances": apg_instances,
                "torch_threads": torch.get_num_threads(),
                "versions": {"micro_sam": __import__("micro_sam").__version__, "torch": torch.__version__},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
