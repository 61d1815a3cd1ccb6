"""Layout goals of the evonnx package, measured on its source with `ast` alone.

The package reads bottom to top as the pipeline (docs/design.md, *Floor plan*). These tests
pin that shape: no import cycles, no import up the layer order, a bounded chain of
module-level imports, few modules directly under `evonnx/`, and short functions. No evonnx
module is imported: the package folder is located with `importlib.util.find_spec`, which does
not run `evonnx/__init__.py`, and every file is only parsed.

Module names follow Python's: `evonnx/x/__init__.py` is module `evonnx.x`. An import
`from evonnx.x import name` is an edge to module `evonnx.x.name` when that is a module, else
to `evonnx.x`.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "evonnx"
# The longest chain of module-level imports, counted in modules (`evonnx.errors` alone is 1).
MAX_LEVELS = 12
MAX_ROOT_MODULES = 4
MAX_FUNCTION_LINES = 60
# Bottom to top; "" is the package's own `__init__`. A module imports its own layer or below.
LAYERS = (
    "errors",
    "model",
    "pruning",
    "genetic",
    "data",
    "converters",
    "retrain",
    "runtimes",
    "latency",
    "deploy",
    "execute",
    "evolution",
    "api",
    "",
    "cli",
)

Graph = Mapping[str, Set[str]]
TRY_NODES = tuple(getattr(ast, name) for name in ("Try", "TryStar") if hasattr(ast, name))


@dataclass(frozen=True)
class Edge:
    """One import of an evonnx module by another."""

    source: str
    target: str
    line: int
    module_level: bool  # runs when `source` is imported (not in a function, not TYPE_CHECKING)

    def __str__(self) -> str:
        return f"{self.source}:{self.line} -> {self.target}"


@dataclass(frozen=True)
class Function:
    """A function or method, by qualified name, and its length in lines."""

    name: str
    lines: int


# --- reading the package ---------------------------------------------------------------


def package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None and spec.origin is not None, f"{PACKAGE} is not installed"
    return Path(spec.origin).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@functools.cache
def sources() -> dict[str, Path]:
    """Every module of the package, by name."""
    root = package_dir()
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


@functools.cache
def syntax_tree(module: str) -> ast.Module:
    path = sources()[module]
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


# --- imports ---------------------------------------------------------------------------


def is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def module_level_imports(body: Sequence[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run on import: top level and in top-level `if`/`try`, not TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                yield from module_level_imports(node.body)
            yield from module_level_imports(node.orelse)
        elif isinstance(node, TRY_NODES):
            for block in (node.body, node.orelse, node.finalbody):
                yield from module_level_imports(block)
            for handler in node.handlers:
                yield from module_level_imports(handler.body)


def imported_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: Set[str]
) -> Iterator[str]:
    """Dotted names one import statement loads (before resolving to known modules)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = imported_from(node, module, is_package)
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield submodule if submodule in known else base


def resolve(name: str, known: Set[str]) -> str | None:
    """The longest known module that `name` is or lies in; None outside the package."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def module_edges(
    tree: ast.Module, module: str, is_package: bool, known: Set[str]
) -> Iterator[Edge]:
    """Every import of another known module in one module's tree, deduplicated by target."""
    eager = {id(node) for node in module_level_imports(tree.body)}
    seen: set[tuple[str, bool]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        for name in import_targets(node, module, is_package, known):
            target = resolve(name, known)
            key = (target or "", id(node) in eager)
            if target is None or target == module or key in seen:
                continue
            seen.add(key)
            yield Edge(module, target, node.lineno, id(node) in eager)


@functools.cache
def package_edges() -> tuple[Edge, ...]:
    known = set(sources())
    return tuple(
        edge
        for module, path in sources().items()
        for edge in module_edges(syntax_tree(module), module, path.name == "__init__.py", known)
    )


def graph_of(edges: Iterable[Edge], modules: Iterable[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    return graph


# --- graph measures --------------------------------------------------------------------


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in a deterministic order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def cycles(graph: Graph) -> list[list[str]]:
    """The modules of every import cycle (components of more than one module, or a self-loop)."""
    return [
        component
        for component in strongly_connected(graph)
        if len(component) > 1 or component[0] in graph.get(component[0], ())
    ]


def cycle_path(graph: Graph, component: Sequence[str]) -> list[str]:
    """One concrete cycle through a component's first module: [a, b, ..., a]."""
    start, members = component[0], set(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        node = frontier.pop(0)
        for succ in sorted(graph.get(node, ())):
            if succ == start:
                path = [node]
                while path[-1] != start:
                    path.append(parents[path[-1]])
                return [*reversed(path), start]
            if succ in members and succ not in parents:
                parents[succ] = node
                frontier.append(succ)
    raise ValueError(f"no cycle through {start}")


def longest_chain(graph: Graph) -> list[str]:
    """The longest import chain, top first; the graph must be acyclic."""
    if found := cycles(graph):
        raise ValueError(f"graph has cycles: {found}")

    @functools.cache
    def chain_from(node: str) -> tuple[str, ...]:
        below = [chain_from(succ) for succ in sorted(graph.get(node, ()))]
        return (node, *max(below, key=len, default=()))

    return list(max((chain_from(node) for node in sorted(graph)), key=len, default=()))


def layer_of(module: str) -> str:
    """`evonnx.pruning.plan` -> "pruning"; `evonnx` -> "" (the package's `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def up_imports(edges: Iterable[Edge], layers: Sequence[str]) -> list[Edge]:
    """Edges whose target sits in a higher layer than their source."""
    rank = {layer: position for position, layer in enumerate(layers)}
    up = [edge for edge in edges if rank[layer_of(edge.target)] > rank[layer_of(edge.source)]]
    return sorted(up, key=lambda edge: (edge.source, edge.line, edge.target))


def functions(tree: ast.AST, prefix: str) -> Iterator[Function]:
    """Every function and method, nested ones included, with its qualified name."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = f"{prefix}.{node.name}"
            if not isinstance(node, ast.ClassDef):
                assert node.end_lineno is not None
                yield Function(name, node.end_lineno - node.lineno + 1)
            yield from functions(node, name)
        else:
            yield from functions(node, prefix)


# --- the checker, checked --------------------------------------------------------------


def test_graph_helpers_on_a_synthetic_graph() -> None:
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": set(), "f": {"f"}}
    assert cycles(looped) == [["a", "b", "c"], ["f"]]
    assert cycle_path(looped, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert cycle_path(looped, ["f"]) == ["f", "f"]

    layered = {"top": {"mid", "low"}, "mid": {"low"}, "low": set(), "side": {"low"}}
    assert cycles(layered) == []
    assert longest_chain(layered) == ["top", "mid", "low"]
    assert longest_chain({"errors": set()}) == ["errors"]
    try:
        longest_chain(looped)
    except ValueError:
        pass
    else:
        raise AssertionError("longest_chain accepted a cyclic graph")


def test_import_reading_on_a_synthetic_module() -> None:
    source = """
from typing import TYPE_CHECKING
import evonnx.model.files
from evonnx.model import shapes, load
from . import plan
from ..errors import EvonnxError
try:
    from evonnx.data import formats
except ImportError:
    pass
if TYPE_CHECKING:
    from evonnx.evolution.lineage import Lineage
def late():
    from evonnx.retrain import task
"""
    known = {
        "evonnx",
        "evonnx.errors",
        "evonnx.model",
        "evonnx.model.files",
        "evonnx.model.shapes",
        "evonnx.pruning",
        "evonnx.pruning.plan",
        "evonnx.pruning.fold",
        "evonnx.data",
        "evonnx.data.formats",
        "evonnx.evolution",
        "evonnx.evolution.lineage",
        "evonnx.retrain",
        "evonnx.retrain.task",
    }
    edges = list(module_edges(ast.parse(source), "evonnx.pruning.fold", False, known))
    found = {(edge.target, edge.module_level) for edge in edges}
    assert found == {
        ("evonnx.model.files", True),
        ("evonnx.model.shapes", True),
        ("evonnx.model", True),  # `load` is a name in evonnx.model, not a module
        ("evonnx.pruning.plan", True),
        ("evonnx.errors", True),
        ("evonnx.data.formats", True),
        ("evonnx.evolution.lineage", False),
        ("evonnx.retrain.task", False),
    }
    assert [str(edge) for edge in up_imports(edges, LAYERS)] == [
        "evonnx.pruning.fold:8 -> evonnx.data.formats",
        "evonnx.pruning.fold:12 -> evonnx.evolution.lineage",
        "evonnx.pruning.fold:14 -> evonnx.retrain.task",
    ]


# --- the layout goals ------------------------------------------------------------------


def test_no_import_cycles() -> None:
    """All imports count: in functions and under TYPE_CHECKING too."""
    graph = graph_of(package_edges(), sources())
    found = cycles(graph)
    report = [
        f"{sorted(component)}\n    e.g. {' -> '.join(cycle_path(graph, component))}"
        for component in found
    ]
    if found:
        pytest.fail(f"{len(found)} import cycle(s):\n  " + "\n  ".join(report), pytrace=False)


def test_imports_only_go_down_the_layers() -> None:
    unknown = sorted({layer_of(m) for m in sources()} - set(LAYERS))
    assert not unknown, f"packages missing from LAYERS: {unknown}"
    offending = up_imports(package_edges(), LAYERS)
    if offending:
        order = " < ".join(layer or "__init__" for layer in LAYERS)
        pytest.fail(
            f"{len(offending)} import(s) up the layer order {order}:\n  "
            + "\n  ".join(map(str, offending)),
            pytrace=False,
        )


def test_module_level_import_chain_is_short() -> None:
    eager = [edge for edge in package_edges() if edge.module_level]
    graph = graph_of(eager, sources())
    found = cycles(graph)
    if found:
        pytest.fail(f"module-level import cycle(s), no chain length: {found}", pytrace=False)
    chain = longest_chain(graph)
    if len(chain) > MAX_LEVELS:
        pytest.fail(
            f"{len(chain)} levels of module-level imports (at most {MAX_LEVELS}):\n  "
            + "\n  -> ".join(chain),
            pytrace=False,
        )


def test_few_modules_directly_under_the_package() -> None:
    root_modules = sorted(path.name for path in package_dir().glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, (
        f"{len(root_modules)} modules directly under {PACKAGE}/ "
        f"(at most {MAX_ROOT_MODULES}): {root_modules}"
    )


def test_functions_are_short() -> None:
    too_long = sorted(
        (
            function
            for module in sources()
            for function in functions(syntax_tree(module), module)
            if function.lines > MAX_FUNCTION_LINES
        ),
        key=lambda function: (-function.lines, function.name),
    )
    if too_long:
        pytest.fail(
            f"{len(too_long)} function(s) over {MAX_FUNCTION_LINES} lines:\n  "
            + "\n  ".join(f"{function.lines:4d} {function.name}" for function in too_long),
            pytrace=False,
        )
