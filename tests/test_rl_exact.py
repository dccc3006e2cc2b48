"""The meta-gradient of MAML-RL against exact policy evaluation on a tiny tabular MDP.

1. Exact: with the inner loss ``-J`` (``J`` the exact expected return,
   :func:`tabular_expected_return`), the meta-objective ``mean_i J_i(theta'_i(theta))`` is a
   smooth deterministic function; its autograd gradient through :func:`inner_update`
   (two inner steps, second order) must equal central finite differences in float64.
2. Sampled: the gradient of the sampled REINFORCE loss, and of the sampled outer surrogate
   through an exact inner step, must agree in expectation with the exact gradients
   (z-tests over many independent batches), while the first-order meta-gradient, which
   drops the inner Hessian, must be told apart by the same test.
"""

from __future__ import annotations

import torch
from torch import Tensor

from metafit.functional import Params, Rates
from metafit.rl import (
    CategoricalMLPPolicy,
    TabularMDP,
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    gae,
    inner_update,
    per_task,
    policy_output,
    reinforce_losses,
    rollout,
    surrogate_losses,
    tabular_expected_return,
)
from metafit.rl.trajectories import Trajectories

STATES, ACTIONS, HORIZON = 3, 2, 3
DT = torch.float64


def _problem(seed: int = 0) -> tuple[TabularMDP, dict[str, Tensor], CategoricalMLPPolicy]:
    family = TabularMDP(STATES, ACTIONS, HORIZON, dtype=DT)
    tasks = family.sample(2, torch.Generator().manual_seed(seed))
    policy = CategoricalMLPPolicy(STATES, ACTIONS, hidden=(4,),
                                  generator=torch.Generator().manual_seed(seed)).to(DT)
    return family, tasks, policy


def _exact_returns(policy: CategoricalMLPPolicy, tasks: dict[str, Tensor], p: Params) -> Tensor:
    """``J_i`` of each task's policy ``p [T, *param]``: ``[T]``."""
    t = tasks["rewards"].shape[0]
    obs = torch.eye(STATES, dtype=DT).expand(t, STATES, STATES)  # [T, S(=B), S]
    probs = torch.softmax(policy_output(policy, p, obs), dim=-1)  # [T, S, A]
    return tabular_expected_return(tasks, probs, HORIZON)


def _adapt_exactly(policy: CategoricalMLPPolicy, tasks: dict[str, Tensor], theta: Params,
                   lr: float, steps: int, create_graph: bool) -> Params:
    params = per_task(theta, tasks["rewards"].shape[0])
    for k in range(steps):
        params = inner_update(params, lambda p: -_exact_returns(policy, tasks, p), k,
                              Rates(lr), create_graph=create_graph)
    return params


def _meta_objective(policy, tasks, theta: Params, lr: float, steps: int) -> Tensor:
    adapted = _adapt_exactly(policy, tasks, theta, lr, steps, create_graph=True)
    return _exact_returns(policy, tasks, adapted).mean()


def _theta(policy: CategoricalMLPPolicy) -> Params:
    return {n: p.detach().clone().requires_grad_() for n, p in policy.named_parameters()}


def test_maml_meta_gradient_of_the_exact_return_matches_finite_differences() -> None:
    _, tasks, policy = _problem()
    lr, steps, eps = 0.5, 2, 1e-6
    theta = _theta(policy)
    value = _meta_objective(policy, tasks, theta, lr, steps)
    names = list(theta)
    auto = torch.autograd.grad(value, [theta[n] for n in names])
    first = _adapt_exactly(policy, tasks, theta, lr, steps, create_graph=False)
    first_order = torch.autograd.grad(_exact_returns(policy, tasks, first).mean(),
                                      [theta[n] for n in names])
    for name, g_auto, g_first in zip(names, auto, first_order, strict=True):
        fd = torch.zeros_like(g_auto)
        for i in range(fd.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                moved = {n: p.detach().clone() for n, p in theta.items()}
                moved[name].view(-1)[i] += sign * eps
                shifted.append(float(_meta_objective(policy, tasks, moved, lr, steps).detach()))
            fd.view(-1)[i] = (shifted[0] - shifted[1]) / (2 * eps)
        torch.testing.assert_close(g_auto, fd, rtol=1e-6, atol=1e-9)
        if name == "logits.0.weight":  # the inner Hessian term matters: FO is visibly off
            assert (g_auto - g_first).abs().max() > 1e-3 * g_auto.abs().max()
    assert max(float(g.abs().max()) for g in auto) > 1e-2  # a gradient worth checking


def _batch(family, tasks, policy, params: Params, n: int, gen: torch.Generator,
           weights: Tensor) -> Trajectories:
    """n trajectories per task, advantages ``G_t - V(s_t)`` (gamma = lambda = 1) with a
    baseline fitted elsewhere (``weights``), so the gradient estimate is unbiased."""
    batch = rollout(family.env(tasks), policy, params, n, gen)
    values = torch.einsum("htbf,tf->htb", baseline_features(batch.observations, batch.masks),
                          weights)
    return batch.replace(advantages=gae(batch.rewards, values, batch.masks, 1.0, 1.0))


def _baseline_weights(family, tasks, policy, params: Params, gen: torch.Generator) -> Tensor:
    batch = rollout(family.env(tasks), policy, params, 2000, gen)
    returns = discounted_returns(batch.rewards, batch.masks, 1.0)
    return fit_linear_baseline(baseline_features(batch.observations, batch.masks), returns,
                               batch.masks, reg=1e-3)


def _z(samples: list[Tensor], exact: Tensor) -> tuple[Tensor, Tensor]:
    """|mean - exact| / standard error of the mean, and the standard errors."""
    stacked = torch.stack(samples)  # [M, ...]
    se = stacked.std(dim=0) / len(samples) ** 0.5
    return (stacked.mean(dim=0) - exact).abs() / se, se


def test_sampled_reinforce_gradient_is_the_exact_policy_gradient_in_expectation() -> None:
    family, tasks, policy = _problem(seed=1)
    theta = _theta(policy)
    per = {n: p.detach() for n, p in per_task(theta, 2).items()}  # [T, *param]
    gen = torch.Generator().manual_seed(2)
    weights = _baseline_weights(family, tasks, policy, per, gen)
    leaves = {n: p.clone().requires_grad_() for n, p in per.items()}
    exact = torch.autograd.grad(-_exact_returns(policy, tasks, leaves).sum() / HORIZON,
                                list(leaves.values()))
    samples: list[list[Tensor]] = [[] for _ in leaves]
    for _ in range(60):
        batch = _batch(family, tasks, policy, per, 1000, gen, weights)
        grads = torch.autograd.grad(reinforce_losses(policy, leaves, batch).sum(),
                                    list(leaves.values()))
        for store, g in zip(samples, grads, strict=True):
            store.append(g)
    for store, g_exact in zip(samples, exact, strict=True):
        z, se = _z(store, g_exact)
        assert float(z.max()) < 5.0
        assert float(se.max()) < 0.1 * float(torch.cat([e.flatten() for e in exact]).abs().max())


def test_sampled_outer_surrogate_gives_the_exact_meta_gradient_in_expectation() -> None:
    family, tasks, policy = _problem(seed=3)
    lr = 2.0
    theta = _theta(policy)
    names = list(theta)
    exact = torch.autograd.grad(-_meta_objective(policy, tasks, theta, lr, 1) / HORIZON,
                                [theta[n] for n in names])
    gen = torch.Generator().manual_seed(4)
    adapted = _adapt_exactly(policy, tasks, theta, lr, 1, create_graph=True)  # [T, *param]
    fixed = {n: p.detach() for n, p in adapted.items()}
    weights = _baseline_weights(family, tasks, policy, fixed, gen)
    second: list[list[Tensor]] = [[] for _ in names]
    first: list[list[Tensor]] = [[] for _ in names]
    adapted_fo = _adapt_exactly(policy, tasks, theta, lr, 1, create_graph=False)
    for _ in range(60):
        batch = _batch(family, tasks, policy, fixed, 1000, gen, weights)
        for store, params in ((second, adapted), (first, adapted_fo)):
            loss = surrogate_losses(policy, params, batch).loss
            grads = torch.autograd.grad(loss, [theta[n] for n in names], retain_graph=True)
            for s, g in zip(store, grads, strict=True):
                s.append(g)
    z_second = [_z(s, e)[0] for s, e in zip(second, exact, strict=True)]
    z_first = [_z(s, e)[0] for s, e in zip(first, exact, strict=True)]
    assert max(float(z.max()) for z in z_second) < 5.0
    assert max(float(z.max()) for z in z_first) > 10.0  # the test can see a wrong gradient
