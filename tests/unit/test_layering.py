"""The package's import layering: no library module imports a recipe, and `polm/` has no import cycle.

Imports are read with `ast` from every module of polm/, at module level and inside functions alike (a
lazy import is still a dependency); imports under `if TYPE_CHECKING:` are type hints and do not count.
`from polm.x import y` is an edge to the module `polm.x.y` when that file exists, else to `polm.x`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import polm

ROOT = Path(polm.__file__).resolve().parent
# Command-level orchestrators: they run recipes, and nothing in the library imports them.
ENTRY_POINTS = {"polm.cli", "polm.demo", "polm.vlm_demo", "polm.pipeline"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def _type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The polm modules `name` imports (resolved, relative imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "polm")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] == "polm":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
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
            strongconnect(v)
    return found


def test_the_graph_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "polm"
    (pkg / "a").mkdir(parents=True)
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "b.py").write_text("def f():\n    from polm.a import c\n")
    (pkg / "a" / "c.py").write_text("from . import b\nfrom typing import TYPE_CHECKING\n"
                                    "if TYPE_CHECKING:\n    from polm.a import d\n")
    (pkg / "a" / "d.py").write_text("")
    modules = {"polm.a": pkg / "a" / "__init__.py", "polm.a.b": pkg / "a" / "b.py",
               "polm.a.c": pkg / "a" / "c.py", "polm.a.d": pkg / "a" / "d.py"}
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    finally:
        ROOT = saved
    assert graph["polm.a.b"] == {"polm.a.c"}          # a lazy import inside a function counts
    assert graph["polm.a.c"] == {"polm.a.b"}          # a relative import resolves; TYPE_CHECKING does not count
    assert cycles(graph) == [["polm.a.b", "polm.a.c"]]


def test_no_library_module_imports_a_recipe():
    offenders = {name: sorted(m for m in deps if m.startswith("polm.recipes"))
                 for name, deps in import_graph().items()
                 if not name.startswith("polm.recipes") and name not in ENTRY_POINTS}
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"library modules importing recipes (move the shared piece down): {offenders}"


def test_no_recipe_imports_another_recipe():
    graph = import_graph()
    offenders = {name: sorted(m for m in deps if m.startswith("polm.recipes."))
                 for name, deps in graph.items() if name.startswith("polm.recipes.")}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_polm_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles inside polm/: " + "; ".join(" <-> ".join(c) for c in found)
