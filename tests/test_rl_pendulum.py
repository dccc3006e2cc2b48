"""The pendulum family: Gymnasium's Pendulum-v1 step for step with per-task masses and
lengths, shapes, seeding and the sampler's fixed tasks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from metafit.rl import Pendulum, TaskSampler
from metafit.rl.pendulum import angle_normalize

TASKS = ((1.0, 1.0), (0.5, 2.0), (2.0, 0.5), (1.3, 0.7))  # (mass, length)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_matches_gymnasium_pendulum_step_for_step() -> None:
    gym = pytest.importorskip("gymnasium")
    steps = 120
    env = Pendulum(dtype=torch.float64).env({
        "mass": torch.tensor([m for m, _ in TASKS], dtype=torch.float64),
        "length": torch.tensor([length for _, length in TASKS], dtype=torch.float64)})
    # torques beyond the limit too (both clip); one sequence per task
    actions = 3 * torch.randn(steps, len(TASKS), 1, 1, generator=_gen(0),
                              dtype=torch.float64)  # [H, T, B=1, 1]
    starts, gym_obs, gym_rewards, gym_states = [], [], [], []
    for i, (mass, length) in enumerate(TASKS):
        reference = gym.make("Pendulum-v1")
        reference.unwrapped.m, reference.unwrapped.l = mass, length
        obs, _ = reference.reset(seed=10 + i)
        starts.append(np.array(reference.unwrapped.state))
        seen_obs, seen_rewards, seen_states = [obs], [], []
        for t in range(steps):
            obs, reward, terminated, truncated, _ = reference.step(actions[t, i, 0].numpy())
            assert not terminated and not truncated  # time limit 200 > steps
            seen_obs.append(obs)
            seen_rewards.append(reward)
            seen_states.append(np.array(reference.unwrapped.state))
        reference.close()
        gym_obs.append(seen_obs)
        gym_rewards.append(seen_rewards)
        gym_states.append(seen_states)
    state = torch.tensor(np.stack(starts)).unsqueeze(1)  # [T, 1, 2], Gymnasium's starts
    expected_obs = torch.tensor(np.array(gym_obs)).transpose(0, 1)  # [H+1, T, 3] float32
    expected_rewards = torch.tensor(np.array(gym_rewards)).T  # [H, T] float64
    expected_states = torch.tensor(np.array(gym_states)).transpose(0, 1)  # [H, T, 2]
    assert torch.allclose(env.observe(state)[:, 0].float(), expected_obs[0], atol=1e-6)
    for t in range(steps):
        out = env.step(state, actions[t], _gen(0))
        assert torch.allclose(out.rewards[:, 0], expected_rewards[t], rtol=1e-12, atol=1e-12)
        assert torch.allclose(out.state[:, 0], expected_states[t], rtol=1e-12, atol=1e-12)
        assert torch.allclose(out.observations[:, 0].float(), expected_obs[t + 1], atol=1e-6)
        assert not bool(out.dones.any())
        state = out.state
    # the tasks behaved differently: the comparison covered the masses and lengths
    assert (expected_rewards.sum(0).max() - expected_rewards.sum(0).min()) > 1.0


def test_step_by_hand_and_limits() -> None:
    env = Pendulum().env({"mass": torch.tensor([1.0, 2.0]), "length": torch.tensor([1.0, 0.5])})
    state = torch.tensor([[[0.5, 7.9]], [[4.0, 0.0]]])  # [T=2, B=1, 2]
    out = env.step(state, torch.tensor([[[5.0]], [[-1.0]]]), _gen(0))  # task 0's torque clips
    # task 0: 7.9 + (15 sin 0.5 + 3 * 2) * 0.05 > 8: clipped to max_speed
    assert out.state[0, 0, 1].item() == pytest.approx(8.0)
    assert out.state[0, 0, 0].item() == pytest.approx(0.5 + 8.0 * 0.05)
    # task 1: 0 + (30 sin 4 + 3 / (2 * 0.25) * -1) * 0.05
    thdot = (30 * math.sin(4.0) - 6.0) * 0.05
    assert out.state[1, 0, 1].item() == pytest.approx(thdot, rel=1e-5)
    torch.testing.assert_close(out.rewards, torch.tensor([
        [-(0.25 + 0.1 * 7.9 ** 2 + 0.001 * 4.0)],
        [-((4.0 - 2 * math.pi) ** 2 + 0.001)]]))
    torch.testing.assert_close(out.observations[1, 0], torch.tensor(
        [math.cos(4.0 + thdot * 0.05), math.sin(4.0 + thdot * 0.05), thdot]))
    torch.testing.assert_close(angle_normalize(torch.tensor([math.pi, -math.pi, 7.0, 0.1])),
                               torch.tensor([-math.pi, -math.pi, 7.0 - 2 * math.pi, 0.1]))


def test_reset_shapes_ranges_and_seeding() -> None:
    family = Pendulum(horizon=5)
    env = family.env(family.sample(3, _gen(0)))
    state, obs = env.reset(400, _gen(1))
    assert state.shape == (3, 400, 2) and obs.shape == (3, 400, 3)
    assert env.obs_dim == 3 and env.action_space.dim == 1 and env.horizon == 5
    assert bool((state[..., 0].abs() <= math.pi).all()) and bool((state[..., 1].abs() <= 1).all())
    assert state[..., 0].abs().max() > 3.0 and state[..., 1].abs().max() > 0.95  # spans them
    torch.testing.assert_close(obs[..., 0] ** 2 + obs[..., 1] ** 2, torch.ones(3, 400))
    again, _ = env.reset(400, _gen(1))
    assert torch.equal(state, again) and not torch.equal(state, env.reset(400, _gen(2))[0])
    out = env.step(state, torch.zeros(3, 400, 1), _gen(0))
    assert out.state.shape == (3, 400, 2) and out.observations.shape == (3, 400, 3)
    assert out.rewards.shape == out.dones.shape == (3, 400)
    assert bool((out.rewards <= 0).all()) and bool((out.rewards >= -16.3).all())


def test_tasks_are_seeded_within_their_ranges_and_fixed_tasks_do_not_move() -> None:
    family = Pendulum(mass_range=(0.8, 1.2), length_range=(0.5, 3.0), dtype=torch.float64)
    tasks = family.sample(500, _gen(0))
    assert tasks["mass"].shape == tasks["length"].shape == (500,)
    assert tasks["mass"].dtype == torch.float64
    assert 0.8 <= tasks["mass"].min() < 0.82 and 1.18 < tasks["mass"].max() <= 1.2
    assert 0.5 <= tasks["length"].min() < 0.55 and 2.95 < tasks["length"].max() <= 3.0
    torch.testing.assert_close(tasks, family.sample(500, _gen(0)))
    a, b = TaskSampler(Pendulum(), seed=3), TaskSampler(Pendulum(), seed=3)
    torch.testing.assert_close(a.fixed(8), a.fixed(8))
    torch.testing.assert_close(a.fixed(8), b.fixed(8))
    first = a.sample(8)
    assert not torch.equal(first["mass"], a.sample(8)["mass"])  # the stream advances
    torch.testing.assert_close(a.fixed(8), b.fixed(8))  # sampling moved no fixed task
    assert not torch.equal(TaskSampler(Pendulum(), seed=4).fixed(8)["mass"], a.fixed(8)["mass"])


@pytest.mark.parametrize("kwargs,match", [
    ({"mass_range": (0.0, 1.0)}, "mass_range"), ({"length_range": (2.0, 1.0)}, "length_range"),
    ({"horizon": 0}, "horizon")])
def test_bad_settings_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pendulum(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="length"):
        Pendulum().env({"mass": torch.ones(2), "length": torch.tensor([1.0, -1.0])})
