"""What the trainer counts, and the clock of its steps.

:class:`TrainState` holds a run's counters (iteration, best validation, patience, the
running metric window, training time); it is saved in every checkpoint as a plain dict.
:class:`StepClock` measures the time spent in meta-training steps and decides, from it,
when the time budget is spent and when a timed checkpoint is due.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from metafit.config.recipe import Recipe
from metafit.distributed import DistContext, broadcast_object

__all__ = ["TrainState", "StepClock"]

T = TypeVar("T")


@dataclass
class TrainState:
    """Counters of a run, saved in every checkpoint."""

    iteration: int = 0
    best_score: float | None = None
    best_iteration: int = 0
    since_best: int = 0
    window: dict[str, float] = field(default_factory=dict)  # metric sums since last log
    window_count: int = 0
    train_seconds: float = 0.0  # wall-clock time inside meta-training steps, all sessions

    def accumulate(self, metrics: dict[str, float]) -> None:
        """Add one step's ``metrics`` to the window."""
        for k, v in metrics.items():
            self.window[k] = self.window.get(k, 0.0) + v
        self.window_count += 1

    def take_window(self) -> dict[str, float]:
        """The mean of each metric over the window, which starts again empty."""
        means = {k: v / self.window_count for k, v in self.window.items()}
        self.window, self.window_count = {}, 0
        return means

    def record_validation(self, score: float, higher_is_better: bool) -> bool:
        """Count a validation ``score`` at :attr:`iteration`; True when it is the new best.

        A non-finite score (a diverged adaptation) never counts as an improvement, and any
        finite score beats a non-finite best. ``since_best`` counts the validations since
        the best one (patience).
        """
        best = self.best_score
        if best is None or not math.isfinite(best):
            better = math.isfinite(score)
        else:
            better = score > best if higher_is_better else score < best
        if better:
            self.best_score, self.best_iteration, self.since_best = score, self.iteration, 0
        else:
            self.since_best += 1
        return better


class StepClock:
    """Wall-clock time inside meta-training steps, added to ``state.train_seconds`` (so
    it sums over resumed sessions), and the recipe's ``time_budget`` and
    ``checkpoint_minutes`` that act on it.

    In a distributed run where either is set, rank 0's time is every rank's (broadcast
    after each step), so that every rank stops or saves at the same iteration; the
    broadcast is collective: every rank times its steps.
    """

    def __init__(self, recipe: Recipe, dist: DistContext) -> None:
        self.budget, self.minutes, self.dist = recipe.time_budget, recipe.checkpoint_minutes, dist
        self.saved_at = 0.0  # train_seconds at the last save of last.pt (or the start)

    def timed(self, state: TrainState, step: Callable[[], T]) -> T:
        """``step()``, its wall-clock time added to ``state.train_seconds``."""
        t_step = time.perf_counter()
        out = step()
        state.train_seconds += time.perf_counter() - t_step
        if self.dist.enabled and (self.budget is not None or self.minutes is not None):
            state.train_seconds = broadcast_object(state.train_seconds, self.dist)
        return out

    def out_of_time(self, state: TrainState) -> bool:
        """Whether the time budget is spent."""
        return self.budget is not None and state.train_seconds >= self.budget

    def checkpoint_due(self, state: TrainState) -> bool:
        """True once ``checkpoint_minutes`` of steps have passed since :meth:`saved`."""
        return (self.minutes is not None
                and state.train_seconds - self.saved_at >= 60 * self.minutes)

    def saved(self, state: TrainState) -> None:
        """Note that ``last.pt`` was saved now (or that training starts)."""
        self.saved_at = state.train_seconds
