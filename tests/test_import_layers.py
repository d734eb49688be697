"""The packages import each other in one direction, and never in a circle.

The layers, lowest first: ``stream.core`` < ``stream.io`` < ``stream.modalities`` <
``stream.fusion`` < ``stream.runtime`` < ``stream.sinks`` < ``stream.offline`` / ``stream.batch`` /
``stream.serve`` < ``stream.cli``.  A module may import its own layer or a lower one; ``engines``
(the model files and inference engines) imports nothing from ``stream``.  The one arrow upwards
is ``stream.serve`` -> ``stream.cli`` (the supervisor runs each analyzer as a ``cer-stream run``
process with the command line's own flags; the README says why).

Imports are read with :mod:`ast`, so the lazy ones inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

LAYERS = {
    "stream.core": 0,
    "stream.io": 1,
    "stream.modalities": 2,
    "stream.fusion": 3,
    "stream.runtime": 4,
    "stream.sinks": 5,
    "stream.offline": 6,
    "stream.batch": 6,
    "stream.serve": 6,
    "stream.cli": 7,
}
#: (importer's package, imported package): the documented exceptions.
ALLOWED_UPWARDS = {("stream.serve", "stream.cli")}


def module_name(path: Path) -> str:
    """``stream/io/capture.py`` -> ``stream.io.capture``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in ("stream", "engines") for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports, anywhere in the file (module level or in functions);
    ``from a import b`` gives both ``a`` and ``a.b`` (``b`` may be a submodule)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name resolves to its longest known module)."""
    modules = project_modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = (resolve(n) for n in imported_names(module, path) if n.split(".")[0] in ("stream", "engines"))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def layer_of(module: str) -> str | None:
    for package in LAYERS:
        if module == package or module.startswith(package + "."):
            return package
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_reader_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "stream" / "fusion"
    pkg.mkdir(parents=True)
    source = pkg / "x.py"
    source.write_text("from . import y\ndef f():\n    from ..offline.metrics import f1\n    import engines.base\n")
    names = imported_names("stream.fusion.x", source)
    assert {"stream.fusion.y", "stream.offline.metrics.f1", "engines.base"} <= names
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circles():
    assert cycles(import_graph()) == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    wrong = []
    for module, targets in sorted(import_graph().items()):
        for target in sorted(targets):
            if module.startswith("engines") and target.startswith("stream"):
                wrong.append(f"{module} -> {target} (engines is independent of stream)")
                continue
            low, high = layer_of(module), layer_of(target)
            if low is None or high is None or LAYERS[high] <= LAYERS[low] or (low, high) in ALLOWED_UPWARDS:
                continue
            wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_every_stream_package_has_a_layer():
    packages = {m.split(".")[1] for m in project_modules() if m.startswith("stream.")}
    assert {f"stream.{p}" for p in packages} - set(LAYERS) <= {"stream.schema", "stream.heads", "stream.web"}
