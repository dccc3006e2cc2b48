"""The contract of a family of MDPs and of its batched tensor environment.

A *task* is a parameter set (a goal, arm probabilities, a transition table); a family
draws T of them at once as a dict of tensors with the task axis first
(:data:`TaskParams`). ``family.env(params)`` is a :class:`TensorEnv` over those T tasks:
its state covers ``[tasks, trajectories, ...]`` and each call of :meth:`TensorEnv.step`
advances every trajectory of every task with a few tensor ops, so a whole meta-batch
steps at once. Environments keep no state of their own: the state is passed in and
returned (DESIGN.md §3, "state is explicit"), and every random draw takes the caller's
``torch.Generator``.

Shapes: T tasks, B trajectories per task, ``obs`` observation features, ``act`` action
features (Gaussian policies) or no action axis (categorical policies: long actions).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["ActionSpace", "MDPFamily", "StepResult", "TaskParams", "TensorEnv", "index_tasks"]

TaskParams = dict[str, Tensor]
"""Name -> ``[T, ...]`` tensor: the parameters of T tasks, task axis first."""


def index_tasks(params: TaskParams, index: Tensor | slice) -> TaskParams:
    """The tasks ``index`` selects (rows of the task axis of every tensor)."""
    return {name: value[index] for name, value in params.items()}


@dataclass(frozen=True)
class ActionSpace:
    """What a policy for the family must output.

    ``kind="continuous"``: float actions ``[..., dim]`` (the env may clip them to
    ``[low, high]``); ``kind="discrete"``: long actions ``[...]`` in ``0..dim-1``.
    """

    kind: Literal["continuous", "discrete"]
    dim: int
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class StepResult:
    """What :meth:`TensorEnv.step` returns.

    state: the new environment state (family-specific, ``[T, B, ...]``);
    observations: ``[T, B, obs]`` after the step;
    rewards: ``[T, B]`` for the step taken;
    dones: ``[T, B]`` bool, the episode terminated with this step (not counting the
    horizon: reaching ``horizon`` steps is a truncation the rollout handles).
    """

    state: Tensor
    observations: Tensor
    rewards: Tensor
    dones: Tensor


class TensorEnv(ABC):
    """T tasks' environments stepped together (see the module docstring).

    Attributes:
        params: the tasks' parameters (:data:`TaskParams`).
        horizon: steps of an episode.
        obs_dim: observation features.
        action_space: what actions look like.
    """

    horizon: int
    obs_dim: int
    action_space: ActionSpace

    def __init__(self, params: TaskParams, horizon: int) -> None:
        if not params:
            raise ValueError("a tensor environment needs at least one task parameter")
        sizes = {value.shape[0] for value in params.values()}
        if len(sizes) != 1:
            raise ValueError(f"task parameters disagree on the number of tasks: {sizes}")
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.params = params
        self.horizon = horizon

    @property
    def num_tasks(self) -> int:
        """T, the number of tasks stepped together."""
        return next(iter(self.params.values())).shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """The float dtype of observations and rewards (that of the task parameters)."""
        floats = [v.dtype for v in self.params.values() if v.is_floating_point()]
        return floats[0] if floats else torch.get_default_dtype()

    @abstractmethod
    def reset(self, trajectories: int, generator: torch.Generator
              ) -> tuple[Tensor, Tensor]:
        """The start of ``trajectories`` (B) episodes per task: ``(state, observations
        [T, B, obs])``."""

    @abstractmethod
    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        """One step of every trajectory: ``actions [T, B, act]`` (float) or ``[T, B]``
        (long)."""


class MDPFamily(ABC):
    """A distribution over MDPs that share spaces and horizon.

    ``sample(n, generator)`` draws n tasks' parameters; ``env(params)`` builds their
    batched environment. :class:`~metafit.rl.tasks.TaskSampler` adds the seeded stream of
    training tasks and the fixed evaluation tasks.
    """

    horizon: int
    obs_dim: int
    action_space: ActionSpace

    @abstractmethod
    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        """``n`` tasks' parameters, ``[n, ...]`` each."""

    @abstractmethod
    def env(self, params: TaskParams) -> TensorEnv:
        """The batched environment of the tasks ``params``."""
