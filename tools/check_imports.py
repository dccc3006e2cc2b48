"""The rules of the house, checked: no import cycle and no upward import in ``src/metafit``.

Every ``import`` of a metafit module counts, at module level or inside a function (a lazy
import still ties the two modules together). A module's floor is its package's (or, for a
top-level module, its own) place in ``FLOORS``; a module may import modules on its own
floor or below, never above, and never the root package ``metafit`` itself.

    python tools/check_imports.py          # prints the violations, exit status 1 if any
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: Lowest first. Packages and top-level modules on one line share a floor. ``execution``
#: sits below ``algorithms``: it runs any algorithm's per-task and batch functions through
#: a structural contract (``execution/program.py``), so the algorithms can call it.
#: ``rl`` shares the algorithms' floor: meta-RL's maths (environments, policies, MAML-RL,
#: TRPO) built on ``functional``; evaluation and training above will drive it.
FLOORS: list[tuple[str, ...]] = [
    ("_version", "episodes", "io", "distributed", "config"),
    ("models",),
    ("data", "functional"),
    ("execution",),
    ("algorithms", "rl"),
    ("evaluation",),
    ("runs",),
    ("training",),
    ("tuning", "deploy"),
    ("server",),
    ("cli", "__main__"),
]


def floor_of(module: str) -> int:
    """The floor of ``metafit.a.b`` (the floor of ``a``)."""
    head = module.split(".")[1]
    for level, names in enumerate(FLOORS):
        if head in names:
            return level
    raise KeyError(f"{module}: its package {head!r} has no floor in FLOORS")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The metafit modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "metafit")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "metafit":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def graph() -> dict[str, set[str]]:
    files = sorted((SRC / "metafit").rglob("*.py"))
    known = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, known) for f in files}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterable[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in edges), None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def violations(edges: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, deps in sorted(edges.items()):
        if module == "metafit":
            continue
        for dep in sorted(deps):
            if dep == "metafit":
                problems.append(f"{module} imports the root package metafit")
            elif dep != module and floor_of(dep) > floor_of(module):
                problems.append(f"upward import: {module} (floor {floor_of(module)}) imports "
                                f"{dep} (floor {floor_of(dep)})")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(edges)]
    return problems


def main() -> int:
    edges = graph()
    problems = violations(edges)
    for line in problems:
        print(line)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, "
          f"{len(problems)} violations")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
