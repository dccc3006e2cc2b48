"""``trajectories_<run>.png``: a 2D-navigation run's trajectories before adaptation and after
one and two policy-gradient steps, towards a few fixed held-out goals (Finn et al. 2017,
"Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks", Figure 4, left).

The trajectories are those of the report's evaluation protocol
(:func:`metafit.evaluation.rl.evaluate_rl`): the first ``tasks`` fixed tasks of the split's
sampler, ``trajectories`` rollouts per task and step from the sampler's fresh evaluation
stream (:meth:`~metafit.rl.TaskSampler.fixed_rollouts`), each step's rollouts sampled with
the parameters it starts from and the next step taken on them
(:meth:`~metafit.rl.MAMLRL.sample`). So the figure is deterministic for a run, checkpoint
and split, and :func:`nav2d_trajectories` returns the data it is drawn from.

Shapes: N tasks, S+1 policies (0..S steps), B trajectories, H horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit.rl.maml import MAMLRL
from metafit.rl.nav2d import Nav2d
from metafit.rl.tasks import TaskSampler
from metafit.runs.figures import finish, pyplot, save_figure

__all__ = ["NavTrajectories", "nav2d_trajectories", "nav2d_figure", "plot_nav2d"]


@dataclass(frozen=True)
class NavTrajectories:
    """What the figure draws.

    goals ``[N, 2]``; positions ``[S+1, N, B, H+1, 2]``: the origin, then the position
    after each step (row k sampled with the parameters after k adaptation steps);
    lengths ``[S+1, N, B]``: steps taken before the episode ended (the points of a path
    are ``positions[k, i, b, :lengths[k, i, b] + 1]``); returns ``[S+1, N]``: the mean
    undiscounted return of each task's B trajectories (the evaluation's score).
    """

    goals: Tensor
    positions: Tensor
    lengths: Tensor
    returns: Tensor

    @property
    def steps(self) -> int:
        """S, the adaptation steps drawn after the pre-update policy."""
        return int(self.positions.shape[0]) - 1

    def path(self, step: int, task: int, trajectory: int) -> Tensor:
        """The points ``[L+1, 2]`` of one trajectory, from the origin to where it ended."""
        length = int(self.lengths[step, task, trajectory])
        return self.positions[step, task, trajectory, :length + 1]


def nav2d_trajectories(algo: MAMLRL, sampler: TaskSampler, tasks: int = 3, steps: int = 2,
                       trajectories: int = 20) -> NavTrajectories:
    """Sample the trajectories of :class:`NavTrajectories` (module docstring): the first
    ``tasks`` fixed tasks of ``sampler`` (a :class:`~metafit.rl.Nav2d` family), adapted
    ``steps`` times with ``trajectories`` rollouts per step at ``algo``'s rates
    (``inner_lr``, then ``inner_lr * inner_lr_decay``).

    Raises:
        ValueError: the sampler's family is not 2D navigation, or a count is not positive.
    """
    family = sampler.family
    if not isinstance(family, Nav2d):
        raise ValueError("trajectory plots need the 2D navigation family (rl_nav2d), got "
                         f"{type(family).__name__}")
    if tasks < 1 or steps < 0 or trajectories < 1:
        raise ValueError(f"need tasks >= 1, steps >= 0 and trajectories >= 1, got {tasks}, "
                         f"{steps}, {trajectories}")
    goals = sampler.fixed(tasks)
    with torch.no_grad():
        episode = algo.sample(family.env(goals), trajectories, sampler.fixed_rollouts(),
                              steps=steps)
    batches = (*episode.supports, episode.query)
    positions, lengths = [], []
    for batch in batches:
        last = batch.observations[-1] + batch.actions[-1].clamp(-family.max_action,
                                                               family.max_action)
        positions.append(torch.cat([batch.observations, last.unsqueeze(0)]))  # [H+1, N, B, 2]
        lengths.append(batch.masks.sum(dim=0).long())  # [N, B]
    return NavTrajectories(goals=goals["goal"],
                           positions=torch.stack(positions).permute(0, 2, 3, 1, 4),
                           lengths=torch.stack(lengths), returns=episode.returns().T)


def nav2d_figure(data: NavTrajectories, shown: int = 1, title: str = "",
                 banner: Sequence[str] = (), limit: float = 0.6) -> Any:
    """One panel per task: the first ``shown`` trajectories of each policy (pre-update
    dashed, then after 1, 2, ... steps), the start and the goal marked; each line's
    ``gid`` is ``"traj-<step>-<task>-<trajectory>"`` (tests compare them with the data).
    ``limit``: the axes span ``[-limit, limit]`` at least (the goal square is
    ``[-0.5, 0.5]^2``)."""
    plt = pyplot()
    tasks = int(data.goals.shape[0])
    fig, axes = plt.subplots(1, tasks, figsize=(4.2 * tasks, 4.8), squeeze=False)
    for i in range(tasks):
        ax = axes[0, i]
        reach = limit
        for k in range(data.steps + 1):
            name = "pre-update" if k == 0 else f"{k} grad step{'s' if k > 1 else ''}"
            for b in range(min(shown, int(data.positions.shape[2]))):
                xy = data.path(k, i, b).numpy()
                reach = max(reach, float(abs(xy).max()) + 0.05)
                ax.plot(xy[:, 0], xy[:, 1], color=f"C{k}", linewidth=1.4,
                        linestyle="--" if k == 0 else "-", gid=f"traj-{k}-{i}-{b}",
                        label=f"{name} (return {float(data.returns[k, i]):.1f})"
                        if b == 0 else None)
        goal = data.goals[i].numpy()
        ax.scatter([0.0], [0.0], color="black", marker="o", s=25, zorder=5, label="start")
        ax.scatter([goal[0]], [goal[1]], color="red", marker="*", s=160, zorder=6,
                   label="goal")
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal",
               xlabel="x", ylabel="y" if i == 0 else "",
               title=f"{title + ': ' if title else ''}task {i}, goal "
                     f"({goal[0]:.2f}, {goal[1]:.2f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5, loc="best", framealpha=0.7)
    finish(fig, banner)
    return fig


def plot_nav2d(algo: MAMLRL, sampler: TaskSampler, path: str | Path, tasks: int = 3,
               steps: int = 2, trajectories: int = 20, shown: int = 1, title: str = "",
               banner: Sequence[str] = ()) -> tuple[Path, NavTrajectories]:
    """Write ``path`` (:func:`nav2d_figure` of :func:`nav2d_trajectories`); returns it and
    the data drawn."""
    data = nav2d_trajectories(algo, sampler, tasks, steps, trajectories)
    figure = nav2d_figure(data, shown, title, banner)
    return save_figure(figure, Path(path), bbox_inches="tight"), data  # equal axes: all of it
