"""The package's layers only point down: no import cycle, no import of a higher layer.

Every ``import xaijax...`` / ``from xaijax... import`` in every module (at module level or inside
a function) is read from the source with ``ast`` and mapped to the component it names (the first
name under ``xaijax``).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xaijax"

#: Bottom to top; a component may import only components of its own layer or below.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset(
        {
            "_version",
            "logs",
            "cli",
            "runtime",
            "checkpoint",
            "paths",
            "provenance",
            "data",
            "report",
            "statistics",
            "sharding",
        }
    ),
    frozenset({"models", "deeplift", "lrp", "weight_sharing", "config_utils", "consistency"}),
    frozenset({"training"}),
    frozenset({"importance", "pruning", "quantization"}),
    frozenset({"experiments", "artifact"}),
    frozenset({"pipeline", "study", "defaults", "__init__"}),
)


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_components(path: Path) -> set[str]:
    """The xaijax components ``path`` imports (``from xaijax import a, b`` names a and b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {component(a.name) for a in node.names if a.name.startswith("xaijax.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "xaijax":
                found |= {a.name for a in node.names}
            elif node.module.startswith("xaijax."):
                found.add(component(node.module))
    return found


def component_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """component -> the other components it imports."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        source = component(module_name(path, package))
        graph.setdefault(source, set()).update(imported_components(path) - {source})
    return graph


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"component {name!r} is in no layer of tests/test_imports.py: place it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{source} (layer {layer_of(source)}) imports {target} (layer {layer_of(target)})"
        for source, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(source)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports as a path ``a -> b -> ... -> a``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [node])):
            return cycle
    return None


def test_every_component_has_a_layer():
    for name in component_graph():
        layer_of(name)


def test_imports_only_point_down():
    assert not upward_imports(component_graph()), "\n".join(upward_imports(component_graph()))


def test_no_import_cycle_between_components():
    cycle = find_cycle(component_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_a_late_upward_import_and_its_cycle(tmp_path):
    package = tmp_path / "xaijax"
    (package / "experiments").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "training.py").write_text("def f():\n    from xaijax.experiments import x\n")
    (package / "experiments" / "__init__.py").write_text("from xaijax import training\n")
    graph = component_graph(package)
    assert graph["training"] == {"experiments"} and graph["experiments"] == {"training"}
    assert upward_imports(graph) == ["training (layer 2) imports experiments (layer 4)"]
    assert find_cycle(graph) == ["experiments", "training", "experiments"]
