"""benchmarks/identity.py, the behaviour-identity check of refactors, can tell a change."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _identity():  # the script, loaded as a module
    spec = importlib.util.spec_from_file_location("identity", ROOT / "benchmarks/identity.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_finds_the_first_differing_record(tmp_path: Path, capsys) -> None:
    identity = _identity()
    records = {"run": [{"iteration": 1, "loss": 0.5}, {"iteration": 2, "loss": 0.25}]}
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps(records))
    b.write_text(json.dumps(records))
    changed = {"run": [records["run"][0], {"iteration": 2, "loss": 0.25000000000000006}]}
    c.write_text(json.dumps(changed))
    assert identity.compare(a, b) == 0
    assert identity.compare(a, c) == 1  # one ulp is a difference
    assert "first difference at record 1" in capsys.readouterr().out
