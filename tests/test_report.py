"""`metafit report`: the plots exist, are valid PNGs, and show the right data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from metafit.cli.main import main
from metafit.data.sampler import EpisodeSampler
from metafit.data.sinusoid import Sinusoid
from metafit.runs.report import report_runs
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder, regression_recipe


def _png(path: Path) -> tuple[int, int]:
    assert path.is_file(), path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_image_report_of_two_runs(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    runs = []
    for algorithm in ("maml", "protonet"):
        run = tmp_path / algorithm
        Trainer(classification_recipe(root, algorithm), run, progress=False).fit()
        runs.append(run)
    with pytest.raises(ValueError, match="--out"):
        report_runs(runs)
    out = tmp_path / "report"
    files = report_runs(runs, out=out, episodes=5)
    names = {f.name for f in files}
    per_run = {f"{kind}_{a}.png" for kind in ("confusion", "episode") for a in ("maml", "protonet")}
    assert names == {"training.png", "adaptation.png", "report.md", "index.html"} | per_run
    for f in files:
        if f.suffix == ".png":
            width, height = _png(f)
            assert width > 300 and height > 200
    summary = json.loads((out / "report.json").read_text())
    assert set(summary) == {"maml", "protonet"}
    assert summary["maml"]["curve_steps"] == [0, 1, 2]  # eval_inner_steps=2
    assert summary["maml"]["episodes"] == 5
    # scored as deployed, like `metafit evaluate RUN`, and saying so
    assert summary["maml"]["batch_norm"] == "support"
    assert summary["maml"]["transductive"] is False
    text = (out / "report.md").read_text()
    assert "BatchNorm as deployed" in text
    for name in per_run:  # every run of the comparison has its episode and confusion
        assert f"]({name})" in text
    assert "protonet" in text and "{" not in text
    confusion = json.loads((out / "confusion_protonet.json").read_text())
    assert sum(map(sum, confusion["by_label"])) == confusion["queries"] == 5 * 2 * 2


def test_sinusoid_report_via_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    Trainer(regression_recipe("maml"), run, progress=False).fit()
    assert main(["report", str(run), "--episodes", "4"]) == 0
    printed = capsys.readouterr().out
    for name in ("training.png", "adaptation.png", "sinusoid_maml.png", "report.md",
                 "index.html"):
        assert f"wrote {run / 'report' / name}" in printed
        if name.endswith(".png"):
            _png(run / "report" / name)


def test_sinusoid_truth_matches_the_fixed_tasks() -> None:
    """The plotted ground truth is the fixed tasks' own sine: it passes through their
    support points (fixed_generator replays the fixed stream's task parameters)."""
    sampler = EpisodeSampler(Sinusoid(), 1, 5, 5, seed=7)
    episodes = sampler.fixed(3)
    amplitude, phase = Sinusoid().sample_tasks(3, sampler.fixed_generator())
    truth = Sinusoid.curve(amplitude, phase, episodes.support_x)  # [3, 5, 1]
    assert torch.allclose(truth, episodes.support_y)


def test_report_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a metafit run directory"):
        report_runs([tmp_path])
    assert main(["report", str(tmp_path / "missing")]) == 2
