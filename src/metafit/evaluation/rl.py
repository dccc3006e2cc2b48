"""The evaluation protocol of meta-RL: fixed held-out tasks, the average return after 0..k
adaptation steps, mean +- 95% confidence interval over tasks.

``evaluate_rl(algo, sampler, episodes=40, steps=3, trajectories=20)`` takes the sampler's
``fixed(episodes)`` tasks and, in each, samples ``trajectories`` trajectories with the
meta-learned policy, takes one policy-gradient step on them, samples again with the
adapted policy, and so on for ``steps`` steps (as the MAML paper's Figure 4 evaluates 2D
navigation); the score of a task after k steps is the mean undiscounted return of the
trajectories sampled with the parameters after k steps. Every evaluation of one sampler
draws its rollouts from the same fresh stream
(:meth:`~metafit.rl.TaskSampler.fixed_rollouts`), so two runs or two checkpoints are
compared on the same tasks and the same noise. As for supervised episodes
(:mod:`metafit.evaluation.protocol`), the interval is ``1.96 * std / sqrt(n)`` over
tasks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from metafit.evaluation.protocol import Scores, ci95
from metafit.rl.env import index_tasks
from metafit.rl.maml import MAMLRL
from metafit.rl.tasks import TaskSampler

__all__ = ["RLEvalResult", "adaptation_curves", "evaluate_rl"]


@dataclass
class RLEvalResult(Scores):
    """:class:`~metafit.evaluation.protocol.Scores` of the return over ``episodes`` fixed
    tasks after ``steps`` adaptation steps.

    ``per_episode [episodes]``: each task's mean return after ``steps`` steps;
    ``curve [steps + 1]`` / ``curve_ci95``: the mean (and CI) after 0..steps steps
    (``curve_steps``). ``trajectories``: sampled per task and step; ``horizon``: steps
    per trajectory; ``family``: the recipe's dataset.
    """

    curve_steps: list[int]
    trajectories: int
    horizon: int
    family: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``"return -12.31 +- 1.05 (40 tasks x 20 trajectories, 3 steps)"``."""
        return (f"{self.metric} {self.mean:.2f} +- {self.ci95:.2f} ({self.episodes} tasks x "
                f"{self.trajectories} trajectories, {self.steps} steps)")


def evaluate_rl(algo: MAMLRL, sampler: TaskSampler, episodes: int, steps: int,
                trajectories: int, batch: int = 50, family: str = "") -> RLEvalResult:
    """Evaluate ``algo`` on ``sampler.fixed(episodes)`` (module docstring), ``batch``
    tasks at a time (to bound memory); ``family`` names the task family in the result.

    Raises:
        ValueError: ``episodes`` or ``trajectories`` not positive, ``steps`` negative.
    """
    curve = adaptation_curves(algo, sampler, episodes, steps, trajectories, batch)
    return _result(curve, steps, trajectories, sampler.family.horizon, family)


def adaptation_curves(algo: MAMLRL, sampler: TaskSampler, episodes: int, steps: int,
                      trajectories: int, batch: int = 50) -> Tensor:
    """Each fixed task's mean return after 0..``steps`` steps: ``[episodes, steps + 1]``
    (float64), what :func:`evaluate_rl` summarises; paired comparisons of two learners on
    the same tasks use it directly.

    Raises:
        ValueError: ``episodes`` or ``trajectories`` not positive, ``steps`` negative.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if trajectories < 1:
        raise ValueError(f"trajectories must be positive, got {trajectories}")
    tasks = sampler.fixed(episodes)
    generator = sampler.fixed_rollouts()
    curves = []
    for start in range(0, episodes, batch):
        chunk = index_tasks(tasks, slice(start, min(start + batch, episodes)))
        episode = algo.sample(sampler.family.env(chunk), trajectories, generator, steps=steps)
        curves.append(episode.returns().double())  # [t, steps + 1]
    return torch.cat(curves)  # [episodes, steps + 1]


def _result(curve: Tensor, steps: int, trajectories: int, horizon: int, family: str
            ) -> RLEvalResult:
    """An :class:`RLEvalResult` from the returns ``curve [episodes, steps + 1]``."""
    final = curve[:, -1]  # [episodes]
    return RLEvalResult(
        metric="return", mean=float(final.mean()), ci95=ci95(final),
        episodes=int(curve.shape[0]), steps=steps, per_episode=final.tolist(),
        curve=curve.mean(0).tolist(), curve_ci95=[ci95(c) for c in curve.T],
        curve_steps=list(range(steps + 1)), trajectories=trajectories, horizon=horizon,
        family=family)
