"""`metafit quickstart` end to end at a tiny size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from metafit.cli.main import main
from metafit.cli.quickstart import SIZES, data_keys
from metafit.runs.directory import RunDir
from test_omniglot import write_zip


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
    report = (out / "report" / "results.md").read_text()
    assert "| method | task | accuracy (%)" in report
    plots = ["results.png", "training.png", "adaptation_5w1s.png", "adaptation_5w5s.png",
             "episode.png"]
    assert results["plots"] == plots
    assert set(results["maml_test_steps"]) == {"1-shot", "5-shot"}
    assert "chosen on validation" in report
    assert "{" not in report and "Meta-training time: maml " in report  # no dict syntax
    assert "> **Warning:** meta-trained for fewer than 100 iterations: maml (4)" in report
    for name in plots:
        assert f"]({name})" in report
        with Image.open(out / "report" / name) as im:
            assert im.size[0] > 300 and im.size[1] > 200


def test_quickstart_data_selection(tmp_path: Path) -> None:
    size = SIZES["tiny"]
    assert data_keys(size) == {"dataset": "glyphs", "image_size": size.image_size}
    write_zip(tmp_path, "images_background_small1", {"Aa": 2, "Bb": 2, "Cc": 2})
    keys = data_keys(size, data_root=str(tmp_path))
    assert keys["dataset"] == "omniglot" and keys["data_root"] == str(tmp_path)
    assert keys["rotations"] is True and keys["image_size"] == 28
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no Omniglot zips; for other images give a"):
        data_keys(size, data_root=str(empty))
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        data_keys(size, data_root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="compares image classifiers.*'sinusoid'"):
        data_keys(size, recipe="sinusoid_maml")
    assert main(["quickstart", "sinusoid_maml", "--size", "tiny"]) == 2
