"""Progress bars on long work: on stderr, off with --no-progress and when stderr is not a
terminal; the library functions draw one when asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_fixtures import image_run, support_folder
from metafit.cli.main import build_parser
from metafit.cli.options import show_progress
from metafit.deploy.adapter import Adapter, load_support


def test_verbs_with_long_work_take_no_progress_and_stay_quiet_off_a_terminal(
        monkeypatch: pytest.MonkeyPatch) -> None:
    parser = build_parser()
    argvs = [["quickstart"], ["train", "R"], ["evaluate", "RUN"], ["report", "RUN"],
             ["tune", "R"], ["compress", "M", "--out", "O"], ["export", "M"]]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    for argv in argvs:
        assert show_progress(parser.parse_args(argv)), argv
        assert not show_progress(parser.parse_args([*argv, "--no-progress"])), argv
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not show_progress(parser.parse_args(["export", "M"]))


def test_compress_episodes_and_export_draw_bars(tmp_path: Path, capsys) -> None:
    from metafit.deploy.episodes import episode_accuracies

    adapter = Adapter.from_run(image_run("maml"))
    scores = episode_accuracies(adapter, {}, 3, progress=True)
    assert len(scores["float"]) == 3
    assert "test episodes" in capsys.readouterr().err
    episode_accuracies(adapter, {}, 2, progress=False)
    assert capsys.readouterr().err == ""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from metafit.deploy.onnx_export import export_onnx

    inputs, labels = load_support(support_folder(tmp_path / "s"), "image")
    export_onnx(adapter.adapt(inputs[:4], labels[:4]), tmp_path / "onnx", progress=True)
    assert "export" in capsys.readouterr().err and (tmp_path / "onnx").is_dir()


def test_tune_draws_a_bar_over_the_trials(tmp_path: Path, capsys) -> None:
    pytest.importorskip("optuna")
    from metafit.config.recipe import load_recipe
    from metafit.tuning.study import TuneOptions, tune

    recipe = load_recipe("sinusoid_maml_tune", ["hidden=8", "meta_batch=2", "val_episodes=2",
                                                "val_every=2", "log_every=2"])
    tune(recipe, TuneOptions(out=str(tmp_path / "t"), trials=1, trial_iterations=2,
                             progress=True))
    assert "1/1" in capsys.readouterr().err
