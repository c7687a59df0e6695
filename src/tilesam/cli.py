"""`tilesam <command>`: the one command line the workflow's rules call.

Each subcommand is a thin shell over a package function; it parses arguments,
sets up logging and threads, and reports errors as one clear line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("tilesam")


def _grid_args(p: argparse.ArgumentParser, block: bool = True, image: bool = True) -> None:
    if image:
        p.add_argument("--image", required=True, help="imported image (OME-Zarr from `tilesam import-image`)")
    p.add_argument("--model", required=True, help="model record (JSON from `tilesam models fetch --record`)")
    p.add_argument("--tile-shape", type=int, nargs=2, required=True)
    p.add_argument("--halo", type=int, nargs=2, required=True)
    if block:
        p.add_argument("--block", type=int, required=True)
    p.add_argument("--tiles-per-block", type=int, required=True)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="embedding storage dtype")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (the job's threads)")


def _setup_torch(args) -> None:
    import torch

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for, but torch sees no CUDA device")
    return name


def _model_and_provenance(args):
    """Load the model of a record once per job, and the provenance its stores carry."""
    record, model = _load_record_model(args)
    grid, prov = _provenance(args, record, model, args.image)
    return model, grid, prov


def _load_record_model(args):
    from tilesam.models import load_model

    record = json.loads(Path(args.model).read_text())
    return record, load_model(record["load"], device=_device(args.device))


def _provenance(args, record: dict, model, image: str):
    """The tile grid of an imported image and the provenance of its block stores."""
    from tilesam.data import io
    from tilesam.embed import Provenance
    from tilesam.tiling import TileGrid

    info = io.read_info(image)
    grid = TileGrid(info.shape, tuple(args.tile_shape), tuple(args.halo))
    prov = Provenance(
        model=record["name"],
        model_sha256=record["sha256"],
        img_size=int(model.image_encoder.img_size),
        grid=grid.to_dict(),
        block=args.block,
        tiles_per_block=args.tiles_per_block,
        image_signature=info.signature,
        dtype=args.dtype,
    )
    return grid, prov


def cmd_models(args) -> None:
    from tilesam import models

    if args.action == "list":
        print(models.models_table().to_string(index=False))
    elif args.action == "recommend":
        print(models.recommend(args.modality))
    elif args.action == "fetch":
        for name in args.names:
            path = models.fetch(name, offline=args.offline or None)
            if args.record:
                info = models.model_info(name)
                load = name if Path(name).exists() is False else str(Path(name).resolve())
                record = {
                    "name": info["name"],
                    "load": load,
                    "path": str(path),
                    "sha256": info["sha256"],
                    "architecture": info["architecture"],
                }
                Path(args.record).parent.mkdir(parents=True, exist_ok=True)
                Path(args.record).write_text(json.dumps(record, indent=1))
            print(f"{name}: {path}")
    elif args.action == "record":
        from tilesam.finetune import register_finetuned

        card = register_finetuned(args.card)  # checks the checkpoint against the card's sha256
        card_file = Path(args.card).resolve()
        checkpoint = card_file.parent / json.loads(card_file.read_text())["checkpoint"]
        record = {
            "name": card.name,
            "load": str(checkpoint),
            "path": str(checkpoint),
            "sha256": card.sha256,
            "architecture": card.architecture,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(record, indent=1))


def cmd_datasets(args) -> None:
    import pandas as pd

    from tilesam.data import public_datasets

    if args.action == "list":
        print(pd.DataFrame(public_datasets.datasets_table()).to_string(index=False))
    elif args.action == "fetch":
        sha256: dict[str, str] | str | None = None
        if args.sha256:  # HASH (one-file datasets) or FILE=HASH, repeatable
            pairs = [h.split("=", 1) if "=" in h else [None, h] for h in args.sha256]
            sha256 = pairs[0][1] if len(pairs) == 1 and pairs[0][0] is None else dict(pairs)
        path = public_datasets.fetch_dataset(args.name, args.root, offline=args.offline or None, sha256=sha256)
        print(f"{args.name}: {path}")


def cmd_synthetic(args) -> None:
    from tilesam.data import synthetic

    specs = synthetic.demo_specs()
    if args.name not in specs:
        raise ValueError(f"no synthetic image {args.name!r}; known: {', '.join(specs)}")
    synthetic.write_demo(specs[args.name], args.image, args.labels)


def cmd_import_image(args) -> None:
    from tilesam.data import io

    info = io.import_image(args.src, args.dst, ndim=args.ndim, tile_shape=tuple(args.tile_shape), key=args.key)
    log.info("imported %s: shape %s, %s, %d channel(s)", args.src, info.shape, info.dtype, info.channels)


def cmd_import_labels(args) -> None:
    from tilesam.data import io

    io.import_labels(args.src, args.dst, image=args.image, key=args.key)


def cmd_embed(args) -> None:
    from dataclasses import asdict

    from tilesam.embed import embed_block

    _setup_torch(args)
    model, grid, prov = _model_and_provenance(args)
    stats = embed_block(model, prov, args.image, grid, args.out, batch_size=args.batch_size, precision=args.precision)
    log.info("embedded block %d: %s (%s)", args.block, stats, asdict(prov)["model"])


def cmd_segment(args) -> None:
    from dataclasses import asdict

    from tilesam.config import AmgParams
    from tilesam.segment.blocks import segment_block
    from tilesam.segment.box_amg import DEFAULT_BOX_SIZES

    _setup_torch(args)
    model, grid, prov = _model_and_provenance(args)
    amg = json.loads(args.amg or "{}")
    prompt, box_sizes = amg.pop("prompt", "point"), tuple(amg.pop("box_sizes", DEFAULT_BOX_SIZES))
    if args.amg_search:  # the best thresholds of the validation search
        import pandas as pd

        best = pd.read_csv(args.amg_search).iloc[0]
        amg.update(
            pred_iou_thresh=float(best.pred_iou_thresh), stability_score_thresh=float(best.stability_score_thresh)
        )
    params = AmgParams(**amg)
    stats = segment_block(
        model,
        args.embeddings,
        asdict(prov),
        grid,
        args.out,
        method=args.method,
        params=params,
        prompt=prompt,
        box_sizes=box_sizes,
    )
    log.info("segmented block %d: %s", args.block, stats)


def cmd_stitch(args) -> None:
    from tilesam.config import StitchParams
    from tilesam.jobs import stitch_image

    params = StitchParams(**json.loads(args.params or "{}"))
    result = stitch_image(
        args.image, args.blocks, tuple(args.tile_shape), tuple(args.halo), args.tiles_per_block, args.out, params
    )
    log.info("stitched %s: %s", args.image, result)


def cmd_evaluate(args) -> None:
    from tilesam.jobs import evaluate_image

    evaluate_image(args.pred, args.gt, args.out, meta=json.loads(args.meta), blocks=args.blocks or ())


def cmd_prompt_eval(args) -> None:
    from dataclasses import asdict

    from tilesam.data import ome
    from tilesam.interactive.evaluate import block_embeddings, evaluate_prompts

    _setup_torch(args)
    model, grid, prov = _model_and_provenance(args)
    gt = ome.open_level0(args.gt)[...]
    embedding_of = block_embeddings(args.embeddings, args.tiles_per_block, asdict(prov))
    records = evaluate_prompts(model, gt, grid, embedding_of, args.mode, seed=args.seed)
    meta = {**json.loads(args.meta), "method": args.mode, "device": str(model.device)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps([{**meta, **r} for r in records], indent=1))
    log.info("%s prompts: mSA per iteration %s", args.mode, [round(r["msa"], 3) for r in records])


def cmd_amg_search(args) -> None:
    from dataclasses import asdict

    from tilesam.config import AmgParams, StitchParams
    from tilesam.data import ome
    from tilesam.data.datasets import stem
    from tilesam.interactive.evaluate import block_embeddings
    from tilesam.segment.box_amg import DEFAULT_BOX_SIZES
    from tilesam.segment.search import SearchImage, protocol_range, search_amg

    _setup_torch(args)
    if not (len(args.image) == len(args.gt) == len(args.embeddings)):
        raise ValueError("amg-search: give --image, --gt and --embeddings once per validation image")
    record, model = _load_record_model(args)
    images = []
    for image, gt, blocks in zip(args.image, args.gt, args.embeddings):
        grid, prov = _provenance(args, record, model, image)
        images.append(
            SearchImage(
                stem(image),
                grid,
                block_embeddings(blocks, args.tiles_per_block, asdict(prov)),
                ome.open_level0(gt)[...],
            )
        )
    amg = json.loads(args.amg or "{}")
    prompt, box_sizes = amg.pop("prompt", "point"), tuple(amg.pop("box_sizes", DEFAULT_BOX_SIZES))
    table = search_amg(
        model,
        images,
        AmgParams(**amg),
        prompt=prompt,
        box_sizes=box_sizes,
        pred_iou_grid=protocol_range(*args.pred_iou),
        stability_grid=protocol_range(*args.stability),
        stitch_params=StitchParams(**json.loads(args.stitch or "{}")),
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False)
    best = table.iloc[0]
    log.info(
        "best AMG thresholds: pred_iou %.3f, stability %.3f (mSA %.3f on %d images)",
        best.pred_iou_thresh,
        best.stability_score_thresh,
        best.mSA,
        len(images),
    )


def cmd_benchmark(args) -> None:
    import pandas as pd

    from tilesam.report import figures
    from tilesam.report.tables import write_tables

    pairs = json.loads(args.compare or "[]")
    table = write_tables(args.evaluations, args.out_dir, pairs)
    out = Path(args.out_dir)
    figures.msa_bars(table, out / "msa_bars.png")
    figures.msa_iterations(pd.read_csv(out / "iterations.csv"), out / "msa_iterations.png")


def cmd_finetune(args) -> None:
    from tilesam.config import FinetuneConfig
    from tilesam.finetune import finetune

    _setup_torch(args)
    config = FinetuneConfig(
        iterations=args.iterations,
        iterations_per_epoch=args.iterations_per_epoch,
        images_per_batch=args.images_per_batch,
        objects_per_image=args.objects,
        sub_iterations=args.sub_iterations,
        box_probability=args.box_probability,
        max_points=args.max_points,
        train_parts=tuple(args.train),
        lr=args.lr,
        prompt_encoder_lr_factor=args.prompt_lr_factor,
        crop_size=args.crop_size,
        augment_variants=args.augment_variants,
        val_max_objects=args.val_max_objects,
        seed=args.seed,
    )
    result = finetune(
        args.model,
        args.images,
        args.labels,
        args.out,
        val_images=args.val_images,
        val_labels=args.val_labels,
        val_fraction=args.val_fraction,
        config=config,
        name=args.name,
        dataset=args.dataset,
        device=_device(args.device),
        embedding_cache=args.embedding_cache,
        resume=not args.restart,
        progress=not args.no_progress,
    )
    log.info(
        "finetuned %s: %s (card %s, best epoch %d)", result.name, result.checkpoint, result.card, result.best_epoch
    )


def cmd_figure(args) -> None:
    from tilesam.report import figures

    if len(args.names) != len(args.results):
        raise ValueError(f"{len(args.names)} names for {len(args.results)} results")
    figures.qualitative(args.image, args.gt, dict(zip(args.names, args.results)), args.out, title=args.title)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilesam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list, fetch or recommend models")
    p.set_defaults(func=cmd_models)
    msub = p.add_subparsers(dest="action", required=True)
    msub.add_parser("list", help="a table of all known models")
    q = msub.add_parser("fetch", help="download (checksum-verified) into the cache")
    q.add_argument("names", nargs="+", help="registry names, name@version, or checkpoint paths")
    q.add_argument("--offline", action="store_true", help="never touch the network")
    q.add_argument("--record", help="write a JSON record of the fetched model here (used by the workflow)")
    q = msub.add_parser("record", help="the workflow's record of a finetuned model, from its card")
    q.add_argument("--card", required=True, help="model card JSON written by `tilesam finetune`")
    q.add_argument("--out", required=True)
    q = msub.add_parser("recommend", help="the model to use for a modality")
    q.add_argument("--modality", required=True, choices=["lm", "em_organelles", "em_boundaries", "other"])

    p = sub.add_parser("datasets", help="list or fetch public benchmark datasets")
    p.set_defaults(func=cmd_datasets)
    dsub = p.add_subparsers(dest="action", required=True)
    dsub.add_parser("list", help="name, modality, ndim, url and sha256 of every file")
    q = dsub.add_parser("fetch", help="download (checksum-verified) and convert to <root>/<name>/{images,labels}")
    q.add_argument("name")
    q.add_argument("--root", default="resources/datasets")
    q.add_argument(
        "--sha256",
        action="append",
        metavar="[FILE=]HASH",
        help="checksum where none is published (repeat as FILE=HASH for each file)",
    )
    q.add_argument("--offline", action="store_true", help="never touch the network")

    p = sub.add_parser("synthetic", help="write one synthetic demo image and its labels")
    p.set_defaults(func=cmd_synthetic)
    p.add_argument("name")
    p.add_argument("image")
    p.add_argument("labels")

    p = sub.add_parser("import-image", help="any input -> OME-Zarr chunked to the tile grid")
    p.set_defaults(func=cmd_import_image)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--ndim", type=int, choices=[2, 3], default=2)
    p.add_argument("--tile-shape", type=int, nargs=2, required=True)
    p.add_argument("--key")

    p = sub.add_parser("import-labels", help="ground-truth labels -> OME-Zarr, checked against the image")
    p.set_defaults(func=cmd_import_labels)
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--image", required=True)
    p.add_argument("--key")

    p = sub.add_parser("embed", help="embed the tiles of one block")
    p.set_defaults(func=cmd_embed)
    _grid_args(p)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--out", required=True)

    p = sub.add_parser("segment", help="automatic segmentation of one block from its embeddings")
    p.set_defaults(func=cmd_segment)
    _grid_args(p)
    p.add_argument("--embeddings", required=True)
    p.add_argument("--method", default="amg")
    p.add_argument("--amg", help="AMG parameters as JSON")
    p.add_argument("--amg-search", help="CSV of `tilesam amg-search`: its best thresholds replace --amg's")
    p.add_argument("--out", required=True)

    p = sub.add_parser("prompt-eval", help="prompted (interactive) evaluation from stored embeddings")
    p.set_defaults(func=cmd_prompt_eval, block=0)
    _grid_args(p, block=False)
    p.add_argument("--embeddings", nargs="+", required=True, help="the image's embedding block stores, in order")
    p.add_argument("--gt", required=True, help="ground-truth labels (OME-Zarr from `tilesam import-labels`)")
    p.add_argument("--mode", required=True, choices=["point", "box", "iterative_point", "iterative_box"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--meta", default="{}", help="JSON fields to carry into the result (dataset, model, ...)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("amg-search", help="grid search of AMG thresholds on validation images")
    p.set_defaults(func=cmd_amg_search, block=0)
    _grid_args(p, block=False, image=False)
    p.add_argument("--image", action="append", required=True, help="an imported validation image (repeat)")
    p.add_argument("--gt", action="append", required=True, help="its ground truth (repeat, same order)")
    p.add_argument(
        "--embeddings",
        action="append",
        nargs="+",
        required=True,
        help="its embedding block stores (repeat, same order)",
    )
    p.add_argument("--amg", help="AMG parameters as JSON (the thresholds are searched)")
    p.add_argument("--pred-iou", type=float, nargs=3, default=[0.6, 0.9, 0.025], metavar=("START", "STOP", "STEP"))
    p.add_argument("--stability", type=float, nargs=3, default=[0.6, 0.95, 0.025], metavar=("START", "STOP", "STEP"))
    p.add_argument("--stitch", help="stitching parameters as JSON")
    p.add_argument("--out", required=True, help="CSV: mSA per setting, best first")

    p = sub.add_parser("stitch", help="join per-tile labels into one label image")
    p.set_defaults(func=cmd_stitch)
    p.add_argument("--image", required=True)
    p.add_argument("--blocks", nargs="+", required=True)
    p.add_argument("--tile-shape", type=int, nargs=2, required=True)
    p.add_argument("--halo", type=int, nargs=2, required=True)
    p.add_argument("--tiles-per-block", type=int, required=True)
    p.add_argument("--params", help="stitching parameters as JSON (see tilesam.stitch.tiles.StitchParams)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("evaluate", help="scores of a label image against ground truth")
    p.set_defaults(func=cmd_evaluate)
    p.add_argument("--pred", required=True)
    p.add_argument("--gt", required=True)
    p.add_argument("--meta", default="{}", help="JSON fields to carry into the result (dataset, model, ...)")
    p.add_argument("--blocks", nargs="*", help="the image's segmentation block stores (for the cost columns)")
    p.add_argument("--out", required=True)

    p = sub.add_parser("benchmark", help="tables from per-image evaluations")
    p.set_defaults(func=cmd_benchmark)
    p.add_argument("evaluations", nargs="+")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--compare", help='JSON list of {"vanilla": model, "finetuned": model} pairs')

    p = sub.add_parser("finetune", help="finetune a model on images with instance labels (resumable)")
    p.set_defaults(func=cmd_finetune)
    p.add_argument("--model", required=True, help="base model: registry name, name@version or checkpoint path")
    p.add_argument("--images", nargs="+", required=True, help="training images: globs or files (2D, gray or RGB)")
    p.add_argument("--labels", nargs="+", required=True, help="instance labels, paired with images by file name")
    p.add_argument("--val-images", nargs="+", help="validation images (default: --val-fraction of the training ones)")
    p.add_argument("--val-labels", nargs="+")
    p.add_argument(
        "--val-fraction", type=float, default=0.0, help="without --val-images: validate on the last F by name"
    )
    p.add_argument("--out", required=True, help="checkpoint to write (a plain SAM state dict); the card goes beside it")
    p.add_argument("--name", help="model name (default <base>-ft-<dataset>)")
    p.add_argument("--dataset", help="dataset name in the default model name (default: the images' folder)")
    p.add_argument("--iterations", type=int, default=500)
    p.add_argument("--iterations-per-epoch", type=int, help="default: one pass over the training images")
    p.add_argument("--images-per-batch", type=int, default=1)
    p.add_argument("--objects", type=int, default=8, help="objects prompted per image and step")
    p.add_argument("--sub-iterations", type=int, default=3, help="iterative-prompting passes per step")
    p.add_argument("--box-probability", type=float, default=0.5, help="share of views prompted by boxes (else points)")
    p.add_argument("--max-points", type=int, default=3, help="point-prompted views get 1..N random positive points")
    p.add_argument(
        "--train",
        nargs="+",
        default=["mask_decoder", "prompt_encoder"],
        choices=["mask_decoder", "prompt_encoder", "image_encoder"],
        help="parts to train",
    )
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--prompt-lr-factor", type=float, default=1.0, help="the prompt encoder's learning rate / lr")
    p.add_argument("--crop-size", type=int, help="train on crops of this side (default: whole images)")
    p.add_argument("--augment-variants", type=int, default=4, help="dihedral variants per image, 1..8")
    p.add_argument("--val-max-objects", type=int, default=32, help="objects scored per validation image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--embedding-cache", help="folder keeping image embeddings between runs (frozen encoder)")
    p.add_argument("--restart", action="store_true", help="ignore the state of an interrupted run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p = sub.add_parser("figure", help="qualitative panel: image, ground truth, results on one crop")
    p.set_defaults(func=cmd_figure)
    p.add_argument("--image", required=True)
    p.add_argument("--gt")
    p.add_argument("--results", nargs="+", required=True)
    p.add_argument("--names", nargs="+", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--out", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        if args.verbose:
            raise
        print(f"tilesam {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
