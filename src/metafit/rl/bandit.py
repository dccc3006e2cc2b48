"""Multi-armed Bernoulli bandits (Duan et al. 2016, "RL^2: Fast Reinforcement Learning via
Slow Reinforcement Learning", sec. 4.1): arm i pays 1 with probability ``p_i`` and 0
otherwise, ``p_i ~ Uniform[0, 1]`` independently per task; an episode is ``horizon`` pulls.

The policies here are memoryless (MAML adapts their parameters; RL^2's recurrent agent is
not part of this package), so the observation is the constant ``[1.0]``: a categorical
policy over arms. Without state, the exact expected return of a policy is
``sum_t gamma^t * sum_a pi(a) p_a`` (:func:`bandit_expected_return`).

Shapes: probabilities ``[T, K]``; state (pulls so far) ``[T, B]`` long; observations
``[T, B, 1]``; actions ``[T, B]`` long; rewards, dones ``[T, B]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv

__all__ = ["Bandit", "BanditEnv", "bandit_expected_return"]


class BanditEnv(TensorEnv):
    """The batched environment of T bandits (``params["probs"] [T, K]``)."""

    obs_dim = 1

    def __init__(self, params: TaskParams, horizon: int) -> None:
        super().__init__(params, horizon)
        self.action_space = ActionSpace("discrete", params["probs"].shape[1])

    def reset(self, trajectories: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        probs = self.params["probs"]  # [T, K]
        pulls = torch.zeros(self.num_tasks, trajectories, dtype=torch.long,
                            device=probs.device)  # [T, B]
        return pulls, probs.new_ones(self.num_tasks, trajectories, 1)  # [T, B, 1]

    def step(self, state: Tensor, actions: Tensor, generator: torch.Generator) -> StepResult:
        probs = self.params["probs"]  # [T, K]
        paid = probs.gather(1, actions)  # [T, B]: each chosen arm's probability
        draws = torch.rand(paid.shape, generator=generator, dtype=paid.dtype,
                           device=paid.device)  # [T, B]
        rewards = (draws < paid).to(paid.dtype)  # [T, B]
        observations = probs.new_ones(*state.shape, 1)  # [T, B, 1]
        dones = torch.zeros_like(state, dtype=torch.bool)  # [T, B]: no terminal state
        return StepResult(state + 1, observations, rewards, dones)


class Bandit(MDPFamily):
    """K-armed Bernoulli bandits with ``p ~ Uniform[0, 1]^K`` (Duan et al. use K in
    {5, 10, 50} and horizons in {10, 100, 500})."""

    obs_dim = 1

    def __init__(self, arms: int = 5, horizon: int = 10, dtype: torch.dtype | None = None
                 ) -> None:
        if arms < 2 or horizon < 1:
            raise ValueError(f"need arms >= 2 and horizon >= 1, got {arms}, {horizon}")
        self.arms = arms
        self.horizon = horizon
        self.dtype = dtype or torch.get_default_dtype()
        self.action_space = ActionSpace("discrete", arms)

    def sample(self, n: int, generator: torch.Generator) -> TaskParams:
        return {"probs": torch.rand(n, self.arms, generator=generator, dtype=self.dtype)}

    def env(self, params: TaskParams) -> BanditEnv:
        return BanditEnv(params, self.horizon)


def bandit_expected_return(params: TaskParams, action_probs: Tensor, horizon: int,
                           gamma: float = 1.0) -> Tensor:
    """Exact expected discounted return of memoryless policies: ``action_probs [T, K]``
    (each row sums to 1) -> ``[T]``, differentiable in ``action_probs``."""
    per_pull = (action_probs * params["probs"]).sum(dim=-1)  # [T]
    discounts = gamma ** torch.arange(horizon, dtype=per_pull.dtype)  # [H]
    return per_pull * discounts.sum()  # [T]
