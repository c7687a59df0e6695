"""docs/configuration.md, rendered from the config schema, so the reference cannot drift from it.

The schema (`workflow/schemas/config.schema.yaml`) is the one source of every key, type, default and
description; this module only lays them out as Markdown tables, one per section.
`tests/test_config_docs.py` fails when the committed file differs from what this renders.

Regenerate: ``python -m tilesam.config_docs docs/configuration.md``
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilesam import config

COMMAND = "python -m tilesam.config_docs docs/configuration.md"


@dataclass(frozen=True)
class Key:
    """One row of the reference: a key's dotted path and what the schema says of it."""

    path: str
    type: str
    default: str
    description: str


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A node with its local `$ref` followed; the referring node's own description wins."""
    if "$ref" not in node:
        return node
    target = defs[node["$ref"].rsplit("/", 1)[1]]
    return {**_resolve(target, defs), **{k: v for k, v in node.items() if k != "$ref"}}


def _value(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


def type_of(node: dict[str, Any], defs: dict[str, Any]) -> str:
    """A short type: `integer >= 1`, `one of: a, b`, `list of number (3)`, `string or integer`."""
    node = _resolve(node, defs)
    if any("required" not in alt for alt in node.get("oneOf", ())):  # a key of several forms
        return " or ".join(type_of(alt, defs) for alt in node["oneOf"])
    if "properties" not in node and isinstance(node.get("additionalProperties"), dict):
        return f"mapping to {type_of(node['additionalProperties'], defs)}"
    if "const" in node:
        return _value(node["const"])
    if "enum" in node:
        return "one of: " + ", ".join(_value(v) for v in node["enum"])
    kinds = node.get("type", "object" if "properties" in node else "any")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    parts = []
    for kind in kinds:
        if kind == "array":
            items = type_of(node.get("items", {}), defs)
            items = f"({items})" if " " in items else items
            n = (node.get("minItems"), node.get("maxItems"))
            size = f" ({n[0]})" if n[0] is not None and n[0] == n[1] else f" (at least {n[0]})" if n[0] else ""
            parts.append(f"list of {items}{size}")
        elif kind == "string" and "pattern" in node:
            parts.append(f"string matching `{node['pattern']}`")
        else:
            parts.append(kind)
    bounds = [
        f"{op} {node[key]}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if key in node
    ]
    return " or ".join(parts) + (" " + ", ".join(bounds) if bounds else "")


def _description(node: dict[str, Any]) -> str:
    return " ".join(str(node.get("description", "")).split())


def keys(node: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> list[Key]:
    """Every key under `node`, depth first in the schema's order; a mapping's entries appear as `<name>`."""
    rows = []
    entries = list(node.get("properties", {}).items())
    if isinstance(node.get("additionalProperties"), dict):
        entries.append(("<name>", node["additionalProperties"]))
    required = set(node.get("required", ()))
    for name, child in entries:
        child = _resolve(child, defs)
        path = f"{prefix}.{name}" if prefix else name
        if "default" in child:
            default = f"`{_value(child['default'])}`"
        else:
            default = "required" if name in required else ""
        one_of = [" or ".join(f"`{k}`" for k in alt["required"]) for alt in child.get("oneOf", ()) if "required" in alt]
        note = f" Needs one of {', '.join(one_of)}." if one_of else ""
        rows.append(Key(path, type_of(child, defs), default, (_description(child) + note).strip()))
        rows.extend(keys(child, defs, path))
    return rows


def _cell(text: str) -> str:
    """Table-safe Markdown: `|` escaped, and `<` before a letter outside code spans (else `<name>` is an HTML tag)."""
    parts = text.replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else re.sub(r"<(?=[A-Za-z/])", "&lt;", p) for i, p in enumerate(parts))


def render(schema: dict[str, Any] | None = None) -> str:
    """docs/configuration.md: an introduction, then one table per top-level section."""
    schema = schema or config.schema()
    defs = schema.get("$defs", {})
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated from workflow/schemas/config.schema.yaml by `{COMMAND}`; do not edit. -->",
        "",
        _description(schema),
        "",
        "A run's config (`config/config.yaml`, or `--configfile`) sets only what differs from these defaults;",
        "`tilesam init` writes one for a folder of images. `<name>` stands for a name you choose (a dataset's).",
        "Required keys: " + ", ".join(f"`{k}`" for k in schema.get("required", ())) + ".",
        "",
    ]
    rows = keys(schema, defs)
    sections: dict[str, list[Key]] = {}
    for row in rows:
        sections.setdefault(row.path.split(".")[0], []).append(row)
    for section, members in sections.items():
        out += [f"## `{section}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{r.path}` | {_cell(r.type)} | {_cell(r.default)} | {_cell(r.description)} |" for r in members]
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Write the reference to the given file (default: stdout)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
