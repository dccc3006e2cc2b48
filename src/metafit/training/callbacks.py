"""Callbacks: what a training run reports, and to whom.

A :class:`~metafit.training.trainer.Trainer` calls each of its callbacks' hooks, in list
order, at these points of :meth:`~metafit.training.trainer.Trainer.fit`:

``on_fit_start(trainer)``
    once, when the run directory is ready (a resumed run's state already loaded, so
    ``trainer.state.iteration`` is where this session starts);
``on_log(record)``
    for every metric record, in the order of ``metrics.jsonl``: the means of the step
    metrics every ``log_every`` iterations (``"split": "train"``, with ``lr``) and each
    validation (``"split": "val"``, the score first, then ``ci95``). Every record has an
    integer ``iteration``, ``split`` and ``seconds`` (training time so far);
``on_step_end(iteration, metrics)``
    after every meta-training step, once everything of its iteration is done (its
    records logged, its validation and checkpoints saved): ``metrics`` are that step's
    own values (``loss``, ``accuracy`` or ``mse``, ``grad_norm``, ...), floats;
``on_fit_end(trainer, status)``
    once, with the status the run ends in (``complete``, ``stopped_early``,
    ``interrupted`` or ``failed``), also when training raised.

Every hook of :class:`Callback` does nothing: subclass it and override the hooks you need.
Callbacks observe; they never change what is trained (stopping a run early is
:data:`~metafit.training.trainer.ValidationHook`'s job). In a distributed run the callbacks
run on rank 0 only. What a recipe asks for is added by the trainer itself
(:func:`default_callbacks`): the metrics file, TensorBoard, the progress bar; and MLflow
(:class:`~metafit.training.mlflow_logger.MLflowLogger`, with ``mlflow: true``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from metafit.config.recipe import Recipe
from metafit.runs.directory import RunDir
from metafit.training.state import TrainState

__all__ = ["Callback", "TrainerView", "MetricsFile", "TensorBoard", "ProgressBar",
           "default_callbacks", "validation_line"]

#: Step metrics shown beside the progress bar (``return_after``: meta-RL's return after
#: adaptation on the training tasks).
SHOWN = ("loss", "accuracy", "mse", "return_after")


class TrainerView(Protocol):
    """What a hook may read of the trainer that calls it
    (:class:`~metafit.training.trainer.Trainer`, :class:`~metafit.training.rl.RLTrainer`):
    read it, never change it. ``algo`` is the learner: a supervised
    :class:`~metafit.algorithms.base.Algorithm` or a meta-RL :class:`~metafit.rl.MAMLRL`;
    both say whether they are ``meta_trained``."""

    @property
    def recipe(self) -> Recipe: ...

    @property
    def run(self) -> RunDir: ...

    @property
    def state(self) -> TrainState: ...

    @property
    def algo(self) -> nn.Module: ...


class Callback:
    """The hooks of a training run (module docstring); each does nothing here."""

    def on_fit_start(self, trainer: TrainerView) -> None:
        """The run starts (or resumes) at ``trainer.state.iteration``."""

    def on_log(self, record: dict[str, Any]) -> None:
        """One record of ``metrics.jsonl`` (JSON-serialisable values)."""

    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        """Meta-training step ``iteration`` (counted from 1) is done."""

    def on_fit_end(self, trainer: TrainerView, status: str) -> None:
        """The run ends with ``status``."""


class MetricsFile(Callback):
    """Appends each record as one line of JSON to ``path`` (the run's ``metrics.jsonl``;
    a resumed run's records after its checkpoint were cut before it restarts)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoard(Callback):
    """Each float of each record as a TensorBoard scalar ``{split}/{key}`` at its
    iteration, in ``log_dir`` (the run's ``tensorboard/``; needs the ``tensorboard``
    package, checked when the callback is built: a recipe asking for TensorBoard without
    it fails before its run directory is created).

    Raises:
        ValueError: tensorboard is not installed (the ``track`` extra).
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError("tensorboard=true needs the tensorboard package "
                             "(pip install 'metafit[track]')") from e
        self._writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self.writer: Any = None

    def on_fit_start(self, trainer: TrainerView) -> None:
        self.writer = self._writer_class(str(self.log_dir))

    def on_log(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if isinstance(value, float):
                self.writer.add_scalar(f"{record['split']}/{key}", value, record["iteration"])

    def on_fit_end(self, trainer: TrainerView, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ProgressBar(Callback):
    """A tqdm bar over the run's iterations, the latest logged loss and score beside it
    and a line above it for each validation (:func:`validation_line`)."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_fit_start(self, trainer: TrainerView) -> None:
        from tqdm.auto import tqdm

        r = trainer.recipe
        self.bar = tqdm(total=r.iterations, initial=trainer.state.iteration, desc=r.name,
                        unit="it", dynamic_ncols=True)

    def on_log(self, record: dict[str, Any]) -> None:
        if self.bar is None:
            return
        if record["split"] == "train":
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k in SHOWN})
        else:
            scores = {k: v for k, v in record.items()
                      if k not in ("iteration", "split", "seconds")}
            # stderr like the bar itself: stdout is one JSON line under --json
            self.bar.write(validation_line(record["iteration"], scores), file=sys.stderr)

    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_fit_end(self, trainer: TrainerView, status: str) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def validation_line(iteration: int, scores: dict[str, float]) -> str:
    """``iteration 20: validation accuracy 0.5, ci95 0.05`` (4 significant digits)."""
    return f"iteration {iteration}: validation " + ", ".join(
        f"{k} {v:.4g}" for k, v in scores.items())


def default_callbacks(trainer: TrainerView, progress: bool) -> list[Callback]:
    """What ``trainer``'s recipe implies: ``metrics.jsonl`` always; for a run that
    meta-trains (one that does not has no training curve), TensorBoard with
    ``tensorboard: true`` and a progress bar with ``progress``."""
    callbacks: list[Callback] = [MetricsFile(trainer.run.metrics)]
    curve = bool(trainer.algo.meta_trained)
    if curve and trainer.recipe.tensorboard:
        callbacks.append(TensorBoard(trainer.run.path / "tensorboard"))
    if curve and progress:
        callbacks.append(ProgressBar())
    return callbacks
