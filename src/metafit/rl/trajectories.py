"""The trajectory batch: what every rollout returns (tensor environments and Gymnasium
vector environments alike), time axis first.

Shapes (H steps, T tasks, B trajectories per task)::

    observations [H, T, B, obs]   the observation each action was taken in
    actions      [H, T, B, act]   float (Gaussian policies), or [H, T, B] long (categorical)
    rewards      [H, T, B]        0 after the episode ended
    masks        [H, T, B]        1.0 where step t happened, 0.0 after the episode ended
    dones        [H, T, B]        bool: the episode terminated with step t (a goal reached);
                                  reaching the horizon is a truncation, not a done
    advantages   [H, T, B] | None set by :func:`metafit.rl.advantages.with_advantages`

A trajectory that ends early keeps its (masked) slots, so every tensor is rectangular
and one op covers the meta-batch; what the observations and actions hold after the end
is unspecified (the tensor envs keep stepping, Gymnasium auto-resets). Per-task views
keep the task axis (``batch.tasks(slice(2, 3))``: ``[H, 1, B, ...]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch import Tensor

__all__ = ["Trajectories"]


@dataclass(frozen=True)
class Trajectories:
    """H steps of B trajectories in each of T tasks (see the module docstring)."""

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    masks: Tensor
    dones: Tensor
    advantages: Tensor | None = None

    def __post_init__(self) -> None:
        lead = tuple(self.rewards.shape)
        if len(lead) != 3:
            raise ValueError(f"rewards must be [H, T, B], got {lead}")
        for name in ("observations", "actions", "masks", "dones", "advantages"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape[:3]) != lead:
                raise ValueError(f"{name} {tuple(value.shape)} does not start with {lead}")

    @property
    def horizon(self) -> int:
        """H, the number of time steps."""
        return self.rewards.shape[0]

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks."""
        return self.rewards.shape[1]

    @property
    def num_trajectories(self) -> int:
        """B, trajectories per task."""
        return self.rewards.shape[2]

    def lengths(self) -> Tensor:
        """Steps each trajectory lasted: ``[T, B]``."""
        return self.masks.sum(dim=0)

    def returns(self) -> Tensor:
        """Undiscounted return of each trajectory: ``[T, B]``."""
        return (self.rewards * self.masks).sum(dim=0)

    def tasks(self, index: Tensor | slice) -> Trajectories:
        """The trajectories of the tasks ``index`` selects (task axis kept)."""
        advantages = None if self.advantages is None else self.advantages[:, index]
        return Trajectories(self.observations[:, index], self.actions[:, index],
                            self.rewards[:, index], self.masks[:, index], self.dones[:, index],
                            advantages)

    def replace(self, **changes: Tensor | None) -> Trajectories:
        """A copy with some fields changed (e.g. ``advantages=``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
