"""Task families over Gymnasium environments: MuJoCo locomotion and any user environment,
behind the same :class:`~metafit.rl.env.MDPFamily` contract as the tensor families.

A :class:`GymTaskFamily` is given a factory ``make_env(**task) -> gymnasium.Env`` (the task
as keyword arguments of floats) and a task sampler; ``family.env(params)`` is a
:class:`GymTaskEnv` that holds ``T x B`` sub-environments, task-major (sub-env ``i * B +
j`` is trajectory j of task i), and steps them in turn. It returns the same
:class:`~metafit.rl.env.StepResult` tensors as a tensor environment, so
:func:`~metafit.rl.rollout.rollout`, :class:`~metafit.rl.MAMLRL`, the trainer and the
evaluation run unchanged on it.

Unlike a tensor environment, the state lives inside the sub-environments (MuJoCo's
simulator state); the ``state`` tensor a :class:`GymTaskEnv` hands out is a step counter
``[T, B]``, and stepping from any state but the latest is refused. Reset seeds come from
the caller's generator (sub-env k is reset with ``seed + k``), so a rollout is
reproducible. Sub-environments that provide ``set_task(**task)`` are built once per family
and re-pointed at new tasks (the MuJoCo families below); others are built anew for every
reset.

Families (Finn et al. 2017, sec. 5.3; the rllab / pytorch-maml-rl definitions, over
Gymnasium's own ``HalfCheetah-v5``, not a copy of it):

* :func:`half_cheetah_vel`: a target velocity per task, uniform in ``[0, 2]``; reward
  ``-|v_x - v_goal| - 0.05 |a|^2``.
* :func:`half_cheetah_dir`: a direction per task, forward (+1) or backward (-1) with equal
  chance; reward ``direction * v_x - 0.05 |a|^2``.

Horizon 200 for both. Needs the ``rl`` extra (Gymnasium and MuJoCo).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv

__all__ = ["ENV_MODULES_VARIABLE", "GymTaskEnv", "GymTaskFamily", "HalfCheetahTask",
           "TaskSampleFn", "half_cheetah_dir", "half_cheetah_vel", "load_env_factory",
           "uniform_tasks"]

log = logging.getLogger(__name__)

#: ``(n, generator) -> TaskParams``: n tasks' parameters, each ``[n]`` (float).
TaskSampleFn = Callable[[int, torch.Generator], TaskParams]

#: Sub-environments one :class:`GymTaskEnv` may hold (tasks x trajectories).
MAX_SUB_ENVS = 20_000

#: The environment variable listing the modules a recipe's ``env_factory`` may import.
ENV_MODULES_VARIABLE = "METAFIT_ENV_MODULES"

_CTRL_COST = 0.05  # rllab / pytorch-maml-rl half-cheetah control cost weight


class EnvFactory(Protocol):
    """Builds one task's environment from its parameters (keyword arguments)."""

    def __call__(self, **task: float) -> gym.Env[Any, Any]: ...


def load_env_factory(spec: str) -> EnvFactory:
    """The callable ``spec`` (``"package.module:function"``) names, imported only if its
    module (or a package above it) is listed, comma-separated, in ``$METAFIT_ENV_MODULES``:
    a recipe is untrusted input, and importing a module runs its code, so the person
    running metafit opts in to each module (DESIGN.md section 9).

    Raises:
        ValueError: a malformed spec, a module not allowed, not importable, or a name
            that is not callable; each message names the spec.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute.isidentifier():
        raise ValueError(f"env_factory '{spec}' must look like 'package.module:function'")
    allowed = {m.strip() for m in os.environ.get(ENV_MODULES_VARIABLE, "").split(",")
               if m.strip()}
    parts = module_name.split(".")
    if not any(".".join(parts[:k]) in allowed for k in range(1, len(parts) + 1)):
        raise ValueError(f"env_factory '{spec}': importing '{module_name}' runs its code; "
                         f"allow it with {ENV_MODULES_VARIABLE}={parts[0]} (a comma-"
                         "separated list of modules) if you trust this recipe")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"env_factory '{spec}': cannot import '{module_name}': {error}"
                         ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"env_factory '{spec}': '{module_name}' has no callable "
                         f"'{attribute}'")
    return factory  # type: ignore[no-any-return]


def uniform_tasks(ranges: Mapping[str, tuple[float, float]],
                  dtype: torch.dtype = torch.float32) -> TaskSampleFn:
    """A task sampler drawing each parameter uniformly from its ``(low, high)`` range.

    Raises:
        ValueError: no parameter, or a range with ``low > high``.
    """
    if not ranges:
        raise ValueError("uniform_tasks needs at least one parameter range")
    for name, (low, high) in ranges.items():
        if not low <= high:
            raise ValueError(f"task parameter '{name}': need low <= high, got {low}, {high}")
    bounds = dict(ranges)

    def sample(n: int, generator: torch.Generator) -> TaskParams:
        return {name: low + (high - low) * torch.rand(n, generator=generator, dtype=dtype)
                for name, (low, high) in bounds.items()}

    return sample


class GymTaskFamily(MDPFamily):
    """Tasks whose environments a Gymnasium factory builds (see the module docstring).

    Args:
        make_env: ``make_env(**task)`` builds one task's environment; its observation
            space must be a 1-D ``Box``, its action space a 1-D ``Box`` or ``Discrete``.
        sample_tasks: draws ``n`` tasks (:data:`TaskSampleFn`).
        horizon: steps per episode (the rollout's; the env's own time limit, if any,
            should be at least this).
        name: shown in messages.

    Raises:
        ValueError: the spaces are not of the supported kinds (checked on one task built
            up front).
    """

    def __init__(self, make_env: EnvFactory, sample_tasks: TaskSampleFn, horizon: int,
                 name: str = "gym") -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.make_env, self.sample_tasks = make_env, sample_tasks
        self.horizon, self.name = horizon, name
        with torch.device("cpu"):  # also when built under torch.device("meta")
            probe_task = sample_tasks(1, torch.Generator().manual_seed(0))
        probe = make_env(**_row(probe_task, 0))
        self.obs_dim, self.action_space = _spaces(probe, name)
        box = probe.action_space
        #: per-dimension action bounds the env clips continuous actions to (None: discrete)
        self.action_bounds = (np.asarray(box.low), np.asarray(box.high)) \
            if isinstance(box, spaces.Box) else None
        self._reusable = callable(getattr(probe, "set_task", None))
        self._pool: list[gym.Env[Any, Any]] = [probe] if self._reusable else []
        if not self._reusable:
            probe.close()

    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        return self.sample_tasks(n, generator)

    def env(self, params: TaskParams) -> GymTaskEnv:
        return GymTaskEnv(self, params)

    def sub_envs(self, tasks: list[dict[str, float]], trajectories: int
                 ) -> list[gym.Env[Any, Any]]:
        """``len(tasks) * trajectories`` environments, task-major, each set to its task."""
        count = len(tasks) * trajectories
        if count > MAX_SUB_ENVS:
            raise ValueError(f"{self.name}: {len(tasks)} tasks x {trajectories} trajectories "
                             f"= {count} environments, more than {MAX_SUB_ENVS}")
        rows = [task for task in tasks for _ in range(trajectories)]
        if not self._reusable:
            return [self.make_env(**task) for task in rows]
        while len(self._pool) < count:
            self._pool.append(self.make_env(**rows[len(self._pool)]))
        envs = self._pool[:count]
        for env, task in zip(envs, rows, strict=True):
            env.set_task(**task)  # type: ignore[attr-defined]
        return envs


class GymTaskEnv(TensorEnv):
    """T tasks x B trajectories of a :class:`GymTaskFamily`, stepped in turn (module
    docstring). Observations ``[T, B, obs]`` and rewards ``[T, B]`` in the task
    parameters' float dtype; actions ``[T, B, act]`` (clipped to the action box) or
    ``[T, B]`` (discrete)."""

    def __init__(self, family: GymTaskFamily, params: TaskParams) -> None:
        super().__init__(params, family.horizon)
        self.family = family
        self.obs_dim, self.action_space = family.obs_dim, family.action_space
        self._tasks = [_row(params, i) for i in range(self.num_tasks)]
        self._envs: list[gym.Env[Any, Any]] = []
        self._shape = (self.num_tasks, 0)
        self._clock = -1
        self._ended = np.zeros(0, dtype=bool)
        self._last_obs: np.ndarray = np.zeros((0, self.obs_dim))

    @property
    def environments(self) -> tuple[gym.Env[Any, Any], ...]:
        """The sub-environments of the last reset, task-major (``i * B + j``)."""
        return tuple(self._envs)

    def reset(self, trajectories: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if trajectories < 1:
            raise ValueError(f"trajectories must be positive, got {trajectories}")
        self._envs = self.family.sub_envs(self._tasks, trajectories)
        self._shape = (self.num_tasks, trajectories)
        seed = int(torch.randint(0, 2**31 - 1 - len(self._envs), (1,), generator=generator))
        obs = np.stack([env.reset(seed=seed + k)[0] for k, env in enumerate(self._envs)])
        self._ended = np.zeros(len(self._envs), dtype=bool)
        self._last_obs = obs
        self._clock = 0
        return self._state(), self._tensor(obs)

    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        if self._clock < 0 or int(state.flatten()[0]) != self._clock:
            raise RuntimeError(f"{self.family.name}: a Gymnasium-backed environment steps "
                               "only from the state its last reset or step returned")
        flat = actions.detach().reshape(len(self._envs), *actions.shape[2:]).cpu().numpy()
        if self.family.action_bounds is not None:
            flat = np.clip(flat, *self.family.action_bounds)
        obs = self._last_obs.copy()
        rewards = np.zeros(len(self._envs))
        dones = np.zeros(len(self._envs), dtype=bool)
        for k, env in enumerate(self._envs):
            if self._ended[k]:
                continue
            obs[k], reward, terminated, truncated, _ = env.step(flat[k])
            rewards[k] = reward
            dones[k] = terminated
            self._ended[k] = terminated or truncated
        self._last_obs = obs
        self._clock += 1
        shape = self._shape
        return StepResult(self._state(), self._tensor(obs),
                          torch.as_tensor(rewards, dtype=self.dtype).view(shape),
                          torch.as_tensor(dones).view(shape))

    def _state(self) -> Tensor:
        return torch.full(self._shape, self._clock, dtype=torch.long)

    def _tensor(self, obs: np.ndarray) -> Tensor:
        return torch.as_tensor(obs, dtype=self.dtype).view(*self._shape, self.obs_dim)


class HalfCheetahTask(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Gymnasium's ``HalfCheetah-v5`` with the reward of a velocity or direction task.

    ``kind="vel"``: reward ``-|v_x - velocity| - 0.05 |a|^2``; ``kind="dir"``: reward
    ``direction * v_x - 0.05 |a|^2`` (``v_x`` is the env's own ``info["x_velocity"]``, the
    control cost its ``info["reward_ctrl"]`` at weight 0.05). ``set_task`` changes the
    target between episodes.
    """

    def __init__(self, kind: str, render_mode: str | None = None, width: int = 480,
                 height: int = 480, **task: float) -> None:
        if kind not in ("vel", "dir"):
            raise ValueError(f"kind must be 'vel' or 'dir', got {kind!r}")
        super().__init__(_half_cheetah(render_mode, width, height))
        self.kind = kind
        self.target = 0.0
        self.set_task(**task)

    def set_task(self, **task: float) -> None:
        """Point the env at a new task: ``velocity=`` (vel) or ``direction=`` (dir)."""
        key = "velocity" if self.kind == "vel" else "direction"
        if set(task) != {key}:
            raise ValueError(f"a half-cheetah {self.kind} task takes '{key}', got {sorted(task)}")
        self.target = float(task[key])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, _, terminated, truncated, info = self.env.step(action)
        velocity, ctrl = float(info["x_velocity"]), float(info["reward_ctrl"])
        if self.kind == "vel":
            reward = -abs(velocity - self.target) + ctrl
        else:
            reward = self.target * velocity + ctrl
        return obs, reward, terminated, truncated, info


def _half_cheetah(render_mode: str | None = None, width: int = 480, height: int = 480
                  ) -> gym.Env[np.ndarray, np.ndarray]:
    """Gymnasium's ``HalfCheetah-v5`` at control cost 0.05 (``render_mode="rgb_array"``:
    frames of ``width`` x ``height`` pixels). MuJoCo's compiler warns about the model
    file's deprecated ``settotalmass`` on every build by printing to the terminal; the
    warning goes to this module's debug log instead."""
    import mujoco
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda text: log.debug("MuJoCo: %s", text))
    try:
        camera = {} if render_mode is None else {"camera_name": "track"}  # follows the body
        return HalfCheetahEnv(ctrl_cost_weight=_CTRL_COST, render_mode=render_mode,
                              width=width, height=height, **camera)
    finally:
        mujoco.set_mju_user_warning(previous)


def half_cheetah_vel(horizon: int = 200, low: float = 0.0, high: float = 2.0
                     ) -> GymTaskFamily:
    """Half-cheetah with a target velocity per task, uniform in ``[low, high]`` (the MAML
    paper's ``[0, 2]``); task parameter ``velocity [T]``."""
    return GymTaskFamily(lambda **task: HalfCheetahTask("vel", **task),
                         uniform_tasks({"velocity": (low, high)}), horizon,
                         name="rl_cheetah_vel")


def half_cheetah_dir(horizon: int = 200) -> GymTaskFamily:
    """Half-cheetah running forward or backward, each with probability 1/2; task
    parameter ``direction [T]`` in {-1, +1}."""
    def sample(n: int, generator: torch.Generator) -> TaskParams:
        coin = torch.randint(0, 2, (n,), generator=generator)
        return {"direction": (2 * coin - 1).to(torch.float32)}

    return GymTaskFamily(lambda **task: HalfCheetahTask("dir", **task), sample, horizon,
                         name="rl_cheetah_dir")


def _row(params: TaskParams, i: int) -> dict[str, float]:
    """Task ``i``'s parameters as keyword arguments (scalars per task)."""
    row = {}
    for name, value in params.items():
        if value.dim() != 1:
            raise ValueError(f"Gymnasium task parameters must be one float per task ([T]); "
                             f"'{name}' is {tuple(value.shape)}")
        row[name] = float(value[i])
    return row


def _spaces(env: gym.Env[Any, Any], name: str) -> tuple[int, ActionSpace]:
    """The observation size and :class:`ActionSpace` of ``env``."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"{name}: the observation space must be a 1-D Box, got {obs_space}")
    if isinstance(act_space, spaces.Discrete):
        return obs_space.shape[0], ActionSpace("discrete", int(act_space.n))
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1:
        low, high = np.unique(act_space.low), np.unique(act_space.high)
        bounded = len(low) == 1 and len(high) == 1 and np.isfinite(low[0]) \
            and np.isfinite(high[0])
        return obs_space.shape[0], ActionSpace(
            "continuous", act_space.shape[0], float(low[0]) if bounded else None,
            float(high[0]) if bounded else None)
    raise ValueError(f"{name}: the action space must be a 1-D Box or Discrete, got {act_space}")
