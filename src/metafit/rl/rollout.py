"""Sampling trajectories from a batched tensor environment with per-task policies.

One rollout step is one policy forward for the whole meta-batch
(:func:`~metafit.rl.policies.policy_output` over ``[T, B, obs]``), one draw of actions and
one environment step; the loop runs over the H time steps only. Randomness (actions,
environment noise) comes from the caller's generator, so a rollout is reproducible.

With a :class:`~metafit.rl.shard.TaskShard` (``torchrun``), the policy acts for the
shard's block of tasks only, while the draws and the environment step cover all T tasks
as in one process (:mod:`metafit.rl.shard`); the block's rows are returned.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from metafit.rl.env import TensorEnv
from metafit.rl.policies import Policy, policy_output
from metafit.rl.shard import TaskShard, pad_tasks
from metafit.rl.trajectories import Trajectories

__all__ = ["rollout"]


def rollout(env: TensorEnv, policy: Policy, params: Mapping[str, Tensor], trajectories: int,
            generator: torch.Generator, shard: TaskShard | None = None) -> Trajectories:
    """``trajectories`` (B) episodes of ``env.horizon`` steps in each of the env's T tasks,
    task i acting with ``params`` row i (``[T, *param]``, :func:`~metafit.rl.policies.per_task`).

    With ``shard``: ``params`` are the block's (``[Tb, *param]``) and so is the result
    (``[H, Tb, B, ...]``), the rows ``shard.block`` of the one-process rollout.

    Returns a :class:`Trajectories` ``[H, T, B, ...]`` without a graph. After an episode
    terminates, its environment keeps stepping with the rest of the batch (one op for
    all), but those steps are masked out and their rewards zeroed.
    """
    if trajectories < 1:
        raise ValueError(f"trajectories must be positive, got {trajectories}")
    detached = {n: p.detach() for n, p in params.items()}
    observations, actions, rewards, masks, dones = [], [], [], [], []
    with torch.no_grad():
        state, obs = env.reset(trajectories, generator)  # obs [T, B, obs]
        alive = torch.ones(obs.shape[:2], dtype=torch.bool, device=obs.device)  # [T, B]
        for _ in range(env.horizon):
            if shard is None:
                out = policy_output(policy, detached, obs)  # [T, B, D]
            else:  # the block's outputs, zeros elsewhere: [T, B, D]
                out = pad_tasks(policy_output(policy, detached, obs[shard.block]), shard)
            action = policy.sample(out, generator)  # [T, B, act] or [T, B]
            result = env.step(state, action, generator)
            mask = alive.to(result.rewards.dtype)  # [T, B]
            observations.append(obs)
            actions.append(action)
            rewards.append(result.rewards * mask)
            masks.append(mask)
            dones.append(result.dones & alive)
            alive = alive & ~result.dones
            state, obs = result.state, result.observations
    batch = Trajectories(torch.stack(observations), torch.stack(actions),
                         torch.stack(rewards), torch.stack(masks), torch.stack(dones))
    return batch if shard is None else batch.tasks(shard.block)
