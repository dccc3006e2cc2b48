"""`metafit quickstart` end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metafit.cli import main
from metafit.rundir import RunDir


def test_quickstart_tiny_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--size", "tiny", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| maml | 5-way 1-shot |" in printed and "report/results.md" in printed
    results = json.loads((out / "report" / "results.json").read_text())
    methods = {(r["method"], r["task"]) for r in results["rows"]}
    assert methods == {(m, f"5-way {k}-shot") for m in ("maml", "protonet", "finetune",
                                                        "scratch") for k in (1, 5)}
    for row in results["rows"]:
        assert 0.0 <= row["mean"] <= 1.0 and row["ci95"] >= 0.0
    for name in ("maml", "protonet", "finetune"):
        assert RunDir(out / "runs" / name).status()["status"] == "complete"
    assert "| method | task | accuracy (%)" in (out / "report" / "results.md").read_text()
