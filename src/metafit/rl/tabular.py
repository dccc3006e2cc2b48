"""Random tabular MDPs (Duan et al. 2016, "RL^2: Fast Reinforcement Learning via Slow
Reinforcement Learning", sec. 4.2): S states, A actions; per task the mean rewards
``R(s, a) ~ Normal(1, 1)`` and the transitions ``P(s, a, .) ~ Dirichlet(1, ..., 1)``; a step
pays ``R(s, a)`` plus unit Gaussian noise. Episodes start in state 0 (as pytorch-maml-rl's
``TabularMDP-v0``) and last ``horizon`` steps (Duan et al.: S=10, A=5, horizon 10).

The observation is the one-hot state. :func:`tabular_expected_return` evaluates a
memoryless policy exactly (dynamic programming over the horizon), which is what the
finite-difference checks of the meta-gradient differentiate.

Shapes: rewards ``[T, S, A]``, transitions ``[T, S, A, S]``; state ``[T, B]`` long;
observations ``[T, B, S]``; actions ``[T, B]`` long; rewards, dones ``[T, B]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv

__all__ = ["TabularEnv", "TabularMDP", "tabular_expected_return"]


class TabularEnv(TensorEnv):
    """The batched environment of T tabular MDPs (``params["rewards"]``,
    ``params["transitions"]``)."""

    def __init__(self, params: TaskParams, horizon: int, reward_noise: float = 1.0) -> None:
        super().__init__(params, horizon)
        _, states, actions = params["rewards"].shape
        if params["transitions"].shape[1:] != (states, actions, states):
            raise ValueError("transitions must be [T, S, A, S] for rewards [T, S, A]")
        self.obs_dim = states
        self.action_space = ActionSpace("discrete", actions)
        self.reward_noise = reward_noise

    def observe(self, state: Tensor) -> Tensor:
        """One-hot observations ``[T, B, S]`` of the states ``[T, B]``."""
        return F.one_hot(state, self.obs_dim).to(self.dtype)

    def reset(self, trajectories: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        state = torch.zeros(self.num_tasks, trajectories, dtype=torch.long,
                            device=self.params["rewards"].device)  # [T, B]
        return state, self.observe(state)

    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        tasks = torch.arange(self.num_tasks, device=state.device).unsqueeze(1)  # [T, 1]
        mean = self.params["rewards"][tasks, state, actions]  # [T, B]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=mean.device)  # [T, B]
        rewards = mean + self.reward_noise * noise  # [T, B]
        p_next = self.params["transitions"][tasks, state, actions]  # [T, B, S]
        u = torch.rand(*state.shape, 1, generator=generator, dtype=p_next.dtype,
                       device=state.device)  # [T, B, 1]
        nxt = (p_next.cumsum(dim=-1) < u).sum(dim=-1).clamp(max=self.obs_dim - 1)  # [T, B]
        dones = torch.zeros_like(nxt, dtype=torch.bool)  # [T, B]: no terminal state
        return StepResult(nxt, self.observe(nxt), rewards, dones)


class TabularMDP(MDPFamily):
    """Random MDPs with ``states`` states and ``actions`` actions; see the module
    docstring."""

    def __init__(self, states: int = 10, actions: int = 5, horizon: int = 10,
                 reward_noise: float = 1.0, dtype: torch.dtype | None = None) -> None:
        if states < 1 or actions < 2 or horizon < 1:
            raise ValueError(f"need states >= 1, actions >= 2, horizon >= 1, got {states}, "
                             f"{actions}, {horizon}")
        self.states, self.actions = states, actions
        self.obs_dim = states
        self.horizon = horizon
        self.reward_noise = reward_noise
        self.dtype = dtype or torch.get_default_dtype()
        self.action_space = ActionSpace("discrete", actions)

    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        s, a = self.states, self.actions
        rewards = 1.0 + torch.randn(n, s, a, generator=generator, dtype=self.dtype)
        gamma_draws = torch.empty(n, s, a, s, dtype=self.dtype).exponential_(generator=generator)
        transitions = gamma_draws / gamma_draws.sum(dim=-1, keepdim=True)  # Dirichlet(1)
        return {"rewards": rewards, "transitions": transitions}

    def env(self, params: TaskParams) -> TabularEnv:
        return TabularEnv(params, self.horizon, self.reward_noise)


def tabular_expected_return(params: TaskParams, action_probs: Tensor, horizon: int,
                            gamma: float = 1.0) -> Tensor:
    """Exact expected discounted return from state 0 of memoryless policies
    ``action_probs [T, S, A]`` (rows sum to 1) -> ``[T]``, differentiable in
    ``action_probs``.

    ``J = sum_{t < horizon} gamma^t d_t . r_pi`` with ``d_0 = e_0``,
    ``d_{t+1} = d_t P_pi``, ``r_pi(s) = sum_a pi(a|s) R(s, a)`` and
    ``P_pi(s, s') = sum_a pi(a|s) P(s, a, s')``.
    """
    r_pi = (action_probs * params["rewards"]).sum(dim=-1)  # [T, S]
    p_pi = torch.einsum("tsa,tsan->tsn", action_probs, params["transitions"])  # [T, S, S]
    d = torch.zeros_like(r_pi)  # [T, S]
    d[:, 0] = 1.0
    total = r_pi.new_zeros(r_pi.shape[0])  # [T]
    for t in range(horizon):
        total = total + gamma**t * (d * r_pi).sum(dim=-1)  # [T]
        d = torch.bmm(d.unsqueeze(1), p_pi).squeeze(1)  # [T, S]
    return total
