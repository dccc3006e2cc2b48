"""The meta-training loop every trainer shares, whatever one step of it does.

:class:`TrainingLoop` runs a session with the run directory
(:class:`~metafit.runs.session.TrainingSession`: lock, ``config.yaml``, ``status.json``,
resume from ``last.pt``) and, each iteration, one step, the training record every
``log_every`` iterations, a validation every ``val_every`` (the best score kept as
``checkpoints/best.pt``, ``patience`` and the :data:`ValidationHook` able to stop the
run), ``checkpoints/last.pt`` every ``checkpoint_every`` iterations or
``checkpoint_minutes``, the ``time_budget``, and the callbacks
(:mod:`metafit.training.callbacks`: ``metrics.jsonl``, TensorBoard, the progress bar,
MLflow, the caller's own).

What one iteration *does* is a subclass's: it builds its learner in :meth:`_build` and
says how to take a step (:meth:`_step`), validate (:meth:`validate`) and what a checkpoint
captures (:meth:`_resumable`). :class:`~metafit.training.trainer.Trainer` steps a
supervised algorithm with a torch optimizer on its meta-gradients (also under
``torchrun``); :class:`~metafit.training.rl.RLTrainer` takes MAML-TRPO steps on sampled
trajectories. Both write the same run directory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from metafit.config.schema import Recipe
from metafit.distributed import DistContext, current_context, run_on_main
from metafit.models.base import count_parameters
from metafit.runs.checkpoints import Resumable, restore_warm_start
from metafit.runs.directory import RunDir
from metafit.runs.session import TrainingSession
from metafit.training.build import torch_settings
from metafit.training.callbacks import Callback, default_callbacks, validation_line
from metafit.training.mlflow_logger import tracking_callbacks
from metafit.training.state import StepClock, TrainState

__all__ = ["TrainingLoop", "ValidationHook"]

#: Called after each validation with (iteration, score); returning True stops the run
#: (status ``stopped_early``, reason ``stopped_by_hook``), e.g. a tuning pruner. In a
#: distributed run rank 0's answer is the one every rank follows.
ValidationHook = Callable[[int, float], bool]


class TrainingLoop:
    """Meta-trains ``recipe`` into the run directory ``out`` (module docstring).

    Everything that can fail on bad input is built in ``__init__`` (:meth:`_build`),
    before the run directory is created. ``dist``: this process's place in a distributed
    run (default: the initialised process group's, else a single process).
    ``callbacks`` are called after the recipe's own (:func:`default_callbacks` and
    :func:`tracking_callbacks`), on rank 0 only.

    A subclass sets ``algo`` (the module whose ``state_dict`` is the learner, with a
    ``meta_trained`` flag: False makes :meth:`fit` validate once and save) in
    :meth:`_build` and implements :meth:`_step`, :meth:`validate` and :meth:`_resumable`.
    """

    algo: nn.Module
    #: Whether the best validation score is the highest (accuracy, return) or the lowest.
    higher_is_better: bool = True

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True,
                 dist: DistContext | None = None,
                 on_validation: ValidationHook | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.dist = current_context() if dist is None else dist
        self.recipe, self.run = recipe, RunDir(out)
        self.progress = progress and self.dist.is_main
        self.on_validation = on_validation
        torch_settings(recipe)
        self._build()
        self.state = TrainState()
        self.clock = StepClock(recipe, self.dist)
        self.callbacks = ([*default_callbacks(self, self.progress),
                           *tracking_callbacks(recipe), *callbacks]
                          if self.dist.is_main else [])
        self.session = TrainingSession(self.run, self.dist)

    # -- what a subclass provides ------------------------------------------------------
    def _build(self) -> None:
        """Build the learner (``self.algo``) and what its steps need from the recipe."""
        raise NotImplementedError

    def _step(self) -> dict[str, float]:
        """One meta-training step; its metrics (floats)."""
        raise NotImplementedError

    def validate(self) -> dict[str, Any]:
        """The validation scores, the one compared across validations first, then
        ``ci95``."""
        raise NotImplementedError

    def _resumable(self) -> Resumable:
        """What a checkpoint captures and a resume restores."""
        raise NotImplementedError

    def _train_record(self) -> dict[str, Any]:
        """Values added to every training record besides the step metrics' means."""
        return {}

    def _train_context(self) -> AbstractContextManager[Any]:
        """A context held around the iterations of a session."""
        return nullcontext()

    def _learner_name(self) -> str:
        """What the start-of-run line calls the learner (``maml conv4``)."""
        return self.recipe.algorithm

    def _after_training(self) -> None:
        """Work on the finished checkpoints before the final status is written (every
        rank calls it; the supervised trainer measures a warm start's forgetting)."""

    # -- the loop ------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to ``iterations`` (or early stop); returns the final counters.

        An exception or Ctrl-C leaves ``status.json`` at ``failed`` / ``interrupted`` (never
        ``complete``); training again into the same directory resumes from ``last.pt`` (or
        ``best.pt`` when no ``last.pt`` was written yet).

        Raises:
            RunLockedError: another process is training into the directory.
        """
        try:
            self._prepare_dir()
            try:
                for callback in self.callbacks:
                    callback.on_fit_start(self)
                status, info = (self._train() if self.algo.meta_trained
                                else self._no_training())
                self._after_training()
            except KeyboardInterrupt:
                self._finish("interrupted", iteration=self.state.iteration)
                raise
            except Exception as e:
                self._finish("failed", iteration=self.state.iteration, error=repr(e))
                raise
            self._finish(status, **info)
            return self.state
        finally:
            self.session.release()

    def _train(self) -> tuple[str, dict[str, Any]]:
        """Meta-train to ``iterations``: the final status and what ``status.json`` says."""
        r, st = self.recipe, self.state
        t0 = time.perf_counter()
        self.clock.saved(st)
        stop = "time_budget" if self.clock.out_of_time(st) else ""  # resumed, no time left
        self.algo.train()
        with self._train_context():
            while st.iteration < r.iterations and not stop:
                stop = self._iteration()
        return ("stopped_early" if stop else "complete"), dict(
            iteration=st.iteration, best_iteration=st.best_iteration, best_score=st.best_score,
            reason=stop or None, train_seconds=round(st.train_seconds, 2),
            seconds_this_session=round(time.perf_counter() - t0, 2))

    def _iteration(self) -> str:
        """One iteration: step, log, validate, save; why to stop now (``""``: go on)."""
        r, st = self.recipe, self.state
        metrics = self.clock.timed(st, self._step)
        st.iteration += 1
        st.accumulate(metrics)
        out_of_time = self.clock.out_of_time(st)
        last = st.iteration == r.iterations or out_of_time
        if st.iteration % r.log_every == 0 or last:
            self._log({**st.take_window(), "iteration": st.iteration, "split": "train",
                       **self._train_record(), "seconds": round(st.train_seconds, 3)})
        stop = self._validation() if st.iteration % r.val_every == 0 or last else ""
        if (st.iteration % r.checkpoint_every == 0 or stop or last
                or self.clock.checkpoint_due(st)):
            self._save("last")
            self.clock.saved(st)
        for callback in self.callbacks:
            callback.on_step_end(st.iteration, metrics)
        if out_of_time and not stop:
            self._info("%s: time budget of %g s reached at iteration %d", r.name,
                       r.time_budget, st.iteration)
            stop = "time_budget"
        return stop

    def _validation(self) -> str:
        """Validate, log, keep the best; why to stop (``patience``, ``stopped_by_hook``)."""
        r, st = self.recipe, self.state
        val = self.validate()
        self._log({"iteration": st.iteration, "split": "val",
                   "seconds": round(st.train_seconds, 3), **val})
        score = next(iter(val.values()))
        if st.record_validation(score, self.higher_is_better):
            self._save("best")
        stop = "patience" if r.patience and st.since_best >= r.patience else ""
        hook = self.on_validation
        if not stop and hook and run_on_main(lambda: hook(st.iteration, score), self.dist):
            stop = "stopped_by_hook"  # rank 0's answer, followed by every rank
        if not self.progress:  # else the progress bar shows it
            self._info("%s: %s", r.name, validation_line(st.iteration, val))
        return stop

    def _no_training(self) -> tuple[str, dict[str, Any]]:
        """A learner with nothing to meta-train: validate once and save."""
        st = self.state
        val = self.validate()
        self._log({"iteration": 0, "split": "val", "seconds": 0.0, **val})
        st.best_score, st.best_iteration = next(iter(val.values())), 0
        self._save("best")
        self._save("last")
        self._info("%s: %s is not meta-trained; validation %s", self.recipe.name,
                   self.recipe.algorithm, ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return "complete", dict(iteration=0, best_iteration=0, best_score=st.best_score,
                                reason="not meta-trained", train_seconds=0.0)

    # -- the run directory ---------------------------------------------------------------
    def _prepare_dir(self) -> None:
        """Create or resume the run directory (:class:`~metafit.runs.session.TrainingSession`)."""
        start = self.session.open(self.recipe)
        if start.kind == "resume":
            self.state = TrainState(**self.session.resume(self._resumable(), start))
            self._info("resumed %s at iteration %d", self.run.path, self.state.iteration)
        elif start.kind == "warm" and start.checkpoint is not None:
            scope = restore_warm_start(self.algo, start.checkpoint, start.source,
                                       self.recipe.algorithm)
            self._info("warm start from %s%s", start.source, "" if scope == "all" else
                       " (the model's body: a run of another algorithm)")
        self.session.begin(self.recipe, self.state.iteration)
        if start.kind == "warm" and self.algo.meta_trained:
            # the starting point competes for best.pt: re-meta-training on new tasks can
            # only lower the run's own validation score below where it started if the
            # warm start is never scored (validation episodes are fixed: no RNG drawn)
            self._validation()
        trainable, total = count_parameters(self.algo)
        self._info("%s: %s, %s of %s parameters trainable", self.recipe.name,
                   self._learner_name(), f"{trainable:,}", f"{total:,}")

    def _save(self, which: str) -> None:
        """Write ``checkpoints/{which}.pt`` (collective: every rank calls it)."""
        self.session.save(which, self._resumable(), asdict(self.state))

    def _log(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(record)

    def _info(self, message: str, *args: Any) -> None:
        """Log ``message`` at INFO on rank 0 (which reports for every rank), with the
        logger of the trainer's own module."""
        if self.dist.is_main:
            logging.getLogger(type(self).__module__).info(message, *args)

    def _finish(self, status: str, **info: Any) -> None:
        """Record the final ``status`` in ``status.json`` and tell the callbacks."""
        self.session.set_status(status, **info)
        for callback in self.callbacks:
            callback.on_fit_end(self, status)
