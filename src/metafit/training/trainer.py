"""Meta-training a supervised recipe: :class:`Trainer`, and :func:`make_trainer`, which
picks it or the meta-RL trainer (:class:`~metafit.training.rl.RLTrainer`) for a recipe.

The loop itself (sessions, records, validation, checkpoints, time budget, callbacks) is
:class:`~metafit.training.loop.TrainingLoop`'s, shared by both. One loop serves every
supervised algorithm: each iteration samples a meta-batch of episodes, asks the
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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from metafit.algorithms.base import Algorithm
from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import Recipe
from metafit.distributed import DistContext, all_reduce_mean, broadcast_module, rank_seed
from metafit.episodes import Episodes
from metafit.evaluation.protocol import evaluate
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.runs.checkpoints import Resumable
from metafit.runs.directory import RunDirError
from metafit.runs.forgetting import check_previous_run, record_forgetting
from metafit.training.build import frozen_body_cache, meta_batch_shares, samplers
from metafit.training.callbacks import Callback
from metafit.training.loop import TrainingLoop, ValidationHook
from metafit.training.mlflow_logger import tracking_callbacks
from metafit.training.optim import DynamicLossScale, lr_factor, outer_optimizer, outer_step
from metafit.training.rl import RLTrainer
from metafit.training.state import TrainState

__all__ = ["Trainer", "TrainState", "ValidationHook", "make_trainer", "train", "lr_factor",
           "tracking_callbacks"]


class Trainer(TrainingLoop):
    """Meta-trains a supervised ``recipe`` into the run directory ``out``.

    Everything that can fail on bad input (data, episode sizes, algorithm options) is built
    in ``__init__``, before the run directory is created. ``dist``: this process's place in
    a distributed run (default: the initialised process group's, else a single process);
    every rank of the group constructs a ``Trainer`` and calls :meth:`fit`.
    ``callbacks`` are called after the recipe's own
    (:func:`~metafit.training.callbacks.default_callbacks`: metrics file, TensorBoard,
    progress bar when ``progress``) and :func:`tracking_callbacks` (MLflow), on rank 0
    only. The loop itself is :class:`~metafit.training.loop.TrainingLoop`'s;
    a meta-RL recipe takes :class:`~metafit.training.rl.RLTrainer` (:func:`make_trainer`).
    """

    algo: Algorithm

    def _build(self) -> None:
        recipe = self.recipe
        if recipe.is_rl:
            raise ValueError(f"dataset '{recipe.dataset}' is a meta-RL task family: train it "
                             "with metafit.training.rl.RLTrainer (make_trainer picks it)")
        if recipe.init_from and not self.run.exists():  # a new run that will warm-start
            check_previous_run(recipe.init_from)
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
        scale = self.algo.loss_scale  # precision fp16: dynamic loss scaling
        self.loss_scale = None if scale is None else DynamicLossScale(scale)
        self.higher_is_better = not recipe.is_regression

    def _train_record(self) -> dict[str, Any]:
        return {"lr": self.optimizer.param_groups[0]["lr"]}

    @contextmanager
    def _train_context(self) -> Iterator[None]:
        """The feature cache of a frozen body, around the session's iterations."""
        with frozen_body_cache(self.algo.model) as cache:
            if cache is not None:
                self._info("%s: the body is frozen; its features of each example are "
                           "computed once and reused across iterations", self.recipe.name)
            yield

    def _learner_name(self) -> str:
        return f"{self.recipe.algorithm} {self.recipe.model}"

    def _after_training(self) -> None:
        """A warm-started run (``init_from``): the previous run's test accuracy before and
        after, in ``forgetting.json`` (:mod:`metafit.runs.forgetting`; rank 0). What
        cannot be read of the previous run by now is a warning, not a failed run."""
        if not self.recipe.init_from or not self.dist.is_main:
            return
        try:
            record_forgetting(self.run.path, progress=self.progress)
        except (OSError, RunDirError) as e:
            logging.getLogger(__name__).warning(
                "%s: forgetting not measured: the previous run %s cannot be read (%s)",
                self.run.path, self.recipe.init_from, e)

    def _step(self) -> dict[str, float]:
        """One meta-training step on this rank's share of a fresh meta-batch."""
        return self._update(self._sample())

    def _sample(self) -> Episodes:
        """This rank's share of the meta-batch (all of it with one process), augmented."""
        return self.train_sampler.sample(self.shares[self.dist.rank]).to(self.recipe.device)

    def _update(self, episodes: Episodes) -> dict[str, float]:
        """One outer step on the meta-gradients of ``episodes`` (replayed as a CUDA graph
        with ``cuda_graphs``), averaged over the ranks weighted by their task counts;
        returns the averaged metrics. With ``precision`` fp16 a step whose gradients
        overflowed is skipped (the schedule waits a step) and ``loss_scale`` reported."""
        grads, metrics = (self.algo.meta_gradients(episodes) if self.graphed is None
                          else self.graphed(episodes))
        count, total = float(len(episodes)), float(sum(self.shares))
        grads, metrics = all_reduce_mean(grads, metrics, count, total, self.dist)
        if self.loss_scale is not None:  # fp16: skip an overflowed step (every rank alike)
            metrics["loss_scale"] = float(self.loss_scale.scale)
            if not self.loss_scale.finite(grads):  # no step, the schedule waits too
                return {k: float(v) for k, v in metrics.items()}
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

    def _resumable(self) -> Resumable:
        return Resumable(self.algo, self.optimizer, self.scheduler, self.train_sampler,
                         self.params, self.recipe, self.num_train_classes)


def make_trainer(recipe: Recipe, out: str | Path, progress: bool = True,
                 dist: DistContext | None = None,
                 on_validation: ValidationHook | None = None,
                 callbacks: Sequence[Callback] = ()) -> TrainingLoop:
    """The trainer of ``recipe``: :class:`Trainer`, or
    :class:`~metafit.training.rl.RLTrainer` for a meta-RL task family (arguments as for
    :class:`Trainer`)."""
    cls: type[TrainingLoop] = RLTrainer if recipe.is_rl else Trainer
    return cls(recipe, out, progress=progress, dist=dist, on_validation=on_validation,
               callbacks=callbacks)


def train(recipe: Recipe, out: str | Path, progress: bool = True,
          dist: DistContext | None = None,
          on_validation: ValidationHook | None = None,
          callbacks: Sequence[Callback] = ()) -> TrainState:
    """Meta-train ``recipe`` into ``out`` (resuming if ``out`` holds an unfinished run) with
    :func:`make_trainer`'s trainer; ``dist`` as for :class:`Trainer`;
    ``on_validation(iteration, score)`` returning True stops the run early; ``callbacks``
    are added to the recipe's own."""
    return make_trainer(recipe, out, progress=progress, dist=dist,
                        on_validation=on_validation, callbacks=callbacks).fit()
