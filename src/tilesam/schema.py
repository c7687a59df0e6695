"""The config schema (`workflow/schemas/config.schema.yaml`): read it, check a config or a section
against it (filling in its defaults), and build a stage's settings class from a section.

Snakemake validates nothing here: the plan checks the config as written (`complete`) and every job
builds its settings through `build`, so the schema is the one check of every key's type and range.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import fields
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

SCHEMA = Path(__file__).with_name("config.schema.yaml")  # the workflow's schema (a link to it in a checkout)
T = TypeVar("T")


@cache
def schema() -> dict[str, Any]:
    """The workflow's config schema."""
    return yaml.safe_load(SCHEMA.read_text())


def section(*path: str) -> dict[str, Any]:
    """The schema of one config section; `*` steps into a mapping's values (e.g. a dataset entry)."""
    node = schema()
    for key in path:
        node = node["additionalProperties"] if key == "*" else node["properties"][key]
    return node


def defaults(*path: str) -> dict[str, Any]:
    """The defaults of a section's keys (keys without a default are left out)."""
    return {k: v["default"] for k, v in section(*path)["properties"].items() if "default" in v}


def enum(*path: str) -> tuple:
    """The allowed values of a key (for arrays: of its items; for a key of several forms: of its first's),
    e.g. the prompt modes."""
    node = section(*path)
    node = _resolve(node.get("oneOf", [node])[0])
    node = node.get("items", node)
    return tuple(_resolve(node)["enum"])


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow a local `$ref` (`#/$defs/...`)."""
    while "$ref" in node:
        node = schema()["$defs"][node["$ref"].rsplit("/", 1)[1]]
    return node


def from_schema(*path: str, workflow_keys: tuple[str, ...] = ()):
    """Class decorator (under `@dataclass`): each annotated field's default is its schema key's.

    `workflow_keys` are keys of the section that the workflow's plan reads, not the stage
    (e.g. which dataset the AMG search runs on). Any other mismatch is an error at import.
    """

    def apply(cls: type[T]) -> type[T]:
        props = section(*path)["properties"]
        names = list(cls.__annotations__)
        keys = set(props) - set(workflow_keys)
        if set(names) != keys:
            raise TypeError(
                f"{cls.__name__} and the schema section {'.'.join(path)} differ: fields without a key "
                f"{sorted(set(names) - keys)}, keys without a field {sorted(keys - set(names))}"
            )
        for name in names:
            if "default" in props[name]:
                default = props[name]["default"]
                setattr(cls, name, tuple(default) if isinstance(default, list) else default)
        cls.__schema_path__ = path
        return cls

    return apply


def _coerce(value: Any, prop: dict[str, Any]) -> Any:
    kinds = prop.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if value is None or isinstance(value, bool):
        return value
    if "integer" in kinds and isinstance(value, float) and value.is_integer():
        return int(value)
    if "number" in kinds and "integer" not in kinds and isinstance(value, int):
        return float(value)
    if "array" in kinds and isinstance(value, list):
        return tuple(_coerce(v, prop.get("items", {})) for v in value)
    return value


def _validator(node: dict[str, Any], fill: bool):
    """A JSON-schema validator of `node` (a section of the schema) that fills in defaults if asked."""
    from jsonschema import Draft202012Validator, validators

    def set_defaults(validator, properties, instance, node):
        if fill and isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from Draft202012Validator.VALIDATORS["properties"](validator, properties, instance, node)

    cls = validators.extend(Draft202012Validator, {"properties": set_defaults}) if fill else Draft202012Validator
    return cls({**node, "$defs": schema().get("$defs", {})})


def _check(node: dict[str, Any], values: Any, where: str, fill: bool = False) -> None:
    """Raise one clear ValueError for the first way `values` breaks the schema `node`."""
    error = next(iter(sorted(_validator(node, fill).iter_errors(values), key=lambda e: list(e.path))), None)
    if error is not None:
        key = ".".join([where, *map(str, error.absolute_path)]).strip(".")
        why = "; ".join(dict.fromkeys(e.message for e in error.context))  # a key of several forms: each one's
        raise ValueError(f"config error in {key or 'the config'}: {error.message}" + (f" ({why})" if why else ""))


class _UniqueKeys(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ValueError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def check_file(path: str | Path) -> None:
    """A config file is plain YAML (no tags, no YTE template) and gives every key once (a second
    `datasets: a:` would silently replace the first). Read with the safe loader: a tag never constructs
    anything here."""
    try:
        data = yaml.load(Path(path).read_text(), Loader=_UniqueKeys)  # noqa: S506 (a safe loader)
    except yaml.constructor.ConstructorError as err:
        if err.problem_mark is None or not (err.problem or "").startswith("could not determine a constructor"):
            raise ValueError(f"config error in {path}: {err}") from err
        tag = err.problem.rpartition("tag ")[2].strip("'").replace("tag:yaml.org,2002:", "!!")
        raise ValueError(
            f"config error in {path}, line {err.problem_mark.line + 1}: the YAML tag {tag} is not allowed "
            "(a config is plain YAML: python/ tags make Python objects or run code when read); remove it"
        ) from None
    except (ValueError, yaml.YAMLError) as err:
        raise ValueError(f"config error in {path}: {err}") from err
    if isinstance(data, dict) and "__use_yte__" in data:
        raise ValueError(
            f"config error in {path}: __use_yte__ makes it a YTE template, whose `?` expressions Snakemake runs "
            "as Python code when it reads the file; a config is plain YAML: remove __use_yte__ and write the values"
        )


def complete(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config as written, checked against the schema and with its defaults filled in."""
    filled = copy.deepcopy(config)
    _check(schema(), filled, "", fill=True)
    return filled


def build(cls: type[T], values: dict[str, Any] | None = None) -> T:
    """The data class from a config section (or part of one), checked by the schema; the section's
    workflow keys are skipped. The schema is the one check of every setting's range and type."""
    node = section(*cls.__schema_path__)
    props = node["properties"]
    names = {f.name for f in fields(cls)}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in (values or {}).items()}
    if unknown := set(values) - set(props):
        raise ValueError(f"unknown {'.'.join(cls.__schema_path__)} settings: {sorted(unknown)}")
    _check({**node, "required": []}, values, ".".join(cls.__schema_path__))
    return cls(**{k: _coerce(v, props[k]) for k, v in values.items() if k in names})


def best_row(params: T, table: str | Path, keys: tuple[str, ...]) -> T:
    """`params` with the first (best) row of a search table's `keys`, checked like any setting."""
    import pandas as pd

    found = pd.read_csv(table)
    if missing := [k for k in keys if k not in found]:
        raise ValueError(f"{table}: not a search table of {', '.join(keys)} (no column {', '.join(missing)})")
    best = {k: found[k].iloc[0].item() for k in keys}
    return build(type(params), {**{f.name: getattr(params, f.name) for f in fields(params)}, **best})


def replace(params: T, **changes: Any) -> T:
    """`dataclasses.replace` (re-exported so callers need one import)."""
    return dataclasses.replace(params, **changes)
