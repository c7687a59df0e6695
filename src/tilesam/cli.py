"""`tilesam <command>`: the one command line the workflow's rules call.

Arguments only: each subcommand parses its files and settings and calls one function of
`tilesam.jobs` (or of a package module). Settings come from the config schema: `--config`
takes config sections as JSON (what the rules pass), and every field of a stage's data class
is also a flag (`--tile-shape 512 512`), which wins over the JSON. Errors are one clear line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from tilesam import config as schema

log = logging.getLogger("tilesam")

# --- settings from the schema -----------------------------------------------------------------
_TYPES = {"integer": int, "number": float, "string": str}


def _flag_type(prop: dict[str, Any]) -> dict[str, Any]:
    """argparse keywords for one schema property (nullable types accept the value only)."""
    kinds = prop.get("type", "string")
    kinds = [k for k in ([kinds] if isinstance(kinds, str) else kinds) if k != "null"]
    if "enum" in prop:
        return {"choices": [v for v in prop["enum"] if v is not None], "metavar": None}
    if kinds == ["array"]:
        items = prop.get("items", {})
        return {"nargs": "+", **_flag_type(items)}
    if kinds == ["boolean"]:
        return {"type": lambda s: {"true": True, "false": False}[s.lower()], "metavar": "true|false"}
    return {"type": _TYPES[kinds[0]]}


def _add_settings(p: argparse.ArgumentParser, cls: type) -> None:
    """A flag per field of `cls`, typed and documented by its schema key."""
    props = schema.section(*cls.__schema_path__)["properties"]
    group = p.add_argument_group(f"{'.'.join(cls.__schema_path__)} settings (default: the config schema's)")
    for f in fields(cls):
        prop = props[f.name]
        group.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f"{cls.__name__}:{f.name}",
            default=argparse.SUPPRESS,
            help=prop.get("description", "").strip() + f" (default {prop.get('default')})",
            **{"metavar": f.name.upper(), **_flag_type(prop)},
        )


def _settings(args: argparse.Namespace, cls: type) -> Any:
    """`cls` from the `--config` JSON's section, overridden by its flags."""
    values = json.loads(getattr(args, "config", None) or "{}")
    for key in cls.__schema_path__:
        values = values.get(key, {})
    values = {**values}
    for dest, value in vars(args).items():
        owner, _, name = dest.partition(":")
        if owner == cls.__name__:
            values[name] = value
    return schema.build(cls, values)


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=schema.defaults()["device"], choices=schema.enum("device"))
    p.add_argument("--threads", type=int, help="torch CPU threads (the job's threads)")


# --- the commands -------------------------------------------------------------------------------
def cmd_models(args) -> None:
    from tilesam import jobs, models

    if args.action == "list":
        print(models.models_table().to_string(index=False))
    elif args.action == "recommend":
        print(models.recommend(args.modality))
    elif args.action == "fetch":
        if args.record and len(args.names) != 1:
            raise ValueError(f"--record takes one model, got {len(args.names)}: {' '.join(args.names)}")
        for name in args.names:
            files = jobs.fetch_model(
                name, record=args.record, offline=args.offline, sha256=args.sha256, trust_pickle=args.trust_pickle
            )
            print(f"{name}: {files.weights}" + (f" (decoder {files.decoder})" if files.decoder else ""))
    elif args.action == "record":
        jobs.record_finetuned(args.card, args.out)


def cmd_datasets(args) -> None:
    import pandas as pd

    from tilesam.data import public_datasets

    if args.action == "list":
        print(pd.DataFrame(public_datasets.datasets_table()).to_string(index=False))
        return
    sha256: dict[str, str] | str | None = None
    if args.sha256:  # HASH (one-file datasets) or FILE=HASH, repeatable
        pairs = [h.split("=", 1) if "=" in h else [None, h] for h in args.sha256]
        sha256 = pairs[0][1] if len(pairs) == 1 and pairs[0][0] is None else dict(pairs)
    path = public_datasets.fetch_dataset(args.name, args.root, offline=args.offline or None, sha256=sha256)
    print(f"{args.name}: {path}")


def cmd_synthetic(args) -> None:
    from tilesam import jobs

    jobs.synthetic(args.name, args.image, args.labels)


def cmd_import_image(args) -> None:
    from tilesam import jobs

    jobs.import_image(args.src, args.dst, ndim=args.ndim, tiling=_settings(args, schema.Tiling), key=args.key)


def cmd_import_labels(args) -> None:
    from tilesam import jobs

    jobs.import_labels(args.src, args.dst, image=args.image, key=args.key)


def cmd_embed(args) -> None:
    from tilesam import jobs

    tiling, params = _settings(args, schema.Tiling), _settings(args, schema.EmbedParams)
    jobs.embed(
        args.image,
        args.model,
        args.block,
        args.out,
        tiling=tiling,
        params=params,
        device=args.device,
        mem_mb=args.mem_mb,
    )


def cmd_segment(args) -> None:
    from tilesam import jobs

    amg, dtype = _settings(args, schema.AmgParams), _settings(args, schema.EmbedParams).dtype
    jobs.segment(
        args.image, args.model, args.embeddings, args.block, args.out, tiling=_settings(args, schema.Tiling), amg=amg,
        dtype=dtype, method=args.method, device=args.device, search=args.search, ais=_settings(args, schema.AisParams),
    )  # fmt: skip


def cmd_stitch(args) -> None:
    from tilesam import jobs

    params = _settings(args, schema.StitchParams)
    jobs.stitch(args.image, args.blocks, args.out, tiling=_settings(args, schema.Tiling), params=params)


def cmd_evaluate(args) -> None:
    from tilesam import jobs

    jobs.evaluate(args.pred, args.gt, args.out, meta=json.loads(args.meta), blocks=args.blocks or ())


def cmd_prompt_eval(args) -> None:
    from tilesam import jobs

    jobs.prompt_eval(
        args.image, args.model, args.embeddings, args.gt, args.mode, args.out, tiling=_settings(args, schema.Tiling),
        dtype=_settings(args, schema.EmbedParams).dtype, device=args.device, seed=args.seed,
        params=_settings(args, schema.PromptParams), meta=json.loads(args.meta),
    )  # fmt: skip


def cmd_amg_search(args) -> None:
    from tilesam import jobs

    jobs.amg_search(
        args.model, json.loads(args.images), args.out, tiling=_settings(args, schema.Tiling),
        amg=_settings(args, schema.AmgParams),
        grid=_settings(args, schema.SearchGrid), stitch_params=_settings(args, schema.StitchParams),
        dtype=_settings(args, schema.EmbedParams).dtype, device=args.device,
    )  # fmt: skip


def cmd_classical_foreground(args) -> None:
    from tilesam import jobs

    jobs.classical_foreground(args.image, args.out, params=_settings(args, schema.ClassicalParams))


def cmd_classical_segment(args) -> None:
    from tilesam import jobs

    jobs.classical_segment(
        args.image, args.threshold, args.block, args.out, tiling=_settings(args, schema.Tiling),
        params=_settings(args, schema.ClassicalParams), search=args.search,
    )  # fmt: skip


def cmd_classical_search(args) -> None:
    from tilesam import jobs

    jobs.classical_search(
        json.loads(args.images), args.out, tiling=_settings(args, schema.Tiling),
        params=_settings(args, schema.ClassicalParams), grid=_settings(args, schema.ClassicalGrid),
        stitch_params=_settings(args, schema.StitchParams),
    )  # fmt: skip


def cmd_ais_search(args) -> None:
    from tilesam import jobs

    jobs.ais_search(
        args.model, json.loads(args.images), args.out, tiling=_settings(args, schema.Tiling),
        ais=_settings(args, schema.AisParams),
        grid=_settings(args, schema.AisSearchGrid), stitch_params=_settings(args, schema.StitchParams),
        dtype=_settings(args, schema.EmbedParams).dtype, device=args.device,
    )  # fmt: skip


def cmd_benchmark(args) -> None:
    from tilesam import jobs

    jobs.benchmark(args.evaluations, args.out_dir, json.loads(args.compare or "[]"), json.loads(args.in_domain))


def cmd_figure(args) -> None:
    from tilesam import jobs

    jobs.figure(args.image, args.gt, args.results, args.names, args.out, title=args.title, in_domain=args.in_domain)


def cmd_export(args) -> None:
    from tilesam.stitch.export import export_labels

    print(export_labels(args.labels, args.out, table=args.table))


def cmd_finetune(args) -> None:
    from tilesam import jobs

    section = json.loads(args.config or "{}").get("finetune", {})
    trust = schema.defaults()["trust_pickle"] if args.trust_pickle is None else args.trust_pickle
    val_fraction = args.val_fraction if args.val_fraction is not None else section.get("val_fraction", 0.0)
    jobs.finetune(
        args.model, args.images, args.labels, args.out, config=_settings(args, schema.FinetuneConfig),
        val_images=args.val_images, val_labels=args.val_labels, val_fraction=val_fraction, name=args.name,
        dataset=args.dataset, device=args.device, embedding_cache=args.embedding_cache, resume=not args.restart,
        progress=not args.no_progress, trust_pickle=trust,
    )  # fmt: skip


def cmd_init(args) -> None:
    from tilesam import init

    done = init.init(
        args.images, args.labels, modality=args.modality, out=args.out, model=args.model, ndim=args.ndim,
        name=args.name, force=args.force,
    )  # fmt: skip
    print(f"wrote {done.config}; check it, then run:\n  {done.command}")


# --- the table of subcommands ---------------------------------------------------------------------
@dataclass(frozen=True)
class Arg:
    """One argument: its flags and argparse keywords."""

    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


CONFIG = arg("--config", help="config sections as JSON (what the rules pass); flags below win over it")
OUT = arg("--out", required=True)
IMAGE = arg("--image", required=True, help="imported image (OME-Zarr from `tilesam import-image`)")
MODEL = arg("--model", required=True, help="model record (JSON from `tilesam models fetch --record`)")
META = arg("--meta", default="{}", help="JSON fields to carry into the result (dataset, model, ...)")
OFFLINE = arg("--offline", action="store_true", help="never touch the network")
TRUST_PICKLE = arg(
    "--trust-pickle",
    action="store_true",
    default=None,
    help="your own checkpoint files may be fully unpickled, which runs code from them (config: trust_pickle); "
    "registry files are always checked by their hash instead",
)


@dataclass(frozen=True)
class Command:
    """A subcommand: its function, help, arguments and the stages whose settings it takes."""

    func: Callable[[argparse.Namespace], None]
    help: str
    args: tuple[Arg, ...] = ()
    settings: tuple[type, ...] = ()
    device: bool = False


NDIM = schema.defaults("datasets", "*")["ndim"]
BLOCK = arg("--block", type=int, required=True)
GT = arg("--gt", required=True, help="ground-truth labels (OME-Zarr from `tilesam import-labels`)")
TILES = (schema.Tiling,)
MODEL_JOB = (schema.Tiling, schema.EmbedParams)

# fmt: off
COMMANDS: dict[str, Command] = {
    "init": Command(cmd_init, "write a commented config for your images (ndim, channels, model, tiles from the files)",
                    (arg("images", nargs="+", help="glob of the images, quoted: 'data/raw/*.tif'"),
                     arg("--labels", nargs="+", help="glob of their ground truth (same file names), quoted"),
                     arg("--modality", default="other", choices=schema.enum("datasets", "*", "modality"),
                         help="picks the recommended model (`tilesam models recommend`)"),
                     arg("--model", help="a model instead of the recommended one (lite_medsam: offline)"),
                     arg("--ndim", type=int, choices=(2, 3), help="2D images or volumes, where the files cannot tell"),
                     arg("--name", help="the dataset's name (default: its folder's)"),
                     arg("--out", default="config/config.yaml"),
                     arg("--force", action="store_true", help="replace an existing --out"))),
    "synthetic": Command(cmd_synthetic, "write one synthetic demo image and its labels",
                         (arg("name"), arg("image"), arg("labels"))),
    "import-image": Command(cmd_import_image, "any input -> OME-Zarr chunked to the tile grid",
                            (arg("src"), arg("dst"), arg("--ndim", type=int, choices=schema.enum("datasets", "*", "ndim"), default=NDIM), arg("--key"),
                             CONFIG), TILES),
    "import-labels": Command(cmd_import_labels, "ground-truth labels -> OME-Zarr, checked against the image",
                             (arg("src"), arg("dst"), arg("--image", required=True), arg("--key"))),
    "embed": Command(cmd_embed, "embed the tiles of one block",
                     (IMAGE, MODEL, BLOCK, OUT, CONFIG,
                      arg("--mem-mb", type=float, help="the job's memory request: batch_size auto stays within it")),
                     MODEL_JOB, True),
    "segment": Command(cmd_segment, "automatic segmentation of one block from its embeddings",
                       (IMAGE, MODEL, BLOCK, arg("--embeddings", required=True),
                        arg("--method", default="amg", choices=schema.SEGMENTERS),
                        arg("--search", "--amg-search", dest="search",
                            help="CSV of `tilesam amg-search` (amg) or `tilesam ais-search` (ais): its best setting "
                                 "replaces the config's"),
                        OUT, CONFIG), (*MODEL_JOB, schema.AmgParams, schema.AisParams), True),
    "prompt-eval": Command(cmd_prompt_eval, "prompted (interactive) evaluation from stored embeddings",
                           (IMAGE, MODEL, GT, arg("--mode", required=True, choices=schema.PROMPT_MODES),
                            arg("--embeddings", nargs="+", required=True, help="the image's embedding stores, in order"),
                            arg("--seed", type=int, default=0), META, OUT, CONFIG),
                           (*MODEL_JOB, schema.PromptParams), True),
    "amg-search": Command(cmd_amg_search, "grid search of AMG thresholds on validation images",
                          (MODEL, arg("--images", required=True,
                                      help='JSON list of {"image", "gt", "embeddings": [block stores]}'),
                           arg("--out", required=True, help="CSV: mSA per setting, best first"), CONFIG),
                          (*MODEL_JOB, schema.SearchGrid, schema.StitchParams), True),  # AMG's from --config
    "classical-foreground": Command(cmd_classical_foreground, "the classical baseline's Otsu threshold of a whole image",
                                    (IMAGE, OUT, CONFIG), (schema.ClassicalParams,)),
    "classical-segment": Command(cmd_classical_segment, "the classical baseline on one block of tiles",
                                 (IMAGE, BLOCK, arg("--threshold", required=True,
                                                    help="JSON of `tilesam classical-foreground`"),
                                  arg("--search", help="CSV of `tilesam classical-search`: its best sigma and h win"),
                                  OUT, CONFIG), (*TILES, schema.ClassicalParams)),
    "classical-search": Command(cmd_classical_search, "grid search of the classical baseline's sigma and h",
                                (arg("--images", required=True, help='JSON list of {"image", "gt"}'),
                                 arg("--out", required=True, help="CSV: mSA per setting, best first"), CONFIG),
                                (*TILES, schema.ClassicalParams, schema.ClassicalGrid, schema.StitchParams)),
    "ais-search": Command(cmd_ais_search, "grid search of the AIS post-processing on validation images",
                          (MODEL, arg("--images", required=True,
                                      help='JSON list of {"image", "gt", "embeddings": [block stores]}'),
                           arg("--out", required=True, help="CSV: mSA per setting, best first"), CONFIG),
                          (*MODEL_JOB, schema.AisSearchGrid, schema.StitchParams), True),  # AIS's from --config
    "stitch": Command(cmd_stitch, "join per-tile labels into one label image",
                      (IMAGE, arg("--blocks", nargs="+", required=True), OUT, CONFIG), (*TILES, schema.StitchParams)),
    "evaluate": Command(cmd_evaluate, "scores of a label image against ground truth",
                        (arg("--pred", required=True), GT, META, OUT,
                         arg("--blocks", nargs="*", help="the image's segmentation block stores (cost columns)"))),
    "benchmark": Command(cmd_benchmark, "tables and figures from per-image evaluations",
                         (arg("evaluations", nargs="+"), arg("--out-dir", required=True),
                          arg("--compare", help='JSON list of {"vanilla": model, "finetuned": model} pairs'),
                          arg("--in-domain", default="[]",
                              help="JSON list of [dataset, model] pairs where the model was trained on the dataset"))),
    "figure": Command(cmd_figure, "qualitative panel: image, ground truth, results on one crop",
                      (IMAGE, arg("--gt"), arg("--results", nargs="+", required=True),
                       arg("--names", nargs="+", required=True), arg("--title", default=""),
                       arg("--in-domain", nargs="*", default=[], help="names of results of models trained on this data"),
                       OUT)),
    "export": Command(cmd_export, "a stitched label image (OME-Zarr) -> TIFF, and its instance table as CSV",
                      (arg("labels", help="labels.ome.zarr from the stitch job"), arg("out", help="TIFF to write"),
                       arg("--table", help="CSV of the instances (id, area, bounding box, centroid)"))),
    "finetune": Command(cmd_finetune, "finetune a model on images with instance labels (resumable)", (
        arg("--model", required=True, help="base model: registry name, name@version or checkpoint path"),
        arg("--images", nargs="+", required=True, help="training images: globs or files (2D gray or RGB, or TIFF volumes with 3D labels: by section)"),
        arg("--labels", nargs="+", required=True, help="instance labels, paired with images by file name"),
        arg("--val-images", nargs="+", help="validation images (default: --val-fraction of the training ones)"),
        arg("--val-labels", nargs="+"),
        arg("--val-fraction", type=float, help="without --val-images: validate on the last F by name"),
        arg("--out", required=True, help="checkpoint to write (a plain SAM state dict); the card goes beside it"),
        arg("--name", help="model name (default <base>-ft-<dataset>)"),
        arg("--dataset", help="dataset name in the default model name (default: the images' folder)"),
        arg("--embedding-cache", help="folder keeping image embeddings between runs (frozen encoder)"),
        arg("--restart", action="store_true", help="ignore the state of an interrupted run"),
        arg("--no-progress", action="store_true", help="no progress bar"),
        TRUST_PICKLE, CONFIG), (schema.FinetuneConfig,), True),
}
# fmt: on


def _models_parser(sub) -> None:
    from tilesam import models

    p = sub.add_parser("models", help="list, fetch or recommend models (`list` shows which have an AIS decoder)")
    p.set_defaults(func=cmd_models)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="a table of all known models")
    q = actions.add_parser("fetch", help="download (checksum-verified, with its decoder file) into the cache")
    q.add_argument(
        "names", nargs="+", help="registry names, name@version, checkpoint paths, or checkpoint+decoder paths"
    )
    q.add_argument(*OFFLINE.flags, **OFFLINE.options)
    q.add_argument("--record", help="write a JSON record of the fetched model here (used by the workflow)")
    q.add_argument(
        "--sha256", metavar="[ALG:]HASH", help="checksum where the registry knows none (e.g. md5:<hex> from zenodo)"
    )
    q.add_argument(*TRUST_PICKLE.flags, **TRUST_PICKLE.options)
    q = actions.add_parser("record", help="the workflow's record of a finetuned model, from its card")
    q.add_argument("--card", required=True, help="model card JSON written by `tilesam finetune`")
    q.add_argument(*OUT.flags, **OUT.options)
    q = actions.add_parser("recommend", help="the model to use for a modality (micro-sam's rule of thumb)")
    q.add_argument("--modality", required=True, choices=models.RECOMMEND_MODALITIES)


def _datasets_parser(sub) -> None:
    from tilesam.data import public_datasets

    p = sub.add_parser("datasets", help="list or fetch public benchmark datasets")
    p.set_defaults(func=cmd_datasets)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="name, modality, ndim, url and sha256 of every file")
    q = actions.add_parser("fetch", help="download (checksum-verified) and convert to <root>/<name>/{images,labels}")
    q.add_argument("name")
    q.add_argument("--root", default=public_datasets.ROOT)
    q.add_argument(
        "--sha256",
        action="append",
        metavar="[FILE=]HASH",
        help="checksum where none is published (repeat as FILE=HASH for each file)",
    )
    q.add_argument(*OFFLINE.flags, **OFFLINE.options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tilesam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _models_parser(sub)
    _datasets_parser(sub)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.set_defaults(func=command.func)
        for a in command.args:
            p.add_argument(*a.flags, **a.options)
        if command.device:
            _device_args(p)
        for cls in command.settings:
            _add_settings(p, cls)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as err:
        if args.verbose:
            raise
        print(f"tilesam {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
