"""The house's layering (DESIGN.md), checked from the source with `ast`, not by convention:
runtime/ reaches nothing that imports torch, models/ imports no pruning / export /
quantization / CLI code, library code never imports the CLI, and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "compressor"
TORCH_WORLD = ("torch", "torchvision", "compressai", "torch_pruning", "neural_compressor")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports(name: str, top_level_only: bool = False) -> tuple[set[str], set[str]]:
    """(compressor modules, outside top-level packages) that module `name` imports.

    `from compressor.x import y` counts as importing compressor.x.y when that is a module,
    else compressor.x. With `top_level_only`, imports inside functions are left out (they
    run later, so they cannot form an import-time cycle)."""
    tree = ast.parse(MODULES[name].read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    ours: set[str] = set()
    outside: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            targets = [node.module]
            ours.update(
                f"{node.module}.{a.name}"
                for a in node.names
                if f"{node.module}.{a.name}" in MODULES
            )
            if all(f"{node.module}.{a.name}" in MODULES for a in node.names):
                targets = []  # only submodules imported: the package itself is not the target
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "compressor":
                ours.add(target if target in MODULES else target.rsplit(".", 1)[0])
            else:
                outside.add(target.split(".")[0])
    return ours & set(MODULES), outside


def reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for dep in imports(todo.pop())[0]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_runtime_reaches_nothing_that_imports_torch() -> None:
    runtime = [m for m in MODULES if m.startswith("compressor.runtime")]
    assert len(runtime) >= 5
    offenders = {
        f"{m} (via {start})": sorted(set(TORCH_WORLD) & imports(m)[1])
        for start in runtime
        for m in reachable(start)
        if set(TORCH_WORLD) & imports(m)[1]
    }
    assert offenders == {}


def test_models_import_no_pruning_export_quantization_or_cli() -> None:
    banned = ("compressor.prune", "compressor.export", "compressor.quant", "compressor.cli")
    found = {
        m: sorted(d for d in imports(m)[0] if d.startswith(banned))
        for m in MODULES
        if m.startswith("compressor.models")
    }
    assert {m: d for m, d in found.items() if d} == {}


def test_library_code_never_imports_the_cli() -> None:
    def is_cli(m: str) -> bool:
        return m.startswith("compressor.cli") or m.endswith((".cli", ".__main__"))

    found = {m: sorted(d for d in imports(m)[0] if is_cli(d)) for m in MODULES if not is_cli(m)}
    assert {m: d for m, d in found.items() if d} == {}


def test_no_import_cycles() -> None:
    graph = {m: imports(m, top_level_only=True)[0] - {m} for m in MODULES}
    cycles = strongly_connected(graph)
    assert [sorted(c) for c in cycles if len(c) > 1] == []


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm (iterative: the module graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.add(top)
                    if top == node:
                        break
                out.append(component)
    return out


def test_the_checker_sees_a_planted_cycle_and_a_torch_import() -> None:
    """The checks above are only worth something if they can fail."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert [sorted(c) for c in strongly_connected(graph) if len(c) > 1] == [["a", "b", "c"]]
    ours, outside = imports("compressor.checkpoint")
    assert "torch" in outside and "compressor.errors" in ours
