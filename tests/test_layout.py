"""The package's shape: small modules, no import cycle, one home for output paths, a code map that names
everything. These are the rules of docs/development.md, checked so they hold as features land."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import tilesam

PACKAGE = Path(tilesam.__file__).resolve().parent
REPO = PACKAGE.parents[1]
RULES = sorted((REPO / "workflow/rules").glob("*.smk"))
#: a module may grow to this many lines (the aim is about 400)
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _top_level_imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports when it is imported (not inside functions, not for type checkers)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - sub.level + 1], base]).strip(".")
                found |= {base} | {f"{base}.{a.name}" for a in sub.names}
    return {m for m in found if m in known and m != name}


def test_no_module_is_long():
    long = {name: n for name, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split what holds two ideas): {long}"


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _top_level_imports(name, path, set(modules)) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_cycle_check_sees_a_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from pkg import b\n")
    b.write_text("import pkg.a\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.c\n")
    known = {"pkg.a", "pkg.b", "pkg.c"}
    assert _top_level_imports("pkg.a", a, known) == {"pkg.b"}
    assert _top_level_imports("pkg.b", b, known) == {"pkg.a"}


def test_the_code_map_names_every_module_and_rule_file():
    text = (REPO / "docs/development.md").read_text()
    missing = [r.name for r in RULES if r.name not in text]
    for name, path in _modules().items():
        if path.name == "__init__.py" or name == "tilesam.__main__":
            continue
        short = path.stem
        if f"`{short}`" not in text and f"{short}.py" not in text and f"`{short}," not in text:
            missing.append(str(path.relative_to(PACKAGE)))
    assert not missing, f"docs/development.md's code map does not name: {missing}"


def test_rules_spell_no_output_path():
    """Outputs live in `tilesam.paths` (the plan formats them, the rules name them `paths.X`); logs and
    benchmark files, which only Snakemake writes and reads, stay in the rules."""
    spelled = []
    for rule in RULES:
        for literal in re.findall(r"\"([^\"\n]*)\"", rule.read_text()):
            if re.match(r"(results|resources)/", literal):
                spelled.append(f"{rule.name}: {literal}")
    assert not spelled, f"output paths spelled in rules instead of tilesam.paths: {spelled}"
