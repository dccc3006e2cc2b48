"""Training callbacks: the hooks a run calls, in order, with what; the metrics file, the
TensorBoard writer and the progress bar behind them; a process killed by a callback
resumes to the uninterrupted result."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from metafit.runs.directory import RunDir, load_checkpoint
from metafit.training.callbacks import (
    Callback,
    MetricsFile,
    ProgressBar,
    TensorBoard,
    TrainerView,
    default_callbacks,
    validation_line,
)
from metafit.training.trainer import Trainer
from test_trainer import assert_same_metrics, interrupt_at, regression_recipe

SRC = str(Path(__file__).resolve().parents[1] / "src")
CRASH_TRAIN = str(Path(__file__).resolve().parent / "crash_train.py")


class Recorder(Callback):
    """Every hook call, in order; checks at each step that its checkpoint is on disk."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.steps: list[dict[str, float]] = []
        self.records: list[dict[str, Any]] = []
        self.saved_at_step_end: list[int] = []

    def on_fit_start(self, trainer: TrainerView) -> None:
        self.events.append(("start", trainer.state.iteration))
        self.run = trainer.run

    def on_log(self, record: dict[str, Any]) -> None:
        self.events.append(("log", record["iteration"], record["split"]))
        self.records.append(record)

    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        self.events.append(("step", iteration))
        self.steps.append(metrics)
        last = self.run.checkpoint("last")
        self.saved_at_step_end.append(load_checkpoint(last)["state"]["iteration"]
                                      if last.is_file() else 0)

    def on_fit_end(self, trainer: TrainerView, status: str) -> None:
        self.events.append(("end", status, trainer.state.iteration))


def test_a_callback_sees_every_hook_in_order(tmp_path: Path) -> None:
    recipe = regression_recipe("maml", iterations=6, log_every=2, val_every=3,
                               checkpoint_every=2)
    seen = Recorder()
    Trainer(recipe, tmp_path / "run", progress=False, callbacks=[seen]).fit()
    assert seen.events == [
        ("start", 0),
        ("step", 1),
        ("log", 2, "train"), ("step", 2),
        ("log", 3, "val"), ("step", 3),
        ("log", 4, "train"), ("step", 4),
        ("step", 5),
        ("log", 6, "train"), ("log", 6, "val"), ("step", 6),
        ("end", "complete", 6),
    ]
    # on_step_end comes after its iteration's checkpoint (every 2 and at the end)
    assert seen.saved_at_step_end == [0, 2, 2, 4, 4, 6]
    # every record, as the metrics file holds it
    assert seen.records == RunDir(tmp_path / "run").read_metrics()


def test_a_callback_receives_every_steps_own_metrics(tmp_path: Path) -> None:
    recipe = regression_recipe("maml", iterations=6, log_every=3, grad_clip=1.0)
    seen = Recorder()
    Trainer(recipe, tmp_path / "run", progress=False, callbacks=[seen]).fit()
    assert len(seen.steps) == 6
    for metrics in seen.steps:
        assert {"loss", "mse", "grad_norm"} <= metrics.keys()
        assert all(isinstance(v, float) for v in metrics.values())
    assert len({m["loss"] for m in seen.steps}) == 6  # each step its own
    train = [r for r in seen.records if r["split"] == "train"]
    for record, window in zip(train, (seen.steps[:3], seen.steps[3:]), strict=True):
        for key in ("loss", "mse", "grad_norm"):  # a record: the mean of its steps
            assert record[key] == pytest.approx(sum(m[key] for m in window) / 3, rel=1e-12)


def test_hooks_of_an_interrupted_then_resumed_run(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")  # 6 iterations, checkpoints every 2
    first, second = Recorder(), Recorder()
    trainer = Trainer(recipe, tmp_path / "run", progress=False, callbacks=[first])
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert first.events[0] == ("start", 0)
    assert first.events[-1] == ("end", "interrupted", 5)
    Trainer(recipe, tmp_path / "run", progress=False, callbacks=[second]).fit()
    assert second.events[0] == ("start", 4)  # resumed from last.pt
    assert [e for e in second.events if e[0] == "step"] == [("step", 5), ("step", 6)]
    assert second.events[-1] == ("end", "complete", 6)


def test_a_failing_callback_fails_the_run_and_the_others_hear_it(tmp_path: Path) -> None:
    class Broken(Callback):
        def on_log(self, record: dict[str, Any]) -> None:
            if record["split"] == "val":
                raise RuntimeError("the tracking server is down")

    seen = Recorder()
    trainer = Trainer(regression_recipe("maml"), tmp_path / "run", progress=False,
                      callbacks=[seen, Broken()])
    with pytest.raises(RuntimeError, match="tracking server"):
        trainer.fit()
    status = RunDir(tmp_path / "run").status()
    assert status["status"] == "failed" and "tracking server" in status["error"]
    assert seen.events[-1] == ("end", "failed", 3)


def test_default_callbacks_follow_the_recipe(tmp_path: Path) -> None:
    def fake(meta_trained: bool = True, **extra: Any) -> Any:
        return types.SimpleNamespace(run=RunDir(tmp_path), algo=types.SimpleNamespace(
            meta_trained=meta_trained), recipe=regression_recipe("maml", **extra))

    kinds = [type(c) for c in default_callbacks(fake(), progress=False)]
    assert kinds == [MetricsFile]
    kinds = [type(c) for c in default_callbacks(fake(tensorboard=True), progress=True)]
    assert kinds == [MetricsFile, TensorBoard, ProgressBar]
    # nothing to meta-train: no training curve, no bar
    assert [type(c) for c in default_callbacks(fake(False, tensorboard=True), True)] == [
        MetricsFile]
    first = default_callbacks(fake(), progress=False)[0]
    assert isinstance(first, MetricsFile) and first.path == RunDir(tmp_path).metrics


class FakeWriter:
    """Stands in for ``torch.utils.tensorboard.SummaryWriter``."""

    made: list[FakeWriter] = []

    def __init__(self, log_dir: str) -> None:
        self.log_dir, self.scalars, self.closed = log_dir, [], False
        FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_gets_every_float_of_every_record(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("torch.utils.tensorboard")
    module.SummaryWriter = FakeWriter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", module)
    FakeWriter.made.clear()
    recipe = regression_recipe("maml", tensorboard=True, log_every=3)
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    (writer,) = FakeWriter.made
    assert writer.log_dir == str(tmp_path / "run" / "tensorboard") and writer.closed
    expected = [(f"{r['split']}/{k}", v, r["iteration"])
                for r in RunDir(tmp_path / "run").read_metrics()
                for k, v in r.items() if isinstance(v, float)]
    assert writer.scalars == expected
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"train/loss", "train/lr", "train/seconds", "val/mse", "val/ci95"} <= tags


def test_tensorboard_without_the_package_fails_before_the_run_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    recipe = regression_recipe("maml", tensorboard=True)
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        Trainer(recipe, tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()  # nothing to block the next start


def test_validation_lines_go_above_the_bar_or_to_the_log(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    recipe = regression_recipe("maml", iterations=4, val_every=2)
    with caplog.at_level("INFO", logger="metafit.training.trainer"):
        Trainer(recipe, tmp_path / "bar", progress=True).fit()
    captured = capsys.readouterr()
    records = [r for r in RunDir(tmp_path / "bar").read_metrics() if r["split"] == "val"]
    lines = [validation_line(r["iteration"], {"mse": r["mse"], "ci95": r["ci95"]})
             for r in records]
    # on stderr with the bar: stdout stays free for --json
    assert [line for line in captured.err.splitlines() if "validation" in line] == lines
    assert "validation" not in captured.out
    assert "validation" not in caplog.text  # shown by the bar only
    caplog.clear()
    with caplog.at_level("INFO", logger="metafit.training.trainer"):
        Trainer(recipe, tmp_path / "log", progress=False).fit()
    assert "validation" not in capsys.readouterr().out
    assert caplog.text.count(": validation mse ") == 2
    assert validation_line(4, {"accuracy": 0.123456, "ci95": 0.01}) == (
        "iteration 4: validation accuracy 0.1235, ci95 0.01")


@pytest.mark.timeout(300)
def test_a_process_killed_by_a_callback_resumes_to_the_uninterrupted_result(
        tmp_path: Path) -> None:
    args = ["train", "sinusoid_maml", "iterations=6", "val_every=3", "val_episodes=4",
            "checkpoint_every=2", "log_every=1", "hidden=8", "meta_batch=3", "threads=1",
            "--no-progress"]
    env = {**os.environ, "PYTHONPATH": SRC}
    killed = subprocess.run([sys.executable, CRASH_TRAIN, "5", *args, "--out",
                             str(tmp_path / "broken")], env=env, capture_output=True,
                            text=True, timeout=240)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL: no clean-up
    broken = RunDir(tmp_path / "broken")
    assert broken.status()["status"] == "running"  # never marked finished
    assert max(r["iteration"] for r in broken.read_metrics()) == 5
    assert load_checkpoint(broken.checkpoint("last"))["state"]["iteration"] == 4
    from metafit.cli.main import main

    assert main([*args, "--out", str(tmp_path / "broken")]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    assert broken.status()["status"] == "complete"
    assert_same_metrics(RunDir(tmp_path / "full"), broken)
