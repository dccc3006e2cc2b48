"""Meta-reinforcement learning: families of MDPs as batched tensor environments,
functional policies, returns and advantages, and MAML with a policy-gradient inner loop
and a TRPO outer step (docs/rl.md).

Layout, lowest first:

* :mod:`.env` (the family / environment contract), :mod:`.tasks` (seeded task sampler
  with fixed evaluation tasks);
* families: :mod:`.nav2d` (2D navigation), :mod:`.bandit` (Bernoulli bandits),
  :mod:`.tabular` (random tabular MDPs, exact policy evaluation), :mod:`.pendulum`
  (Gymnasium's pendulum with a mass and a length per task);
* :mod:`.trajectories` (the batch type, ``[H, T, B, ...]``), :mod:`.policies`
  (Gaussian and categorical MLPs, run per task by ``vmap``), :mod:`.rollout`;
* :mod:`.returns` (discounted returns, GAE), :mod:`.baseline` (linear feature baseline),
  :mod:`.advantages`, :mod:`.objectives` (REINFORCE, TRPO surrogate and KL);
* :mod:`.inner` (one inner step for T tasks), :mod:`.maml` (:class:`MAMLRL`),
  :mod:`.trpo` (conjugate gradient, line search), :mod:`.evaluation`.

Gymnasium (the ``rl`` extra) is needed only by :mod:`.gym_envs`, which this package does
not import.
"""

from metafit.rl.advantages import with_advantages
from metafit.rl.bandit import Bandit, BanditEnv, bandit_expected_return
from metafit.rl.baseline import baseline_features, fit_linear_baseline, linear_baseline_values
from metafit.rl.env import ActionSpace, MDPFamily, StepResult, TaskParams, TensorEnv
from metafit.rl.evaluation import adaptation_returns
from metafit.rl.inner import inner_update
from metafit.rl.maml import MAMLRL, MetaEpisode
from metafit.rl.nav2d import Nav2d, Nav2dEnv
from metafit.rl.objectives import Surrogate, reinforce_losses, surrogate_losses
from metafit.rl.pendulum import Pendulum, PendulumEnv
from metafit.rl.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    Policy,
    per_task,
    policy_output,
)
from metafit.rl.returns import discounted_returns, gae, masked_mean, masked_normalize
from metafit.rl.rollout import rollout
from metafit.rl.tabular import TabularEnv, TabularMDP, tabular_expected_return
from metafit.rl.tasks import TaskSampler
from metafit.rl.trajectories import Trajectories
from metafit.rl.trpo import TRPOSettings, conjugate_gradient, hessian_vector_product, trpo_step

__all__ = [
    "MAMLRL", "ActionSpace", "Bandit", "BanditEnv", "CategoricalMLPPolicy",
    "GaussianMLPPolicy", "MDPFamily", "MetaEpisode", "Nav2d", "Nav2dEnv", "Pendulum",
    "PendulumEnv", "Policy", "StepResult", "Surrogate", "TRPOSettings", "TabularEnv",
    "TabularMDP", "TaskParams",
    "TaskSampler", "TensorEnv", "Trajectories", "adaptation_returns", "bandit_expected_return",
    "baseline_features", "conjugate_gradient", "discounted_returns", "fit_linear_baseline",
    "gae", "hessian_vector_product", "inner_update", "linear_baseline_values", "masked_mean",
    "masked_normalize", "per_task", "policy_output", "reinforce_losses", "rollout",
    "surrogate_losses", "tabular_expected_return", "trpo_step", "with_advantages",
]
