"""The Gymnasium path: rollouts of per-task policies in a Gymnasium vector environment,
returning the same :class:`~metafit.rl.trajectories.Trajectories` as the tensor path, and
2D navigation written as a plain ``gymnasium.Env`` (the reference the tensor environment is
tested and timed against, ``benchmarks/rl_rollouts.py``).

Needs the ``rl`` extra (``pip install metafit[rl]``); :mod:`metafit.rl` does not import
this module. The vector environment holds T x B sub-environments, task-major (sub-env
``i * B + j`` is trajectory j of task i); Gymnasium's auto-reset after a termination is
harmless because the steps after it are masked out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from metafit.rl.policies import Policy, policy_output
from metafit.rl.trajectories import Trajectories

__all__ = ["Nav2dGymEnv", "nav2d_vector_env", "rollout_vector_env"]


class Nav2dGymEnv(gym.Env[np.ndarray, np.ndarray]):
    """One 2D-navigation task (goal ``goal``) with the dynamics of
    :class:`~metafit.rl.nav2d.Nav2dEnv`: float32 position, actions clipped to
    ``[-max_action, max_action]``, reward minus the distance to the goal, termination
    within ``success_tolerance`` of it. The horizon is the rollout's (no time limit here).
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, goal: tuple[float, float] = (0.0, 0.0), max_action: float = 0.1,
                 success_tolerance: float = 0.01) -> None:
        self.goal = np.asarray(goal, dtype=np.float32)
        self.max_action = max_action
        self.success_tolerance = success_tolerance
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-max_action, max_action, (2,), np.float32)
        self.position = np.zeros(2, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.position = np.zeros(2, dtype=np.float32)
        return self.position.copy(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        move = np.clip(np.asarray(action, dtype=np.float32), -self.max_action, self.max_action)
        self.position = (self.position + move).astype(np.float32)
        offset = self.position - self.goal
        reward = -float(np.sqrt(np.square(offset).sum()))
        done = bool((np.abs(offset) < self.success_tolerance).all())
        return self.position.copy(), reward, done, False, {}


def nav2d_vector_env(goals: Tensor, trajectories: int) -> gym.vector.SyncVectorEnv:
    """A synchronous vector env of ``goals [T, 2]`` x ``trajectories`` sub-environments,
    task-major."""
    rows = [(float(x), float(y)) for x, y in goals.tolist()]
    return gym.vector.SyncVectorEnv([_maker(g) for g in rows for _ in range(trajectories)])


def _maker(goal: tuple[float, float]) -> Callable[[], Nav2dGymEnv]:
    return lambda: Nav2dGymEnv(goal)


def rollout_vector_env(env: gym.vector.VectorEnv, policy: Policy, params: Mapping[str, Tensor],
                       trajectories: int, horizon: int, generator: torch.Generator,
                       seed: int | None = None) -> Trajectories:
    """As :func:`metafit.rl.rollout.rollout`, over a Gymnasium vector env of
    ``T * trajectories`` sub-environments (task-major); ``params`` ``[T, *param]``.
    ``seed`` seeds the env's reset (sub-env i gets ``seed + i``)."""
    detached = {n: p.detach() for n, p in params.items()}
    num_tasks = next(iter(detached.values())).shape[0]
    shape = (num_tasks, trajectories)
    dtype = next(iter(detached.values())).dtype
    obs_np, _ = env.reset(seed=seed)
    alive = torch.ones(shape, dtype=torch.bool)
    observations, actions, rewards, masks, dones = [], [], [], [], []
    with torch.no_grad():
        for _ in range(horizon):
            obs = torch.as_tensor(np.asarray(obs_np), dtype=dtype).view(*shape, -1)  # [T, B, o]
            action = policy.sample(policy_output(policy, detached, obs), generator)
            obs_np, reward_np, terminated, _, _ = env.step(
                action.reshape(num_tasks * trajectories, *action.shape[2:]).numpy())
            mask = alive.to(dtype)
            done = torch.as_tensor(np.asarray(terminated)).view(shape)
            observations.append(obs)
            actions.append(action)
            rewards.append(torch.as_tensor(np.asarray(reward_np), dtype=dtype).view(shape) * mask)
            masks.append(mask)
            dones.append(done & alive)
            alive = alive & ~done
    return Trajectories(torch.stack(observations), torch.stack(actions), torch.stack(rewards),
                        torch.stack(masks), torch.stack(dones))
