"""2D navigation (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of
Deep Networks", sec. 5.3), with the dynamics of the pytorch-maml-rl ``2DNavigation-v0``.

A point agent starts at the origin; its observation is its position. An action is a
displacement, clipped to ``[-max_action, max_action]`` per coordinate (0.1); the reward is
minus the Euclidean distance from the new position to the task's goal; the episode ends
early when both coordinates are within ``success_tolerance`` (0.01) of the goal, else after
``horizon`` (100) steps. Goals are uniform in ``[low, high]^2`` (``[-0.5, 0.5]^2``).

Shapes: goals ``[T, 2]``; state = positions ``[T, B, 2]``; observations ``[T, B, 2]``;
actions ``[T, B, 2]``; rewards, dones ``[T, B]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv

__all__ = ["Nav2d", "Nav2dEnv"]


class Nav2dEnv(TensorEnv):
    """The batched environment of T navigation tasks (``params["goal"] [T, 2]``)."""

    obs_dim = 2

    def __init__(self, params: TaskParams, horizon: int = 100, max_action: float = 0.1,
                 success_tolerance: float = 0.01) -> None:
        super().__init__(params, horizon)
        if params["goal"].shape[1:] != (2,):
            raise ValueError(f"goals must be [T, 2], got {tuple(params['goal'].shape)}")
        self.action_space = ActionSpace("continuous", 2, -max_action, max_action)
        self.max_action = max_action
        self.success_tolerance = success_tolerance

    def reset(self, trajectories: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        goal = self.params["goal"]  # [T, 2]
        position = goal.new_zeros(self.num_tasks, trajectories, 2)  # [T, B, 2]
        return position, position

    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        step = actions.clamp(-self.max_action, self.max_action)  # [T, B, 2]
        position = state + step  # [T, B, 2]
        offset = position - self.params["goal"].unsqueeze(1)  # [T, B, 2]
        rewards = -offset.norm(dim=-1)  # [T, B]
        dones = (offset.abs() < self.success_tolerance).all(dim=-1)  # [T, B]
        return StepResult(position, position, rewards, dones)


class Nav2d(MDPFamily):
    """Goals uniform in ``[low, high]^2``; see the module docstring.

    Args:
        low, high: the goal square.
        horizon: steps per episode.
        max_action: the clip of each action coordinate.
        success_tolerance: the episode ends when both coordinates are this close to goal.
        dtype: of the goals (and so of observations and rewards).
    """

    obs_dim = 2

    def __init__(self, low: float = -0.5, high: float = 0.5, horizon: int = 100,
                 max_action: float = 0.1, success_tolerance: float = 0.01,
                 dtype: torch.dtype | None = None) -> None:
        if not low < high:
            raise ValueError(f"need low < high, got {low}, {high}")
        self.low, self.high = low, high
        self.horizon = horizon
        self.max_action = max_action
        self.success_tolerance = success_tolerance
        self.dtype = dtype or torch.get_default_dtype()
        self.action_space = ActionSpace("continuous", 2, -max_action, max_action)

    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        unit = torch.rand(n, 2, generator=generator, dtype=self.dtype)  # [n, 2]
        return {"goal": self.low + (self.high - self.low) * unit}

    def env(self, params: TaskParams) -> Nav2dEnv:
        return Nav2dEnv(params, self.horizon, self.max_action, self.success_tolerance)
