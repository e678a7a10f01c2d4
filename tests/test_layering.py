"""The import graph of the project's packages: no cycles, and no import up the layers.

Every ``.py`` file of ``mobilemoe/``, ``device_lab/``, ``mobilemoe_kernels/`` and ``flows/``
is parsed with ``ast`` (never imported), and every import counts wherever it is written:
at module level, inside functions, under ``if TYPE_CHECKING:``, and
``importlib.import_module("literal")`` (an f-string with a literal package prefix counts as
importing every module of that package). ``from pkg import name`` points at the submodule
``pkg.name`` when there is one, else at ``pkg``. Importing ``a.b.c`` is not counted as
importing the package ``a.b`` itself: a package ``__init__`` that only re-exports lazily
(``mobilemoe.eval``) would otherwise look like a cycle with each of its submodules.

The layers, highest first (docs/architecture.md draws the same picture)::

    flows                     Metaflow flows: wiring only
    mobilemoe.cli, commands   the command line
    mobilemoe.pipeline, cards stage keys, tracking, orchestration of the stages; the
                              Metaflow cards that show the stage records
    stages                    train, eval, export, quant, device_profile, lineage,
                              checkpoint, preflight, generate, ... (may import each
                              other, without cycles)
    model, data               the network (and its accounting); the data builds
    mobilemoe.config          params.yaml as typed sections; imports only itself and
                              mobilemoe.errors
    errors, io, tokens        UserError, atomic writes, special-token names
    device_lab                stands alone: never imports mobilemoe; may load
                              mobilemoe_kernels (programs call its operators)
    mobilemoe_kernels         stands alone: imports neither mobilemoe nor device_lab

A module may import its own layer or any layer below it. ``MODULE_LAYERS`` maps a module
(or package prefix) to its layer; the longest matching prefix wins, and a module of
``mobilemoe`` that no row names is a stage. The stand-alone packages sit below all of
``mobilemoe`` (``mobilemoe.errors`` redacts with ``device_lab.schema``).
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mobilemoe", "device_lab", "mobilemoe_kernels", "flows")

# Layer numbers: higher imports lower, never the other way.
LAYERS = {"base": 0, "config": 1, "model/data": 2, "stage": 3, "pipeline": 4, "cli": 5, "flows": 6}
MODULE_LAYERS = {
    "flows": "flows",
    "mobilemoe.cli": "cli",
    "mobilemoe.commands": "cli",
    "mobilemoe.pipeline": "pipeline",
    "mobilemoe.cards": "pipeline",  # renders the pipeline's StageRefs for the flow's steps
    "mobilemoe.model": "model/data",
    "mobilemoe.data": "model/data",
    "mobilemoe.config": "config",
    "mobilemoe.errors": "base",
    "mobilemoe.io": "base",
    "mobilemoe.tokens": "base",
    "mobilemoe": "stage",  # everything else of mobilemoe: train, eval, export, quant, ...
}
# Packages that stand alone -> what of the project they may import (never mobilemoe): the
# device lab loads the kernel library to run programs that call its operators.
STANDALONE = {"device_lab": ("device_lab", "mobilemoe_kernels"), "mobilemoe_kernels": ("mobilemoe_kernels",)}
# mobilemoe.config may import only these (beyond the standard library and third parties).
CONFIG_MAY_IMPORT = ("mobilemoe.config", "mobilemoe.errors")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name ``from <level dots><target>`` means inside ``module``."""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """``name`` or its longest prefix that is one of our modules; None if none is."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _import_module_targets(call: ast.Call, modules: dict[str, Path]) -> set[str]:
    """Modules an ``importlib.import_module(...)`` call can load (literal or f-string prefix)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or not call.args:
        return set()
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value)
        return {m for m in modules if m.startswith(prefix) and m != prefix.rstrip(".")}
    return set()


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """Our modules that ``module`` imports anywhere in its file -> first line doing so."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: dict[str, int] = {}

    def add(name: str, line: int) -> None:
        target = _known(name, modules)
        if target is not None and target != module:
            found.setdefault(target, line)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve_relative(module, _is_package(path), node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}" if base else alias.name
                add(sub if sub in modules else base, node.lineno)
        elif isinstance(node, ast.Call):
            for name in _import_module_targets(node, modules):
                add(name, node.lineno)
    return found


def import_graph() -> dict[str, dict[str, int]]:
    modules = module_files()
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan, iterative over the successors
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, successors = work[-1]
            for w in successors:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.add(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        components.append(component)

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return [_shortest_cycle(graph, sorted(c)[0], c) for c in components]


def _shortest_cycle(graph: dict[str, dict[str, int]], start: str, within: set[str]) -> list[str]:
    """start -> ... -> start through modules of ``within`` (breadth first)."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for nxt in sorted(graph.get(node, ())):
            if nxt not in within:
                continue
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start, *reversed(path[:-1]), start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    raise AssertionError(f"no cycle through {start}")


def layer_of(module: str) -> str | None:
    """The layer name of a mobilemoe/flows module (None for the stand-alone packages)."""
    target = _known(module, {k: Path() for k in MODULE_LAYERS})
    return MODULE_LAYERS[target] if target else None


def _describe(graph: dict[str, dict[str, int]], a: str, b: str) -> str:
    path = module_files().get(a)
    where = path.relative_to(ROOT) if path else a
    return f"{a} -> {b} ({where}:{graph[a][b]})"


def layering_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for a, targets in sorted(graph.items()):
        top = a.split(".")[0]
        for b in sorted(targets):
            if top in STANDALONE and b.split(".")[0] not in STANDALONE[top]:
                bad.append(f"{_describe(graph, a, b)}: {top} imports only {', '.join(STANDALONE[top])}")
            elif a.startswith("mobilemoe.config") and not b.startswith(CONFIG_MAY_IMPORT):
                bad.append(f"{_describe(graph, a, b)}: config imports only itself and errors")
            elif top not in STANDALONE and b.split(".")[0] not in STANDALONE:
                la, lb = layer_of(a), layer_of(b)
                if LAYERS[lb] > LAYERS[la]:
                    bad.append(f"{_describe(graph, a, b)}: {la} imports {lb}, a layer above it")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_the_walk_sees_function_level_and_dynamic_imports(graph):
    """The walk is only as good as what it finds: imports known to sit inside functions
    and behind importlib are in the graph."""
    assert {"mobilemoe.commands.arch", "mobilemoe.commands.eval"} <= set(graph["mobilemoe.cli"])
    assert "mobilemoe.model.accounting" in graph["mobilemoe.commands.arch"]  # inside run()
    assert "mobilemoe.errors" in graph["mobilemoe.config.base"]
    assert len(graph) > 80 and all(m.split(".")[0] in PACKAGES for m in graph)


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    lines = [
        " -> ".join(c) + "\n    " + "\n    ".join(_describe(graph, a, b) for a, b in zip(c, c[1:]))
        for c in cycles
    ]
    assert not cycles, "import cycles:\n  " + "\n  ".join(lines)


def test_no_upward_imports(graph):
    bad = layering_violations(graph)
    assert not bad, "imports against the layering:\n  " + "\n  ".join(bad)


def test_the_checks_catch_what_they_guard():
    """A made-up graph with a cycle and imports against the layering is reported."""
    fake = {
        "mobilemoe.config.x": {"mobilemoe.eval.suite": 1},
        "mobilemoe.eval.suite": {"mobilemoe.data.y": 2},
        "mobilemoe.data.y": {"mobilemoe.config.x": 3},
        "device_lab.q": {"mobilemoe.errors": 4},
        "mobilemoe.model.m": {"mobilemoe.train.t": 5},
    }
    assert find_cycles(fake) == [
        ["mobilemoe.config.x", "mobilemoe.eval.suite", "mobilemoe.data.y", "mobilemoe.config.x"]
    ]
    assert [v.split(": ", 1)[1] for v in layering_violations(fake)] == [
        "device_lab imports only device_lab, mobilemoe_kernels",
        "config imports only itself and errors",
        "model/data imports stage, a layer above it",
    ]
    assert layer_of("mobilemoe.pipeline.cache") == "pipeline" and layer_of("mobilemoe.train.run") == "stage"
    assert layer_of("mobilemoe.config") == "config" and layer_of("device_lab.schema") is None
