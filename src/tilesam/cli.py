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
    if "oneOf" in prop:  # e.g. an integer or "auto": the schema checks the value
        return {"type": lambda s: int(s) if s.strip().lstrip("-").isdigit() else s}
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
    if param.default not in (None, False, (), ""):
        options["help"] += f" (default {param.default})"
    if role and role.choices:
        options["choices"] = role.choices
    if param.kind is bool:
        options["action"] = "store_true"
    else:
        options["type"] = json.loads if param.kind is Json else (param.kind if param.kind in (int, float) else str)
        if param.many:
            given = param.required or (not param.positional and role.source == "cli")
            options["nargs"] = "+" if given else "*"
            if not param.positional:  # a repeated flag adds to the list
                options.update(action="extend", default=None)
        elif not param.required and (param.positional or role.source != "cli"):
            options["nargs"] = "?"  # a rule's empty optional input leaves the flag alone: None
    if param.positional:
        p.add_argument(param.name, **options)
        return
    if not param.required and param.kind is not bool and not param.many:
        options["default"] = param.default
    p.add_argument(param.flag, required=param.required, dest=param.name, **options)


def _run_job(job, args: argparse.Namespace) -> None:
    values = {}
    for param in parameters(job):
        if param.is_settings:
            values[param.name] = _settings(args, param)
        else:
            value = getattr(args, param.name)
            empty = value is None or (value == "" and not param.many)  # a rule's empty optional input: ""
            values[param.name] = param.default if empty and not param.required else value
    positional = [values.pop(p.name) for p in parameters(job) if p.positional]
    job(*positional, **values)


def _job_parser(sub, name: str, job) -> None:
    doc = (job.__doc__ or "").strip().splitlines()[0]
    p = sub.add_parser(name, help=doc, description=doc)
    p.set_defaults(func=lambda args: _run_job(job, args))
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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` (a command's name) just that subcommand, which is all a job parses."""
    from tilesam.jobs import JOBS

    parser = argparse.ArgumentParser(prog="tilesam", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    if only in JOBS:  # a job: the user's commands (and the registry they import) are not needed
        commands = JOBS
    else:
        from tilesam.commands import COMMANDS

        commands = {**COMMANDS, **JOBS}
    for name, job in commands.items() if only not in commands else [(only, commands[only])]:
        _job_parser(sub, name, job)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status. Without ``argv`` (``tilesam``, ``python -m tilesam.cli``: the
    process's entry) the process ends here, without interpreter teardown (see `_exit`)."""
    if argv is None:
        _exit(_status(sys.argv[1:]))
    args = build_parser(next((a for a in argv if not a.startswith("-")), None)).parse_args(argv)
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
