"""`tilesam <command>`: the one command line the workflow's rules call, and a person may too.

The job subcommands are built from the signatures of `tilesam.jobs` (`tilesam.relay`): a file or
value parameter is a flag (or a positional argument), and every field of a stage's settings class
is a flag typed and documented by the config schema (`--tile-shape 512 512`), which wins over the
`--config` JSON of config sections that the rules pass. `models` and `datasets` are the user's
commands to list and fetch. Errors are one clear line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from typing import Any, NoReturn

from tilesam import config as schema
from tilesam.relay import Json, Parameter, parameters

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
        return {"nargs": "+", **_flag_type(prop.get("items", {}))}
    if kinds == ["boolean"]:
        return {"type": lambda s: {"true": True, "false": False}[s.lower()], "metavar": "true|false"}
    if len(kinds) > 1:  # e.g. integer or "auto": the schema checks the value
        return {"type": lambda s: int(s) if s.strip().lstrip("-").isdigit() else s}
    return {"type": _TYPES[kinds[0]]}


def _add_settings(p: argparse.ArgumentParser, param: Parameter, shared: set[str]) -> None:
    """A flag per field of a settings class, typed and documented by its schema key; a field name that
    two classes of the job share is prefixed by its section (`--ais-min-size`)."""
    cls = param.kind
    props = schema.section(*cls.__schema_path__)["properties"]
    group = p.add_argument_group(f"{'.'.join(cls.__schema_path__)} settings (default: the config schema's)")
    for f in fields(cls):
        prop = props[f.name]
        name = f"{cls.__schema_path__[-1]}_{f.name}" if f.name in shared else f.name
        group.add_argument(
            f"--{name.replace('_', '-')}",
            dest=f"{param.name}:{f.name}",
            default=argparse.SUPPRESS,
            help=(prop.get("description", "").strip() + f" (default {prop.get('default')})").replace("%", "%%"),
            **{"metavar": f.name.upper(), **_flag_type(prop)},
        )


def _settings(args: argparse.Namespace, param: Parameter) -> Any:
    """A settings class from the `--config` JSON's section, overridden by its flags; checked by the schema."""
    values = json.loads(getattr(args, "config", None) or "{}")
    for key in param.kind.__schema_path__:
        values = values.get(key, {})
    values = {**values}
    for dest, value in vars(args).items():
        owner, _, name = dest.partition(":")
        if owner == param.name:
            values[name] = value
    return schema.build(param.kind, values)


def _add_parameter(p: argparse.ArgumentParser, param: Parameter) -> None:
    role = param.role
    options: dict[str, Any] = {"help": role.help if role else ""}
    if role and role.choices:
        options["choices"] = role.choices
    if param.kind is bool:
        options["action"] = "store_true"
    else:
        options["type"] = json.loads if param.kind is Json else (param.kind if param.kind in (int, float) else str)
        if param.many:
            options["nargs"] = "+" if param.required else "*"
        elif not param.required and not param.positional:
            options["nargs"] = "?"  # a rule's empty optional input leaves the flag alone: None
    if param.positional:
        p.add_argument(param.name, **options)
        return
    if not param.required and param.kind is not bool:
        options["default"] = param.default
    p.add_argument(param.flag, required=param.required, dest=param.name, **options)


def _run_job(name: str, args: argparse.Namespace) -> None:
    from tilesam.jobs import JOBS

    values = {}
    for param in parameters(JOBS[name]):
        if param.is_settings:
            values[param.name] = _settings(args, param)
        else:
            value = getattr(args, param.name)
            values[param.name] = None if value == "" and not param.required else value
    positional = [values.pop(p.name) for p in parameters(JOBS[name]) if p.positional]
    JOBS[name](*positional, **values)


def _job_parser(sub, name: str, job) -> None:
    doc = (job.__doc__ or "").strip().splitlines()[0]
    p = sub.add_parser(name, help=doc, description=doc)
    p.set_defaults(func=lambda args: _run_job(name, args))
    params = parameters(job)
    settings = [q for q in params if q.is_settings]
    names = [f.name for q in settings for f in fields(q.kind)]
    shared = {n for n in names if names.count(n) > 1}
    for param in params:
        if param.name == "device":
            p.add_argument("--device", default=schema.defaults()["device"], choices=schema.enum("device"))
            p.add_argument("--threads", type=int, help="torch CPU threads (the job's threads)")
        elif not param.is_settings:
            _add_parameter(p, param)
    if settings:
        p.add_argument("--config", help="config sections as JSON (what the rules pass); flags below win over it")
    for param in settings:
        _add_settings(p, param, shared)


# --- the user's commands: models and datasets ---------------------------------------------------
def cmd_models(args) -> None:
    from tilesam import models
    from tilesam.runtime import fetch_model, record_finetuned

    if args.action == "list":
        print(models.models_table().to_string(index=False))
    elif args.action == "recommend":
        print(models.recommend(args.modality))
    elif args.action == "fetch":
        if args.record and len(args.names) != 1:
            raise ValueError(f"--record takes one model, got {len(args.names)}: {' '.join(args.names)}")
        for name in args.names:
            trust = args.trust_pickle
            files = fetch_model(name, record=args.record, offline=args.offline, sha256=args.sha256, trust_pickle=trust)
            print(f"{name}: {files.weights}" + (f" (decoder {files.decoder})" if files.decoder else ""))
    elif args.action == "record":
        record_finetuned(args.card, args.out, trust_pickle=args.trust_pickle)


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
    q.add_argument("--offline", action="store_true", help="never touch the network")
    q.add_argument("--record", help="write a JSON record of the fetched model here (used by the workflow)")
    q.add_argument(
        "--sha256", metavar="[ALG:]HASH", help="checksum where the registry knows none (e.g. md5:<hex> from zenodo)"
    )
    q.add_argument(
        "--trust-pickle",
        action="store_true",
        help="your own checkpoint files may be fully unpickled, which runs code from them (config: trust_pickle); "
        "registry files are always checked by their hash instead",
    )
    q = actions.add_parser("record", help="the workflow's record of a finetuned model, from its card")
    q.add_argument("--card", required=True, help="model card JSON written by `tilesam finetune`")
    q.add_argument("--out", required=True)
    q.add_argument("--trust-pickle", action="store_true", help="config trust_pickle (the base was your own file)")
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
    q.add_argument("--offline", action="store_true", help="never touch the network")


def _init_parser(sub) -> None:
    """`tilesam init`: a commented config for the user's images (tilesam.init)."""

    def run(args) -> None:
        from tilesam import init

        done = init.init(
            args.images, args.labels, modality=args.modality, out=args.out, model=args.model, ndim=args.ndim,
            name=args.name, force=args.force,
        )  # fmt: skip
        print(f"wrote {done.config}; check it, then run:\n  {done.command}")

    p = sub.add_parser(
        "init", help="write a commented config for your images (ndim, channels, model, tiles from the files)"
    )
    p.set_defaults(func=run)
    p.add_argument("images", nargs="+", help="glob of the images, quoted: 'data/raw/*.tif'")
    p.add_argument("--labels", nargs="+", help="glob of their ground truth (same file names), quoted")
    p.add_argument("--modality", default="other", choices=schema.enum("datasets", "*", "modality"),
                   help="picks the recommended model (`tilesam models recommend`)")  # fmt: skip
    p.add_argument("--model", help="a model instead of the recommended one (lite_medsam: offline)")
    p.add_argument("--ndim", type=int, choices=(2, 3), help="2D images or volumes, where the files cannot tell")
    p.add_argument("--name", help="the dataset's name (default: its folder's)")
    p.add_argument("--out", default="config/config.yaml")
    p.add_argument("--force", action="store_true", help="replace an existing --out")


def build_parser() -> argparse.ArgumentParser:
    from tilesam.jobs import JOBS

    parser = argparse.ArgumentParser(prog="tilesam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _models_parser(sub)
    _datasets_parser(sub)
    _init_parser(sub)
    for name, job in JOBS.items():
        _job_parser(sub, name, job)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Without ``argv`` (``tilesam``, ``python -m tilesam.cli``: the
    process's entry) the process ends here, without interpreter teardown (see `_exit`)."""
    if argv is None:
        _exit(_status(sys.argv[1:]))
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


def _status(argv: list[str]) -> int:
    """`main`'s status; an uncaught exception prints its traceback and is status 1, as Python's own exit."""
    try:
        return main(argv)
    except SystemExit as stop:  # argparse: --help (0), a usage error (2)
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)
        return 1
    except BaseException as error:
        import traceback

        traceback.print_exc()
        return 130 if isinstance(error, KeyboardInterrupt) else 1


def _exit(status: int) -> NoReturn:
    """End the process now: logs and stdio flushed, no interpreter or library teardown (0.4-1.6 CPU-s a job).

    A job's outputs are complete when it returns (zarr, JSON and CSV writes are synchronous, its
    thread pools joined); its store locks are file locks, which the kernel drops with the process.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said
            pass
    os._exit(status)


if __name__ == "__main__":
    sys.exit(main())
