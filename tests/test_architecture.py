"""The package's import graph: stages import only from themselves and the stages above them, no circles.

The graph is read with ``ast`` from every module of ``sweep`` (nothing is imported), counting the
imports inside functions, ``from x import y`` where ``y`` is a submodule, relative imports and
``importlib.import_module("literal")``. The stages, in order (docs: ARCHITECTURE.md):

floor (``sweep``, ``errors``, ``hparams``, ``config``, ``metrics``, ``atomic``, ``reading``, ``strategies/specs.py``
and the empty ``strategies/__init__.py``), ``data``, ``models``, ``strategies``, ``train``,
``results``, ``tune``, ``analysis``, ``commands`` (and ``cli.py``), ``api.py``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sweep"

STAGES = ("floor", "data", "models", "strategies", "train", "results", "tune", "analysis", "commands", "api")
FLOOR = frozenset({"sweep", "sweep.errors", "sweep.hparams", "sweep.config", "sweep.metrics", "sweep.atomic",
                   "sweep.reading",
                   "sweep.strategies", "sweep.strategies.specs"})
SINGLE_FILES = {"sweep.cli": "commands", "sweep.api": "api"}


def sweep_stage(module: str) -> str:
    """The stage of a module of ``sweep``; a module placed in none fails the test that meets it."""
    if module in FLOOR:
        return "floor"
    if module in SINGLE_FILES:
        return SINGLE_FILES[module]
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in STAGES[1:-1]:
        return parts[1]
    raise AssertionError(f"{module} belongs to no stage: put it in a stage folder or list it in {__name__}")


# --- the graph
@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a module of the package, or a top-level third-party / standard-library name
    path: Path
    line: int
    type_checking: bool  # inside ``if TYPE_CHECKING:``: an arrow, but nothing runs

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


@dataclass
class Graph:
    root: Path  # the folder holding the package
    modules: dict[str, Path] = field(default_factory=dict)
    internal: list[Import] = field(default_factory=list)
    external: list[Import] = field(default_factory=list)

    def runtime_edges(self) -> dict[str, list[Import]]:
        edges: dict[str, list[Import]] = {m: [] for m in self.modules}
        for imp in self.internal:
            if not imp.type_checking:
                edges[imp.source].append(imp)
        return edges

    def loaded_by(self, module: str) -> set[str]:
        """Every module of the package that importing ``module`` can run: imports at any depth
        (inside functions too), and each one's parent packages, whose ``__init__`` runs first."""
        edges = self.runtime_edges()
        seen: set[str] = set()
        todo = [module]
        while todo:
            m = todo.pop()
            if m in seen:
                continue
            seen.add(m)
            todo.extend(imp.target for imp in edges[m])
            parent = m.rpartition(".")[0]
            if parent:
                todo.append(parent)
        return seen

    def third_party(self, module: str) -> dict[str, Import]:
        """Top-level names of the modules outside the package that ``module`` can import, each with one place."""
        loaded = self.loaded_by(module)
        found: dict[str, Import] = {}
        for imp in self.external:
            if imp.source in loaded and not imp.type_checking:
                found.setdefault(imp.target, imp)
        return found


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Collector(ast.NodeVisitor):
    """(imported name, line, under TYPE_CHECKING, candidate submodules) for every import of one file."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.found: list[tuple[str, int, bool, list[str]]] = []
        self._type_checking = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_checking += 1
            for child in node.body:
                self.visit(child)
            self._type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int, submodules: list[str] | None = None) -> None:
        self.found.append((name, line, self._type_checking > 0, submodules or []))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            name = ".".join([*base, *([node.module] if node.module else [])])
        else:
            name = node.module or ""
        self._add(name, node.lineno, [f"{name}.{a.name}" for a in node.names if a.name != "*"])

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)


def build_graph(root: Path, package: str = PACKAGE) -> Graph:
    """The import graph of ``root/package``; ``root`` is the folder that holds the package."""
    graph = Graph(root)
    for path in sorted((root / package).rglob("*.py")):
        if "__pycache__" not in path.parts:
            graph.modules[module_name(root, path)] = path
    for module, path in graph.modules.items():
        collector = _Collector(module, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for name, line, type_checking, submodules in collector.found:
            if name.split(".")[0] != package:
                graph.external.append(Import(module, name.split(".")[0], path, line, type_checking))
                continue
            targets = [s for s in submodules if s in graph.modules]  # from x import y: y a module
            if len(targets) < len(submodules) or not submodules:  # ... and the rest are names of x itself
                prefix = name
                while prefix and prefix not in graph.modules:
                    prefix = prefix.rpartition(".")[0]
                if prefix:
                    targets.append(prefix)
            graph.internal.extend(Import(module, t, path, line, type_checking) for t in targets)
    return graph


# --- the checks, each returning messages (empty: fine)
def back_arrows(graph: Graph, stages: tuple[str, ...] = STAGES,
                stage: Callable[[str], str] = sweep_stage) -> list[str]:
    """Every import from a stage into a later one (``if TYPE_CHECKING`` imports count: an arrow is an arrow)."""
    order = {s: i for i, s in enumerate(stages)}
    messages = []
    for imp in graph.internal:
        src, dst = stage(imp.source), stage(imp.target)
        if order[dst] > order[src]:
            messages.append(f"{imp.where(graph.root)}: {imp.source} ({src}) imports {imp.target} ({dst}), "
                            f"a later stage")
    return messages


def import_cycles(graph: Graph) -> list[str]:
    """One message per circle of runtime imports (strongly connected component), naming one cycle through it."""
    edges = graph.runtime_edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan, recursive: the package has a few dozen modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for imp in edges[v]:
            w = imp.target
            if w not in index:
                connect(w)
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
            components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    messages = []
    for component in components:
        members = set(component)
        start = min(component)
        if len(component) == 1 and not any(imp.target == start for imp in edges[start]):
            continue
        # the shortest way from start back to start inside the component
        paths: dict[str, list[Import]] = {start: []}
        frontier = [start]
        cycle: list[Import] | None = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for imp in edges[v]:
                    if imp.target == start:
                        cycle = paths[v] + [imp]
                        break
                    if imp.target in members and imp.target not in paths:
                        paths[imp.target] = paths[v] + [imp]
                        nxt.append(imp.target)
                if cycle is not None:
                    break
            frontier = nxt
        assert cycle is not None
        steps = "; ".join(f"{imp.where(graph.root)} {imp.source} -> {imp.target}" for imp in cycle)
        messages.append(f"import circle {' -> '.join([start, *(imp.target for imp in cycle)])} ({steps})")
    return messages


def forbidden_imports(graph: Graph, modules: Iterable[str], names: Iterable[str], why: str) -> list[str]:
    """Each of ``modules`` that can load one of ``names`` (third-party top-level names, or sweep modules
    and packages), at any depth within the package."""
    messages = []
    names = set(names)
    for module in sorted(modules):
        external = graph.third_party(module)
        for name in sorted(names & set(external)):
            imp = external[name]
            how = "" if imp.source == module else f" through {imp.source}"
            messages.append(f"{module} loads {name}{how} ({imp.where(graph.root)}): {why}")
        loaded = graph.loaded_by(module)
        for name in sorted(n for n in names if n.split(".")[0] == PACKAGE):
            hits = sorted(m for m in loaded if m == name or m.startswith(name + "."))
            if hits:
                direct = [imp for imp in graph.internal if imp.target in hits and imp.source in loaded]
                where = f" ({direct[0].where(graph.root)}: {direct[0].source} -> {direct[0].target})" if direct else ""
                messages.append(f"{module} loads {hits[0]}{where}: {why}")
    return messages


def in_stage(graph: Graph, *stages: str) -> list[str]:
    return [m for m in graph.modules if sweep_stage(m) in stages]


def fail_on(messages: list[str], what: str) -> None:
    if messages:
        pytest.fail(f"{what}:\n  " + "\n  ".join(messages), pytrace=False)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return build_graph(ROOT)


# --- the package
def test_every_module_has_a_stage(graph: Graph):
    problems = []
    for module in graph.modules:
        try:
            sweep_stage(module)
        except AssertionError as err:
            problems.append(str(err))
    fail_on(problems, "modules outside the stages")


def test_imports_point_up_the_stages(graph: Graph):
    fail_on(back_arrows(graph), "imports from a later stage (ARCHITECTURE.md: imports point up, never down)")


def test_no_import_circles(graph: Graph):
    fail_on(import_cycles(graph), "import circles")


def test_cli_loads_only_command_modules():
    """``sweep.cli`` imports its subcommands by name (a string the graph cannot follow): all are commands."""
    from sweep.cli import COMMANDS

    assert {sweep_stage(module) for module, _ in COMMANDS.values()} == {"commands"}


def test_analysis_never_loads_torch_or_ray(graph: Graph):
    fail_on(forbidden_imports(graph, in_stage(graph, "analysis"), {"torch", "torchvision", "ray"},
                              "analysis reads results files only"), "analysis loading torch or Ray")


def test_floor_never_loads_torch(graph: Graph):
    fail_on(forbidden_imports(graph, in_stage(graph, "floor"), {"torch", "torchvision"}, "the floor is torch-free"),
            "the floor loading torch")


def test_trainer_and_strategies_know_nothing_of_tune_or_results(graph: Graph):
    fail_on(forbidden_imports(graph, in_stage(graph, "train", "strategies"),
                              {"ray", "optuna", "sweep.tune", "sweep.results"},
                              "the trainer and the strategies know nothing of Ray, Optuna, tuning or Parquet"),
            "train / strategies loading Ray, Optuna, sweep.tune or sweep.results")


def test_torch_free_modules_import_without_torch():
    """The check above, for real: a fresh interpreter imports them and torch is not loaded."""
    names = [m for m in ("sweep.config", "sweep.hparams", "sweep.analysis.pareto")
             if (ROOT / (m.replace(".", "/") + ".py")).exists()]
    code = f"import {', '.join(names)}; import sys; assert 'torch' not in sys.modules, 'torch was imported'"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_test_scaffolding_in_the_package():
    """ARCHITECTURE.md: test scaffolding lives in tests/ (fault injection: tests/faults/sitecustomize.py)."""
    hits = []
    for path in sorted((ROOT / PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                if "SWEEP_TEST_" in line:
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    fail_on(hits, "test-only switches in the package")


# --- the checker itself, on a tiny package with one back-arrow and one circle
def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_checker_reports_a_back_arrow_and_a_circle(tmp_path: Path):
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/base.py": """\
            import os


            def late():
                from toy.top import run  # a back-arrow, hidden in a function
                return run
            """,
        "toy/top/__init__.py": "",
        "toy/top/a.py": "from toy.top import b  # b is a submodule\n",
        "toy/top/b.py": "from . import c\n",
        "toy/top/c.py": "import toy.top.a\nimport numpy\nfrom ..base import late\n",
        "toy/top/run.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from toy.top import a\n",
    })
    graph = build_graph(tmp_path, "toy")
    assert set(graph.modules) == {"toy", "toy.base", "toy.top", "toy.top.a", "toy.top.b", "toy.top.c", "toy.top.run"}

    def stage(module: str) -> str:
        return "top" if module.startswith("toy.top") else "floor"

    arrows = back_arrows(graph, stages=("floor", "top"), stage=stage)
    assert arrows == ["toy/base.py:5: toy.base (floor) imports toy.top.run (top), a later stage"]

    cycles = import_cycles(graph)
    assert len(cycles) == 1, cycles
    assert cycles[0].startswith("import circle toy.top.a -> toy.top.b -> toy.top.c -> toy.top.a (")
    for where in ("toy/top/a.py:1", "toy/top/b.py:1", "toy/top/c.py:1"):
        assert where in cycles[0]

    # through base -> top.run (in a function) and run's parent package, base can load numpy (via c)
    assert graph.loaded_by("toy.base") >= {"toy", "toy.top", "toy.top.run"}
    assert "numpy" not in graph.third_party("toy.base")  # run imports a only when type checking: nothing runs
    assert "numpy" in graph.third_party("toy.top.a")
    messages = forbidden_imports(graph, ["toy.top.a"], {"numpy"}, "no numpy")
    assert messages == ["toy.top.a loads numpy through toy.top.c (toy/top/c.py:2): no numpy"]
