"""The rules of the house (docs/design.md): floors, cycles, and capabilities on classes."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from metafit.algorithms import get_algorithm, list_algorithms
from metafit.algorithms.base import CAPABILITIES

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "metafit"


def _checker():  # tools/check_imports.py, loaded as a module
    spec = importlib.util.spec_from_file_location("check_imports",
                                                  ROOT / "tools" / "check_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_cycle_and_no_upward_import() -> None:
    checker = _checker()
    edges = checker.graph()
    assert len(edges) > 80 and checker.violations(edges) == []


def test_the_checker_sees_cycles_and_upward_imports() -> None:
    checker = _checker()
    edges = {"metafit.episodes": {"metafit.cli.main"}, "metafit.cli.main": {"metafit.episodes"},
             "metafit.data.a": {"metafit.data.b"}, "metafit.data.b": {"metafit.data.a"}}
    problems = checker.violations(edges)
    assert any("upward import: metafit.episodes" in p for p in problems)
    assert any("import cycle" in p and "metafit.data.a" in p for p in problems)
    assert checker.violations({"metafit.cli.main": {"metafit.episodes"}}) == []


# Reference implementations of particular algorithms (the peers `metafit bench` times)
# necessarily name the algorithm they implement.
PEER_MODULES = {"cli/bench_peers.py", "cli/bench_problems.py"}


def _name_checks(path: Path, names: set[str]) -> list[str]:
    """``x.algorithm == "maml"`` or ``x.algorithm in ("maml", ...)`` and name collections."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            about_algorithm = any(isinstance(s, ast.Attribute) and s.attr == "algorithm"
                                  for s in sides)
            literals = {s.value for s in ast.walk(node) if isinstance(s, ast.Constant)}
            if about_algorithm and literals & names:
                found.append(f"{path.name}:{node.lineno}")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            literals = {e.value for e in node.elts if isinstance(e, ast.Constant)}
            if len(literals & names) >= 2:
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_no_algorithm_name_checks_outside_the_algorithms() -> None:
    names = set(list_algorithms())
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = str(path.relative_to(SRC))
        if rel.startswith("algorithms/") or rel in PEER_MODULES:
            continue
        found += _name_checks(path, names)
    assert found == [], "name checks outside algorithms/ (declare a capability instead)"


def test_the_name_check_sees_a_comparison_and_a_list(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('if recipe.algorithm == "protonet":\n    pass\nALL = ("maml", "anil")\n'
                   'if name == "maml":\n    pass\n')  # the last: not about an algorithm
    assert _name_checks(bad, set(list_algorithms())) == ["bad.py:1", "bad.py:3"]


@pytest.mark.parametrize("name", list_algorithms())
def test_every_algorithm_declares_its_capabilities(name: str) -> None:
    declared = get_algorithm(name).capabilities()
    assert set(declared) == set(CAPABILITIES)
    assert declared["batch_form"] in (None, "vmap", "pooled")
    assert all(isinstance(declared[k], bool) for k in CAPABILITIES if k != "batch_form")


def test_capabilities_say_what_the_classes_do() -> None:
    assert get_algorithm("maml").graphable and not get_algorithm("protonet").graphable
    assert not get_algorithm("protonet").fixed_head and get_algorithm("maml").fixed_head
    assert get_algorithm("finetune").batch_form == "pooled"
    assert not get_algorithm("linear_probe").meta_trained
    assert not get_algorithm("protonet").adapts_with_steps
