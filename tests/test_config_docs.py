"""docs/configuration.md is the schema's reference: complete, and current (else this test names the command)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from tilesam import config, config_docs

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def _rows(text: str) -> dict[str, list[str]]:
    """key path -> its table cells (type, default, description)."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"^\| `([^`]+)` \| (.*) \|$", line)
        if m:
            rows[m[1]] = m[2].split(" | ")
    return rows


def _schema_paths(node: dict, prefix: str = "") -> list[str]:
    """Every key path of the schema, walked independently of config_docs."""
    out = []
    children = dict(node.get("properties", {}))
    if isinstance(node.get("additionalProperties"), dict):
        children["<name>"] = node["additionalProperties"]
    for name, child in children.items():
        path = f"{prefix}.{name}" if prefix else name
        out += [path, *_schema_paths(child, path)]
    return out


def test_committed_reference_is_current():
    assert DOC.read_text() == config_docs.render(), (
        f"{DOC} is stale: the config schema changed. Regenerate it with `{config_docs.COMMAND}` and commit it."
    )


def test_every_key_has_a_row_with_its_default():
    rows = _rows(config_docs.render())
    paths = _schema_paths(config.schema())
    assert len(paths) > 100
    assert sorted(rows) == sorted(paths)
    sections = [("segmentation",), ("segmentation", "amg"), ("segmentation", "ais"), ("embeddings",), ("stitch",)]
    sections += [("finetune",), ("evaluation",), ("baseline",), ("datasets", "*")]
    for section in sections:
        for key, default in config.defaults(*section).items():
            path = ".".join(s.replace("*", "<name>") for s in (*section, key))
            assert yaml.safe_load(rows[path][1].strip("`")) == default, path
    assert rows["datasets"][1] == "required" and rows["models"][1] == "required"


def test_types_and_descriptions_come_from_the_schema():
    rows = _rows(config_docs.render())
    assert rows["segmentation.tiles_per_block"][0] == "integer >= 1 or auto"
    assert rows["segmentation.tile_shape"][0] == "list of (integer >= 16) (2)"
    assert rows["device"][0] == "one of: auto, cpu, cuda"
    assert rows["finetune.decoder_crop"][0] == "integer or null or string matching `^auto$` >= 1"
    assert rows["evaluation.prompts"][0] == "list of (one of: point, box, iterative_point, iterative_box)"  # via $ref
    assert "tiles per embed/segment job" in rows["segmentation.tiles_per_block"][2]
    # `<name>` in a description is escaped outside code spans, so Markdown shows it
    assert "resources/datasets/&lt;name>/" in rows["datasets.<name>.source"][2]


def test_a_schema_change_changes_the_reference():
    schema = copy.deepcopy(config.schema())
    schema["properties"]["stitch"]["properties"]["new_key"] = {"type": "boolean", "default": True, "description": "x"}
    text = config_docs.render(schema)
    assert text != config_docs.render()
    assert _rows(text)["stitch.new_key"] == ["boolean", "`true`", "x"]
