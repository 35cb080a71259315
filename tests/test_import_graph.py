"""The package's import graph: no module imports another in a loop; the evaluation modules live in one place.

Every import statement counts, also those inside functions: a loop that only closes at run time is still a loop
for a reader and for the tools that draw the graph.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MOVED = ("subgroups", "calibration", "localization", "explainers", "heatmaps")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``module -> the cxr_vit modules it imports``, resolved to modules (``from . import x`` names the submodule)."""
    paths = {module_name(path): path for path in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in paths]
                targets = submodules or [target]
            else:
                continue
            edges |= {target for target in targets if target in paths and target != name}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph[node]):
            if state.get(child) == 1:
                return stack[stack.index(child) :] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "cxr_vit.evaluation.bootstrap" in graph["cxr_vit.evaluation.subgroups"]  # the graph is read
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_benchmark_code_is_imported_by_no_other_module():
    """cxr_vit.benchmarks stays in the package (scripts, tests and the GPU check import it as one) but the
    library never depends on it: it could move out, as timm's benchmark.py sits beside its package."""
    graph = import_graph()
    users = {name for name, edges in graph.items() if not name.startswith("cxr_vit.benchmarks")
             and any(edge.startswith("cxr_vit.benchmarks") for edge in edges)}  # fmt: skip
    assert "cxr_vit.benchmarks.run" in graph and not users, sorted(users)


def test_the_cycle_finder_finds_a_planted_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("name", MOVED)
def test_evaluation_modules_have_one_name(name):
    """No release shipped them beside the package, so no alias module keeps ``cxr_vit.<name>`` importable."""
    assert importlib.import_module(f"cxr_vit.evaluation.{name}")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"cxr_vit.{name}")


def test_names_of_the_old_evaluation_module_still_import():
    from cxr_vit import evaluate_model, write_report
    from cxr_vit.evaluation import bootstrap_report, choose_thresholds, store_thresholds, weights_fingerprint

    assert evaluate_model.__module__ == write_report.__module__ == "cxr_vit.evaluation.report"
    assert bootstrap_report.__module__ == "cxr_vit.evaluation.bootstrap"
    assert choose_thresholds.__module__ == store_thresholds.__module__ == "cxr_vit.evaluation.thresholds"
    assert callable(weights_fingerprint)


def test_every_package_ships_in_a_wheel():
    """A subpackage missing from pyproject's list works in an editable install and is absent from a wheel."""
    import tomllib

    listed = set(tomllib.loads((SRC.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module_name(path) for path in SRC.rglob("__init__.py")}
    assert packages <= listed, f"add to [tool.setuptools] packages: {sorted(packages - listed)}"
