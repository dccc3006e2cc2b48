"""The meta-training loop.

One loop serves every algorithm: each iteration samples a meta-batch of episodes, asks the
algorithm for its meta-gradients (``{name: tensor}``), clips them by global norm, and lets
any torch optimizer step on them (:mod:`metafit.training.optim`). Every ``val_every``
iterations the algorithm is scored on fixed validation episodes; the best score is kept as
``checkpoints/best.pt`` and ``patience`` validations without improvement stop the run
early. ``checkpoints/last.pt`` holds everything needed to resume exactly
(:mod:`metafit.runs.checkpoints`), so a resumed deterministic run logs the same metrics as
an uninterrupted one. What the run reports goes through callbacks
(:mod:`metafit.training.callbacks`): ``metrics.jsonl``, TensorBoard, the progress bar,
MLflow (:mod:`metafit.training.mlflow_logger`) and any the caller adds.

Under ``torchrun`` (:mod:`metafit.distributed`, ``docs/distributed.md``) each rank samples
its share of the meta-batch from its own seeded stream, the meta-gradients are averaged
across ranks before the one outer step every rank takes, validation episodes are split
across ranks and their scores gathered, and only rank 0 writes files, prints or runs
callbacks. A checkpoint then holds every rank's sampler and torch random state, and may
only be resumed with the same number of processes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import torch

from metafit.algorithms.base import Algorithm
from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import Recipe
from metafit.distributed import (
    DistContext,
    all_reduce_mean,
    broadcast_module,
    current_context,
    rank_seed,
    run_on_main,
)
from metafit.episodes import Episodes
from metafit.evaluation.protocol import evaluate
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.models.base import count_parameters
from metafit.runs.checkpoints import Resumable
from metafit.runs.directory import RunDir, restore_state
from metafit.runs.session import TrainingSession
from metafit.training.build import (
    frozen_body_cache,
    meta_batch_shares,
    samplers,
    torch_settings,
)
from metafit.training.callbacks import Callback, default_callbacks, validation_line
from metafit.training.mlflow_logger import tracking_callbacks
from metafit.training.optim import lr_factor, outer_optimizer, outer_step
from metafit.training.state import StepClock, TrainState

__all__ = ["Trainer", "TrainState", "ValidationHook", "train", "lr_factor",
           "tracking_callbacks"]

log = logging.getLogger(__name__)

#: Called after each validation with (iteration, score); returning True stops the run
#: (status ``stopped_early``, reason ``stopped_by_hook``), e.g. a tuning pruner. In a
#: distributed run rank 0's answer is the one every rank follows.
ValidationHook = Callable[[int, float], bool]


class Trainer:
    """Meta-trains ``recipe`` into the run directory ``out``.

    Everything that can fail on bad input (data, episode sizes, algorithm options) is built
    in ``__init__``, before the run directory is created. ``dist``: this process's place in
    a distributed run (default: the initialised process group's, else a single process);
    every rank of the group constructs a ``Trainer`` and calls :meth:`fit`.
    ``callbacks`` are called after the recipe's own (:func:`default_callbacks`: metrics
    file, TensorBoard, progress bar when ``progress``) and :func:`tracking_callbacks`
    (MLflow), on rank 0 only.
    """

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True,
                 dist: DistContext | None = None,
                 on_validation: ValidationHook | None = None,
                 callbacks: Sequence[Callback] = ()) -> None:
        self.dist = current_context() if dist is None else dist
        self.recipe, self.run = recipe, RunDir(out)
        self.progress = progress and self.dist.is_main
        self.on_validation = on_validation
        torch_settings(recipe)
        self.shares = meta_batch_shares(recipe, self.dist)
        self.train_sampler, self.val_sampler, self.num_train_classes = samplers(
            recipe, self.dist.rank)
        self.algo = cast(Algorithm, build_algorithm(recipe, self.num_train_classes)
                         .to(recipe.device))
        broadcast_module(self.algo, self.dist)  # identical meta-parameters by construction
        if self.dist.rank > 0:  # rank 0 keeps the single-process stream
            torch.manual_seed(rank_seed(recipe.seed, self.dist.rank))
        self.params = [p for p in self.algo.parameters() if p.requires_grad]
        # cuda_graphs: captured once and replayed; parameters keep their storage
        self.graphed = GraphedMetaGradients(self.algo) if recipe.cuda_graphs else None
        if not self.params and self.algo.meta_trained:
            raise ValueError(f"algorithm '{recipe.algorithm}' has no trainable parameters "
                             "with this recipe (adapt scope, frozen layers)")
        self.optimizer, self.scheduler = outer_optimizer(recipe, self.params)
        self.state = TrainState()
        self.higher_is_better = not recipe.is_regression
        self.clock = StepClock(recipe, self.dist)
        self.callbacks = ([*default_callbacks(self, self.progress),
                           *tracking_callbacks(recipe), *callbacks]
                          if self.dist.is_main else [])
        self.session = TrainingSession(self.run, self.dist)

    def fit(self) -> TrainState:
        """Train to ``iterations`` (or early stop); returns the final counters.

        An exception or Ctrl-C leaves ``status.json`` at ``failed`` / ``interrupted`` (never
        ``complete``); training again into the same directory resumes from ``last.pt``.

        Raises:
            RunLockedError: another process is training into the directory.
        """
        try:
            self._prepare_dir()
            try:
                for callback in self.callbacks:
                    callback.on_fit_start(self)
                status, info = self._train() if self.algo.meta_trained else self._no_training()
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
        with frozen_body_cache(self.algo.model) as cache:
            if cache is not None:
                self._info("%s: the body is frozen; its features of each example are "
                           "computed once and reused across iterations", r.name)
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
                       "lr": self.optimizer.param_groups[0]["lr"],
                       "seconds": round(st.train_seconds, 3)})
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

    def _step(self) -> dict[str, float]:
        """One meta-training step on this rank's share of a fresh meta-batch."""
        return self._update(self._sample())

    def _sample(self) -> Episodes:
        """This rank's share of the meta-batch (all of it with one process), augmented."""
        return self.train_sampler.sample(self.shares[self.dist.rank]).to(self.recipe.device)

    def _update(self, episodes: Episodes) -> dict[str, float]:
        """One outer step on the meta-gradients of ``episodes`` (replayed as a CUDA graph
        with ``cuda_graphs``), averaged over the ranks weighted by their task counts;
        returns the averaged metrics."""
        grads, metrics = (self.algo.meta_gradients(episodes) if self.graphed is None
                          else self.graphed(episodes))
        count, total = float(len(episodes)), float(sum(self.shares))
        grads, metrics = all_reduce_mean(grads, metrics, count, total, self.dist)
        norm = outer_step(self.algo, grads, self.params, self.optimizer, self.scheduler,
                          self.recipe.grad_clip)
        if norm is not None:
            metrics["grad_norm"] = norm
        return {k: float(v) for k, v in metrics.items()}

    def validate(self) -> dict[str, Any]:
        """Score on the fixed validation episodes: accuracy or MSE, with 95% CI (split
        across the ranks of a distributed run; every rank gets the full result)."""
        result = evaluate(self.algo, self.val_sampler, episodes=self.recipe.val_episodes,
                          dist=self.dist)
        return {result.metric: result.mean, "ci95": result.ci95}

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
        """An algorithm with nothing to meta-train: validate once and save."""
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
            restore_state(self.algo, start.checkpoint, start.source)
            self._info("warm start from %s", start.source)
        self.session.begin(self.recipe, self.state.iteration)
        trainable, total = count_parameters(self.algo)
        self._info("%s: %s %s, %s of %s parameters trainable", self.recipe.name,
                   self.recipe.algorithm, self.recipe.model, f"{trainable:,}", f"{total:,}")

    def _resumable(self) -> Resumable:
        return Resumable(self.algo, self.optimizer, self.scheduler, self.train_sampler,
                         self.params, self.recipe, self.num_train_classes)

    def _save(self, which: str) -> None:
        """Write ``checkpoints/{which}.pt`` (collective: every rank calls it)."""
        self.session.save(which, self._resumable(), asdict(self.state))

    def _log(self, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(record)

    def _info(self, message: str, *args: Any) -> None:
        """Log ``message`` at INFO on rank 0 (which reports for every rank)."""
        if self.dist.is_main:
            log.info(message, *args)

    def _finish(self, status: str, **info: Any) -> None:
        """Record the final ``status`` in ``status.json`` and tell the callbacks."""
        self.session.set_status(status, **info)
        for callback in self.callbacks:
            callback.on_fit_end(self, status)


def train(recipe: Recipe, out: str | Path, progress: bool = True,
          dist: DistContext | None = None,
          on_validation: ValidationHook | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainState:
    """Meta-train ``recipe`` into ``out`` (resuming if ``out`` holds an unfinished run);
    ``dist`` as for :class:`Trainer`; ``on_validation(iteration, score)`` returning True
    stops the run early; ``callbacks`` are added to the recipe's own."""
    return Trainer(recipe, out, progress=progress, dist=dist, on_validation=on_validation,
                   callbacks=callbacks).fit()
