"""The package's shape: no import circle inside gpt2_engine, the engine knows nothing of the page, and the page
uses the engine through its public names only (gpt2_engine/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import gpt2_engine

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "gpt2_engine"


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module a file imports, at the top or inside a function, with relative names made absolute."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` names modules too
                base = f"{package}.{base}" if base else package
                found.update(f"{base}.{alias.name}" for alias in node.names if not node.module)
            found.add(base)
    return found


def engine_graph() -> dict[str, set[str]]:
    modules = {f"gpt2_engine.{p.stem}" for p in ENGINE.glob("*.py") if p.stem != "__init__"}
    return {
        f"gpt2_engine.{p.stem}": imported_modules(p, "gpt2_engine") & modules
        for p in ENGINE.glob("*.py")
        if p.stem != "__init__"
    }


def test_no_import_circle_in_the_engine() -> None:
    graph = engine_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for other in sorted(graph[module]):
            assert state.get(other) != "open", "import circle: " + " -> ".join([*path, module, other])
            if other not in state:
                visit(other, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert graph["gpt2_engine.shapes"] == set()  # as nanoGPT's GPTConfig: plain data, depending on nothing


def test_the_engine_knows_nothing_of_the_page() -> None:
    for path in ENGINE.glob("*.py"):
        assert not {m for m in imported_modules(path, "gpt2_engine") if m.split(".")[0] in ("streamlit", "studio")}


def test_the_page_uses_the_engines_public_names_only() -> None:
    for path in [ROOT / "app.py", *(ROOT / "studio").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gpt2_engine"):
                assert node.module == "gpt2_engine", f"{path.name} imports {node.module}"
                assert {alias.name for alias in node.names} <= set(gpt2_engine.__all__), path.name
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "gpt2_engine":
                assert node.attr in gpt2_engine.__all__, f"{path.name} uses gpt2_engine.{node.attr}"
