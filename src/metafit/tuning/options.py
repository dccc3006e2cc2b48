"""What a study is asked to do (:class:`TuneOptions`) and what it found (:class:`TuneResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SamplerName = Literal["tpe", "random", "grid"]
PrunerName = Literal["median", "hyperband", "none"]


@dataclass
class TuneOptions:
    """How to run a study; the search space itself is in the recipe."""

    out: str = "runs/tune"
    trials: int | None = None  # finished trials the study should hold (grid: its size)
    storage: str | None = None  # default: sqlite:///OUT/study.db
    study: str | None = None  # default: the recipe's name
    timeout: float | None = None  # seconds, per process: no new trial after that
    sampler: SamplerName = "tpe"
    pruner: PrunerName = "median"
    trial_iterations: int | None = None  # default: the recipe's iterations
    jobs: int = 1
    seed: int | None = None  # default: the recipe's seed
    heartbeat_interval: int = 30  # seconds between a running trial's heartbeats
    grace_period: int = 120  # a running trial silent this long is marked FAIL
    progress: bool = False  # a bar over the trials (Optuna's; the first process only)

    def __post_init__(self) -> None:
        """Counts the user gave are checked (0 is an error, never the default)."""
        from metafit.runs.trained import check_count

        check_count("trials", self.trials, default="the grid's size")
        check_count("trial_iterations", self.trial_iterations,
                    default="the recipe's iterations")
        check_count("jobs", self.jobs)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got "
                             f"{self.timeout!r}")


@dataclass
class TuneResult:
    """What a :func:`tune` call left in the study."""

    study: str
    storage: str
    direction: str
    metric: str
    finished: int
    complete: int
    pruned: int
    failed: int
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_recipe: str | None
