"""The import graph of engine/ and components/ has no cycle, lazy (function-level) imports included: read from the
source with ast, so a cycle fails here even where Python would import it without complaint."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "components")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of `modules` that the file at `path` (module `name`) imports anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from . import figures` names a module
    return {m for m in found if m in modules and m != name}


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = [f for pkg in PACKAGES for f in sorted((root / pkg).rglob("*.py"))]
    names = {f: module_name(f, root) for f in files}
    return {name: imported_modules(f, name, set(names.values())) for f, name in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_lazy_import_cycle(tmp_path):
    (tmp_path / "engine").mkdir()
    (tmp_path / "components").mkdir()
    (tmp_path / "engine" / "a.py").write_text("from .b import x\n")
    (tmp_path / "engine" / "b.py").write_text("def f():\n    from engine import a\n")
    (tmp_path / "components" / "c.py").write_text("from engine.a import y\nfrom . import d\n")
    (tmp_path / "components" / "d.py").write_text("import os\n")
    graph = import_graph(tmp_path)
    assert graph["components.c"] == {"engine.a", "components.d"}
    assert cycles(graph) == [["engine.a", "engine.b"]]


def test_engine_and_components_import_without_cycles():
    assert cycles(import_graph()) == []
