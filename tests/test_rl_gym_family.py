"""Gymnasium-backed task families (metafit.rl.gym_family): half-cheetah velocity and
direction over Gymnasium's own HalfCheetah-v5, a user's env factory from a recipe, and
the same trajectories, trainer and evaluation as the tensor families."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mujoco")

from metafit.config.recipe import load_recipe  # noqa: E402
from metafit.config.schema import Recipe  # noqa: E402
from metafit.rl import MAMLRL, GaussianMLPPolicy, TaskSampler, rollout  # noqa: E402
from metafit.rl.from_recipe import build_family  # noqa: E402
from metafit.rl.gym_family import (  # noqa: E402
    ENV_MODULES_VARIABLE,
    GymTaskFamily,
    HalfCheetahTask,
    half_cheetah_dir,
    half_cheetah_vel,
    load_env_factory,
    uniform_tasks,
)
from test_cli_json import run_json  # noqa: E402
from test_rl_training import TINY  # noqa: E402


def policy_for(family: GymTaskFamily, seed: int = 0) -> GaussianMLPPolicy:
    return GaussianMLPPolicy(family.obs_dim, family.action_space.dim, hidden=(8,),
                             generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind, target", [("dir", -1.0), ("dir", 1.0), ("vel", 1.5)])
def test_the_cheetah_reward_is_the_papers_from_gymnasiums_own_velocity(
        kind: str, target: float) -> None:
    key = "direction" if kind == "dir" else "velocity"
    env = HalfCheetahTask(kind, **{key: target})
    env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, 6).astype(np.float32)
        _, reward, _, _, info = env.step(action)
        ctrl = -0.05 * float(np.square(action).sum())
        assert info["reward_ctrl"] == pytest.approx(ctrl, rel=1e-5)
        velocity = info["x_velocity"]
        expected = target * velocity if kind == "dir" else -abs(velocity - target)
        assert reward == pytest.approx(expected + ctrl, rel=1e-6)


def test_a_cheetah_task_takes_only_its_own_parameter() -> None:
    with pytest.raises(ValueError, match="takes 'direction'"):
        HalfCheetahTask("dir", velocity=1.0)
    with pytest.raises(ValueError, match="'vel' or 'dir'"):
        HalfCheetahTask("run", velocity=1.0)


def test_task_samplers_draw_the_papers_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    directions = half_cheetah_dir().sample(200, g)["direction"]
    assert set(directions.tolist()) == {-1.0, 1.0}
    assert 60 < int((directions > 0).sum()) < 140
    velocities = half_cheetah_vel().sample(200, g)["velocity"]
    assert 0.0 <= float(velocities.min()) and float(velocities.max()) <= 2.0


def test_rollouts_are_reproducible_and_shaped_like_the_tensor_envs() -> None:
    family = half_cheetah_vel(horizon=6)
    sampler = TaskSampler(family, seed=1)
    tasks = sampler.fixed(3)
    policy = policy_for(family)
    params = {n: p.detach().expand(3, *p.shape) for n, p in policy.named_parameters()}
    a = rollout(family.env(tasks), policy, params, 2, torch.Generator().manual_seed(5))
    b = rollout(family.env(tasks), policy, params, 2, torch.Generator().manual_seed(5))
    c = rollout(family.env(tasks), policy, params, 2, torch.Generator().manual_seed(6))
    assert a.observations.shape == (6, 3, 2, 17) and a.actions.shape == (6, 3, 2, 6)
    assert a.rewards.shape == (6, 3, 2) and a.observations.dtype == torch.float32
    assert torch.equal(a.observations, b.observations) and torch.equal(a.rewards, b.rewards)
    assert not torch.equal(a.rewards, c.rewards)
    assert bool(a.masks.eq(1).all())  # the cheetah never terminates


def test_the_rewards_are_those_of_each_trajectorys_own_task() -> None:
    """Sub-env i * B + j runs task i, and pooled sub-envs are re-pointed at new tasks."""
    family = half_cheetah_dir(horizon=4)
    gen = torch.Generator().manual_seed(0)
    for directions in ([1.0, -1.0], [-1.0, 1.0]):
        env = family.env({"direction": torch.tensor(directions)})
        state, _ = env.reset(2, gen)
        assert [e.target for e in env.environments] == [directions[0]] * 2 + \
            [directions[1]] * 2
        before = [float(e.unwrapped.data.qpos[0]) for e in env.environments]
        result = env.step(state, torch.zeros(2, 2, 6), gen)  # zero actions: no control cost
        velocities = torch.tensor([(float(e.unwrapped.data.qpos[0]) - x) / e.unwrapped.dt
                                   for e, x in zip(env.environments, before, strict=True)])
        assert torch.allclose(result.rewards.flatten(),
                              torch.tensor(directions).repeat_interleave(2) * velocities,
                              atol=1e-5)


def test_a_stale_state_is_refused() -> None:
    family = half_cheetah_dir(horizon=3)
    env = family.env(family.sample(1, torch.Generator().manual_seed(0)))
    gen = torch.Generator().manual_seed(0)
    state, _ = env.reset(1, gen)
    env.step(state, torch.zeros(1, 1, 6), gen)
    with pytest.raises(RuntimeError, match="steps only from the state"):
        env.step(state, torch.zeros(1, 1, 6), gen)


def test_maml_adapts_on_the_cheetah_through_the_same_code(tmp_path: Path) -> None:
    family = half_cheetah_dir(horizon=5)
    algo = MAMLRL(policy_for(family), inner_lr=0.1)
    sampler = TaskSampler(family, seed=0)
    episode = algo.sample(family.env(sampler.sample(2)), 2, sampler.rollouts)
    grads, metrics = algo.meta_gradients(episode)
    assert set(grads) == set(algo.trainable_parameters())
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert any(float(g.abs().sum()) > 0 for g in grads.values())
    assert np.isfinite(metrics["return_after"])


# -- a user's environment from a recipe -------------------------------------------------

USER_ENV = """
import gymnasium as gym
import numpy as np


class Target(gym.Env):
    '''Move a point on a line towards `target`; reward minus the distance.'''

    def __init__(self, target: float, speed: float = 1.0) -> None:
        self.target, self.speed = target, speed
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.x = np.zeros(1, np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = np.zeros(1, np.float32)
        return self.x.copy(), {}

    def step(self, action):
        self.x = (self.x + self.speed * 0.1 * np.asarray(action, np.float32)).astype(np.float32)
        return self.x.copy(), -float(abs(self.x[0] - self.target)), False, False, {}


def make(target: float, speed: float) -> Target:
    return Target(target, speed)
"""

GYM_RECIPE = ["dataset=rl_gym", "env_factory=mf_user_env:make", "horizon=5",
              "task_ranges={target: [-1, 1], speed: [0.5, 2]}"]


@pytest.fixture()
def user_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mf_user_env.py").write_text(textwrap.dedent(USER_ENV))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ENV_MODULES_VARIABLE, "some.other, mf_user_env")


def test_a_recipes_env_factory_is_imported_only_when_allowed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mf_user_env.py").write_text("raise SystemExit('imported!')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_MODULES_VARIABLE, raising=False)
    with pytest.raises(ValueError, match=f"{ENV_MODULES_VARIABLE}=mf_user_env"):
        load_env_factory("mf_user_env:make")
    monkeypatch.setenv(ENV_MODULES_VARIABLE, "mf_user_env_other,os")
    with pytest.raises(ValueError, match="runs its code"):
        load_env_factory("mf_user_env:make")
    with pytest.raises(ValueError, match="package.module:function"):
        load_env_factory("mf_user_env")


def test_an_allowed_factory_must_exist_and_be_callable(user_env: None) -> None:
    with pytest.raises(ValueError, match="no callable 'nothing'"):
        load_env_factory("mf_user_env:nothing")
    assert callable(load_env_factory("mf_user_env:make"))


def test_rl_gym_recipes_are_checked_before_any_import() -> None:
    with pytest.raises(ValueError, match="needs env_factory, task_ranges"):
        Recipe(dataset="rl_gym", algorithm="maml_trpo", horizon=5)
    with pytest.raises(ValueError, match="task_ranges.target: need finite low <= high"):
        Recipe(dataset="rl_gym", algorithm="maml_trpo", horizon=5,
               env_factory="m:make", task_ranges={"target": (1.0, -1.0)})
    with pytest.raises(ValueError, match="env_factory"):
        Recipe(dataset="rl_gym", algorithm="maml_trpo", horizon=5,
               env_factory="os.system('x')", task_ranges={"target": (0.0, 1.0)})
    with pytest.raises(ValueError, match="env_factory"):  # a key of rl_gym only
        Recipe(dataset="rl_nav2d", algorithm="maml_trpo", env_factory="m:make")


def test_a_user_family_samples_its_ranges_and_builds_an_env_per_task(user_env: None) -> None:
    recipe = load_recipe("rl_nav2d_maml", [*TINY, *GYM_RECIPE])
    family = build_family(recipe)
    assert family.obs_dim == 1 and family.action_space.dim == 1
    tasks = family.sample(50, torch.Generator().manual_seed(0))
    assert set(tasks) == {"target", "speed"}
    assert -1 <= float(tasks["target"].min()) and float(tasks["speed"].max()) <= 2
    env = family.env({"target": torch.tensor([1.0, -1.0]), "speed": torch.ones(2)})
    gen = torch.Generator().manual_seed(0)
    state, _ = env.reset(1, gen)
    result = env.step(state, torch.ones(2, 1, 1), gen)
    assert torch.allclose(result.rewards[:, 0], torch.tensor([-0.9, -1.1]))


def test_uniform_tasks_refuses_an_empty_or_reversed_range() -> None:
    with pytest.raises(ValueError, match="at least one"):
        uniform_tasks({})
    with pytest.raises(ValueError, match="'a': need low <= high"):
        uniform_tasks({"a": (2.0, 1.0)})


def test_the_cli_trains_and_evaluates_a_users_env(
        user_env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    trained = run_json(capsys, "train", "rl_nav2d_maml", "--out", str(out), "--no-progress",
                       *TINY, *GYM_RECIPE)
    assert trained["status"] == "complete" and trained["metric"] == "return"
    result = run_json(capsys, "evaluate", str(out), "--steps", "1")
    assert result["family"] == "rl_gym" and result["curve_steps"] == [0, 1]
    assert run_json(capsys, "evaluate", str(out), "--steps", "1")["mean"] == result["mean"]


def test_building_a_cheetah_writes_nothing_to_the_terminal_or_the_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """MuJoCo warns about the model file's deprecated attribute on every build, by default
    on the terminal and into ./MUJOCO_LOG.TXT; metafit routes it to its debug log."""
    monkeypatch.chdir(tmp_path)
    HalfCheetahTask("dir", direction=1.0)
    captured = capfd.readouterr()
    assert "settotalmass" not in captured.out + captured.err
    assert list(tmp_path.iterdir()) == []
