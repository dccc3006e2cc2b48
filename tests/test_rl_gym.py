"""The Gymnasium path gives the same trajectory batch as the tensor path on 2D navigation
(skipped without the ``rl`` extra)."""

from __future__ import annotations

import warnings

import pytest
import torch

from metafit.rl import GaussianMLPPolicy, Nav2d, TaskSampler, per_task, rollout

gym = pytest.importorskip("gymnasium")
from metafit.rl.gym_envs import Nav2dGymEnv, nav2d_vector_env, rollout_vector_env  # noqa: E402


def test_the_gymnasium_env_passes_the_checker() -> None:
    from gymnasium.utils.env_checker import check_env

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its advice on unbounded observation spaces
        check_env(Nav2dGymEnv((0.2, -0.1)), skip_render_check=True)


def test_vector_env_rollout_equals_the_tensor_rollout() -> None:
    family = Nav2d(horizon=30)
    goals = TaskSampler(family, seed=0).sample(3)["goal"]
    goals[0] = torch.tensor([0.05, 0.05])  # reached quickly: termination and masks agree too
    policy = GaussianMLPPolicy(2, 2, hidden=(8,), init_std=1e-3,
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # mean step (0.05, 0.05) plus a little of the first layer's output
        policy.mean[-1].weight.mul_(0.01)
        policy.mean[-1].bias.fill_(0.05)
    params = per_task(dict(policy.named_parameters()), 3)
    tensor = rollout(family.env({"goal": goals}), policy, params, 4,
                     torch.Generator().manual_seed(1))
    vec = nav2d_vector_env(goals, 4)
    try:
        gym_batch = rollout_vector_env(vec, policy, params, 4, 30,
                                       torch.Generator().manual_seed(1), seed=0)
    finally:
        vec.close()
    assert gym_batch.observations.shape == tensor.observations.shape == (30, 3, 4, 2)
    valid = tensor.masks.bool()  # after a termination the contents are unspecified
    torch.testing.assert_close(gym_batch.observations[valid], tensor.observations[valid])
    torch.testing.assert_close(gym_batch.actions[valid], tensor.actions[valid])
    torch.testing.assert_close(gym_batch.rewards, tensor.rewards)
    assert torch.equal(gym_batch.masks, tensor.masks)
    assert torch.equal(gym_batch.dones, tensor.dones)
    assert bool(tensor.dones[:, 0].any(dim=0).all())  # the comparison covered terminations
    assert bool(tensor.masks[:, 1:].all())  # and episodes that ran to the horizon
