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
            if node.level:  # `from . import x` names modules too; `from ..x` is the package above's x
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
                found.update(f"{base}.{alias.name}" for alias in node.names if not node.module)
            found.add(base)
    return found


def module_name(path: Path) -> str:
    """gpt2_engine/remote/run.py -> gpt2_engine.remote.run; a package's __init__.py is the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def engine_files() -> list[Path]:
    """The engine's modules, its subpackages' included (not the top __init__, which gathers the public names)."""
    return [p for p in sorted(ENGINE.rglob("*.py")) if p != ENGINE / "__init__.py" and "shipped" not in p.parts]


def engine_graph() -> dict[str, set[str]]:
    modules = {module_name(p) for p in engine_files()}
    graph = {}
    for path in engine_files():
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in imported_modules(path, package) if m in modules and m != name}
    return graph


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
    for path in ENGINE.rglob("*.py"):
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


def test_every_subpackage_says_what_it_is_in_a_line() -> None:
    for package in [p.parent for p in ENGINE.rglob("__init__.py") if p.parent != ENGINE]:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and doc.strip(), f"{package.name}/__init__.py has no docstring"
