"""How a job function's signature becomes a command line and a rule's shell command.

Each workflow job is one function of `tilesam.jobs`; its parameters say where their values come
from in a rule (`Annotated[str, In()]`: the rule's input of the same name). From that one
signature `tilesam.cli` builds the subcommand and its flags, and `shell(job)` the command a rule
runs, so a new job or setting is one function (and one row of `jobs.JOBS`), never three lists.

Parameters whose type is a settings data class of `tilesam.config` take the rule's `--config`
(config sections as JSON) and a flag per field; `device` adds `--device` and `--threads`.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Role:
    """Where a rule takes a parameter's value from: `source` is a rule attribute (input, output,
    wildcards, params, resources; `cli`: the command line only), `field` its name there (None: the
    parameter's name, "": the whole attribute, e.g. `{output}`)."""

    source: str
    field: str | None = None
    help: str = ""
    choices: tuple | None = None


def In(field: str | None = None, help: str = "") -> Role:  # noqa: N802 (reads as a type in a signature)
    return Role("input", field, help)


def Out(field: str | None = "", help: str = "") -> Role:  # noqa: N802
    return Role("output", field, help)


def Wildcard(field: str | None = None, help: str = "", choices: tuple | None = None) -> Role:  # noqa: N802
    return Role("wildcards", field, help, choices)


def Param(field: str | None = None, help: str = "", choices: tuple | None = None) -> Role:  # noqa: N802
    return Role("params", field, help, choices)


def Resource(help: str = "") -> Role:  # noqa: N802
    return Role("resources", None, help)


def Cli(help: str = "", choices: tuple | None = None) -> Role:  # noqa: N802
    return Role("cli", None, help, choices)


class Json:
    """A parameter given as JSON on the command line (lists of records, metadata)."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of a job, as the command line and the rule see it."""

    name: str
    kind: type  # str, int, float, bool, list, Json, or a settings class
    role: Role | None  # None for settings classes and `device`
    positional: bool
    required: bool
    default: Any
    many: bool = False  # a list of values

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_settings(self) -> bool:
        return hasattr(self.kind, "__schema_path__")


def parameters(job: Callable) -> list[Parameter]:
    """The parameters of a job function, from its signature and annotations."""
    hints = typing.get_type_hints(job, include_extras=True)
    out = []
    for p in inspect.signature(job).parameters.values():
        hint, role = hints[p.name], None
        if typing.get_origin(hint) is typing.Annotated:
            hint, role = typing.get_args(hint)[0], typing.get_args(hint)[1]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            hint = args[0]  # X | None: X, optional
            args = list(typing.get_args(hint))
        many = typing.get_origin(hint) is list
        kind = args[0] if many else hint
        out.append(
            Parameter(
                name=p.name,
                kind=kind,
                role=role,
                positional=p.kind is inspect.Parameter.POSITIONAL_ONLY,
                required=p.default is inspect.Parameter.empty,
                default=None if p.default is inspect.Parameter.empty else p.default,
                many=many,
            )
        )
    return out


def shell(name: str, job: Callable) -> str:
    """The shell command of the rule that runs `job` as `tilesam <name>` (its log is stderr)."""
    words = ["tilesam", name]
    config = False
    for p in parameters(job):
        if p.is_settings:
            config = True
            continue
        if p.name == "device":
            words += ["--device {params.device:q}", "--threads {threads}"]
            continue
        if p.role is None or p.role.source == "cli":
            continue
        field = p.name if p.role.field is None else p.role.field
        ref = p.role.source + (f".{field}" if field else "")
        value = f"{{{ref}}}" if p.kind is bool else f"{{{ref}:q}}"  # a bool: the rule gives the flag or ""
        words.append(value if p.positional or p.kind is bool else f"{p.flag} {value}")
    if config:
        words.append("--config {params.config:q}")
    return " ".join(words) + " 2> {log:q}"


# the parameters most jobs share, one name and one help each
Image = Annotated[str, In(help="imported image (OME-Zarr from `tilesam import-image`)")]
Model = Annotated[str, In(help="model record (JSON from `tilesam models fetch --record`)")]
Spec = Annotated[str, Param(help="the model as the config names it (resolved; a finetuned model: its checkpoint)")]
Trust = Annotated[bool, Param(help="config trust_pickle: your own checkpoint may be fully unpickled (runs its code)")]
Gt = Annotated[str, In(help="ground-truth labels (OME-Zarr from `tilesam import-labels`)")]
Block = Annotated[int, Wildcard()]
Output = Annotated[str, Out()]
Meta = Annotated[Json, Param(help="JSON fields to carry into the result (dataset, model, ...)")]
Device = str
