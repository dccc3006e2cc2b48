"""Pendulum swing-up with a mass and a length drawn per task: classic control whose
*dynamics* vary across tasks, so adapting means adapting to new physics (the meta-RL
issue's "Pendulum with masses and lengths drawn per task"; the varied-dynamics setting of
e.g. Clavera et al. 2019, "Learning to Adapt in Dynamic, Real-World Environments through
Meta-Reinforcement Learning").

The dynamics are Gymnasium's ``Pendulum-v1`` (``gymnasium/envs/classic_control/
pendulum.py``), step for step, with its ``m`` and ``l`` set per task: state ``(th,
thdot)``, ``th = 0`` upright; a torque ``u`` clipped to ``[-max_torque, max_torque]``
(2) gives

    thdot' = clip(thdot + (3 g / (2 l) sin th + 3 / (m l^2) u) dt, -max_speed, max_speed)
    th'    = th + thdot' dt

with ``g = 10``, ``dt = 0.05``, ``max_speed = 8``. The reward of a step is
``-(normalize(th)^2 + 0.1 thdot^2 + 0.001 u^2)`` on the state *before* it (``normalize``
wraps to ``[-pi, pi)``), at most 0 (upright and still), at least about -16.27; the
observation is ``[cos th, sin th, thdot]`` after it. Episodes start at ``th ~ U(-pi,
pi)``, ``thdot ~ U(-1, 1)`` and last ``horizon`` (200) steps: no termination.

Tasks: ``mass ~ U(mass_range)``, ``length ~ U(length_range)``, default ``[0.5, 2.0]``
each, so Gymnasium's own pendulum (1, 1) is inside the range and the extremes change the
torque's effect ``3 / (m l^2)`` by a factor of 64 (24 to 0.375) and gravity's
``3 g / (2 l)`` by 4 (30 to 7.5): short light pendulums are swung up directly, long heavy
ones (the torque cannot hold them at 90 degrees) must be pumped, so one policy does not
fit all and adaptation has something to do.

Shapes: mass, length ``[T]``; state ``[T, B, 2]`` (``th``, ``thdot``; ``th`` is not
wrapped, as in Gymnasium); observations ``[T, B, 3]``; actions ``[T, B, 1]``; rewards,
dones ``[T, B]``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv

__all__ = ["Pendulum", "PendulumEnv", "angle_normalize"]


def angle_normalize(angle: Tensor) -> Tensor:
    """``angle`` wrapped to ``[-pi, pi)`` (Gymnasium's ``angle_normalize``: floored
    remainder)."""
    return torch.remainder(angle + math.pi, 2 * math.pi) - math.pi


class PendulumEnv(TensorEnv):
    """The batched environment of T pendulums (``params["mass"] [T]``,
    ``params["length"] [T]``); see the module docstring.

    Args:
        params: the tasks' masses and lengths.
        horizon: steps per episode (Gymnasium's time limit: 200).
        gravity, dt, max_speed, max_torque: Gymnasium's ``g``, ``dt``, ``max_speed``,
            ``max_torque``.
    """

    obs_dim = 3

    def __init__(self, params: TaskParams, horizon: int = 200, gravity: float = 10.0,
                 dt: float = 0.05, max_speed: float = 8.0, max_torque: float = 2.0) -> None:
        super().__init__(params, horizon)
        for name in ("mass", "length"):
            if name not in params or params[name].dim() != 1:
                raise ValueError(f"pendulum tasks need params['{name}'] of shape [T]")
            if not bool((params[name] > 0).all()):
                raise ValueError(f"pendulum {name}s must be positive")
        self.action_space = ActionSpace("continuous", 1, -max_torque, max_torque)
        self.gravity, self.dt = gravity, dt
        self.max_speed, self.max_torque = max_speed, max_torque

    @staticmethod
    def observe(state: Tensor) -> Tensor:
        """``[cos th, sin th, thdot]`` ``[T, B, 3]`` of the states ``[T, B, 2]``."""
        th, thdot = state.unbind(-1)  # [T, B] each
        return torch.stack([th.cos(), th.sin(), thdot], dim=-1)  # [T, B, 3]

    def reset(self, trajectories: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        mass = self.params["mass"]  # [T]
        unit = torch.rand(self.num_tasks, trajectories, 2, generator=generator,
                          dtype=mass.dtype, device=mass.device)  # [T, B, 2] in [0, 1)
        high = torch.tensor([math.pi, 1.0], dtype=mass.dtype, device=mass.device)  # [2]
        state = (2 * unit - 1) * high  # [T, B, 2]: th in [-pi, pi), thdot in [-1, 1)
        return state, self.observe(state)

    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        mass = self.params["mass"].unsqueeze(1)  # [T, 1]
        length = self.params["length"].unsqueeze(1)  # [T, 1]
        th, thdot = state.unbind(-1)  # [T, B] each
        u = actions[..., 0].to(th.dtype).clamp(-self.max_torque, self.max_torque)  # [T, B]
        costs = angle_normalize(th) ** 2 + 0.1 * thdot ** 2 + 0.001 * u ** 2  # [T, B]
        accel = (3 * self.gravity / (2 * length) * th.sin()
                 + 3.0 / (mass * length ** 2) * u)  # [T, B], same order of ops as Gymnasium
        new_thdot = (thdot + accel * self.dt).clamp(-self.max_speed, self.max_speed)  # [T, B]
        new_th = th + new_thdot * self.dt  # [T, B]
        new_state = torch.stack([new_th, new_thdot], dim=-1)  # [T, B, 2]
        dones = torch.zeros_like(th, dtype=torch.bool)  # [T, B]: no terminal state
        return StepResult(new_state, self.observe(new_state), -costs, dones)


class Pendulum(MDPFamily):
    """Pendulums with ``mass ~ U(mass_range)`` and ``length ~ U(length_range)`` per task;
    see the module docstring.

    Args:
        mass_range, length_range: ``(low, high)`` with ``0 < low <= high`` (equal: every
            task has that value).
        horizon: steps per episode.
        dtype: of the task parameters (and so of states, observations and rewards).
    """

    obs_dim = 3

    def __init__(self, mass_range: tuple[float, float] = (0.5, 2.0),
                 length_range: tuple[float, float] = (0.5, 2.0), horizon: int = 200,
                 dtype: torch.dtype | None = None) -> None:
        for name, (low, high) in (("mass_range", mass_range), ("length_range", length_range)):
            if not 0 < low <= high:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, "
                                 f"got {(low, high)}")
        if horizon < 1:
            raise ValueError(f"horizon must be positive, got {horizon}")
        self.mass_range = (float(mass_range[0]), float(mass_range[1]))
        self.length_range = (float(length_range[0]), float(length_range[1]))
        self.horizon = horizon
        self.dtype = dtype or torch.get_default_dtype()
        self.action_space = ActionSpace("continuous", 1, -2.0, 2.0)

    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        unit = torch.rand(n, 2, generator=generator, dtype=self.dtype)  # [n, 2]
        low = torch.tensor([self.mass_range[0], self.length_range[0]], dtype=self.dtype)
        high = torch.tensor([self.mass_range[1], self.length_range[1]], dtype=self.dtype)
        drawn = low + (high - low) * unit  # [n, 2]
        return {"mass": drawn[:, 0].contiguous(), "length": drawn[:, 1].contiguous()}

    def env(self, params: TaskParams) -> PendulumEnv:
        return PendulumEnv(params, self.horizon)
