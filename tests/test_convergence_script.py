"""benchmarks/gpu/convergence.sh --tiny: the GPU convergence table's whole pipeline on the
CPU (train, time, count FLOPs, evaluate, write the table), on fixture Omniglot zips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_omniglot import write_zip

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from convergence import ROWS  # noqa: E402

#: Eight alphabets of two characters, four drawers: the alphabet split gives every split
#: at least five classes (rotations count), and four examples per class.
ALPHABETS = {f"Alpha{i}": 2 for i in range(8)}


def run_tiny(tmp_path: Path, data: Path, *extra: str
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "OMNIGLOT": str(data),
           "METAFIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "benchmarks/gpu/convergence.sh", "--tiny", *extra], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    return done, out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    tmp = tmp_path_factory.mktemp("convergence")
    data = tmp / "data"
    data.mkdir()
    write_zip(data, "images_background_small1", ALPHABETS)
    return run_tiny(tmp, data)


def test_tiny_mode_writes_every_row(tiny_run: tuple[subprocess.CompletedProcess[str], Path]
                                    ) -> None:
    done, out = tiny_run
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = json.loads((out / "convergence.json").read_text())
    rows = {r["label"]: r for r in table["rows"]}
    assert list(rows) == [r.label for r in ROWS]
    assert {"maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "maml bf16"} <= set(rows)
    for label, r in rows.items():
        assert r["status"] == "ok", (label, r["error"])
        assert r["iterations"] == 2 and r["tasks_per_s"] > 0 and r["flops_per_task"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0 and r["episodes"] == 4
        assert r["batch_norm"] == "support"  # the deployed setting
        assert set(r["peak_fraction"]) == {"float32", "tf32", "bf16"}
    assert rows["maml bf16"]["precision"] == "bf16" and rows["maml"]["precision"] == "float32"
    # second order costs more than first order, per task
    assert rows["maml"]["flops_per_task"] > rows["fomaml"]["flops_per_task"]
    markdown = (out / "convergence.md").read_text()
    assert all(f"| {r.label} |" in markdown for r in ROWS)
    assert (out / "convergence.txt").is_file()


def test_a_failed_step_fails_the_script(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    # no zips: the rows fail to load data (two rows: the script goes on after a failure)
    done, out = run_tiny(tmp_path, tmp_path / "empty", "--rows", "maml", "reptile")
    assert done.returncode != 0
    rows = json.loads((out / "convergence.json").read_text())["rows"]
    assert [r["label"] for r in rows] == ["maml", "reptile"]
    assert all(r["status"] == "failed" and r["error"] for r in rows)
