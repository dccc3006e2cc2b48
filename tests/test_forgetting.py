"""The forgetting figure of a warm-started run (``init_from``): the previous run's test
accuracy before and after, in ``forgetting.json`` and ``metafit report``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from metafit.cli.main import main
from metafit.evaluation.protocol import evaluate
from metafit.runs.directory import RunDirError
from metafit.runs.forgetting import FORGETTING_FILE, measure_forgetting, read_forgetting
from metafit.runs.report import report_runs
from metafit.runs.trained import evaluate_run, load_trained, split_sampler
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder


def flipped_folder(root: Path) -> Path:
    """:func:`image_folder`'s classes mirrored left-right: other tasks, same shapes."""
    image_folder(root)
    for path in root.glob("*/*.png"):
        with Image.open(path) as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    return root


def warm_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A protonet run on one image folder, then one warm-started from it on another."""
    old, new = tmp_path / "old", tmp_path / "new"
    Trainer(classification_recipe(image_folder(tmp_path / "a"), "protonet"), old,
            progress=False).fit()
    Trainer(classification_recipe(flipped_folder(tmp_path / "b"), "protonet",
                                  init_from=str(old), seed=5), new, progress=False).fit()
    return old, new


def test_warm_started_run_reports_before_and_after(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    old, new = warm_pair(tmp_path)
    figure = json.loads((new / FORGETTING_FILE).read_text())
    assert figure["status"] == "measured"
    assert figure["previous_run"] == str(old.resolve())
    assert figure["episodes"] == 6 and figure["ways"] == 2  # the old recipe's protocol
    # before: the warm-start checkpoint itself, scored as `metafit evaluate OLD` does
    direct = evaluate_run(old, batch_norm="support")
    assert figure["before"]["mean"] == pytest.approx(direct.mean, abs=1e-12)
    assert figure["before"]["ci95"] == pytest.approx(direct.ci95, abs=1e-12)
    # after: the new run's best on the old run's test episodes, not on its own
    old_recipe, _ = load_trained(old)
    _, algo = load_trained(new)
    after = evaluate(algo, split_sampler(old_recipe, "test"), episodes=6,
                     batch_norm="support")
    assert figure["after"]["mean"] == pytest.approx(after.mean, abs=1e-12)
    assert figure["delta"]["mean"] == pytest.approx(after.mean - direct.mean, abs=1e-12)
    # the weights did move, so the two figures come from different models
    _, first = load_trained(old)
    assert any(not torch.equal(p, q) for p, q in
               zip(first.state_dict().values(), algo.state_dict().values(), strict=True))
    assert read_forgetting(new) == figure

    report_runs([new], episodes=3)
    text = (new / "report" / "report.md").read_text()
    assert "## Forgetting (previous run's test tasks)" in text
    assert f"{100 * figure['before']['mean']:.2f} % +- " in text
    assert f"{100 * figure['delta']['mean']:+.2f} % +- " in text
    assert main(["evaluate", str(new), "--episodes", "2"]) == 0  # shows the file's figure
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.startswith("forgetting (previous run's test tasks, from forgetting.json): "
                           f"accuracy before {100 * figure['before']['mean']:.2f} % +- ")


def test_missing_previous_data_warns_and_skips(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    old = tmp_path / "old"
    data = image_folder(tmp_path / "a")
    Trainer(classification_recipe(data, "protonet"), old, progress=False).fit()
    shutil.rmtree(data)
    new = tmp_path / "new"
    with caplog.at_level(logging.WARNING):
        Trainer(classification_recipe(flipped_folder(tmp_path / "b"), "protonet",
                                      init_from=str(old)), new, progress=False).fit()
    assert json.loads((new / "status.json").read_text())["status"] == "complete"
    figure = read_forgetting(new)
    assert figure is not None and figure["status"] == "skipped"
    assert str(data) in figure["reason"]
    assert "forgetting not measured" in caplog.text
    report_runs([new], episodes=2)
    assert "not measured: the previous run's data" in (new / "report" / "report.md").read_text()


def test_bad_previous_runs_and_files_are_refused(tmp_path: Path) -> None:
    data = image_folder(tmp_path / "a")
    out = tmp_path / "new"
    with pytest.raises(FileNotFoundError, match="init_from: .* is not a directory"):
        Trainer(classification_recipe(data, "protonet", init_from=str(tmp_path / "none")),
                out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a metafit run directory"):
        Trainer(classification_recipe(data, "protonet", init_from=str(tmp_path / "empty")),
                out, progress=False)
    assert not out.exists()  # refused before the run directory is made
    plain = tmp_path / "plain"
    Trainer(classification_recipe(data, "protonet"), plain, progress=False).fit()
    with pytest.raises(ValueError, match="was not warm-started"):
        measure_forgetting(plain)
    (plain / FORGETTING_FILE).write_text(json.dumps({"status": "measured", "before": 1}))
    with pytest.raises(RunDirError, match="'before' must hold a number"):
        read_forgetting(plain)
