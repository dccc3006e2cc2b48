"""ProMP (Rothfuss et al. 2019): the LVC inner loss against REINFORCE, the meta-gradient of
the ProMP objective against finite differences of an exact formulation, the clip, the
KL penalty, and Adam's state in the checkpoint.

The exact check uses an "exact batch": a one-step problem (a bandit: constant observation,
K actions with expected rewards ``p_a``) whose batch holds every action once with the
advantage ``K pi_old(a) p_a``. With the sampling policy's probabilities as weights, every
sampled mean of the code becomes the expectation over actions, so the LVC inner loss *is*
``-J(theta) = -sum_a pi_theta(a) p_a`` as a function of theta (the stop-gradient and the
importance ratio cancel the weights), and the clipped query term, inside the clip range,
is ``-J(theta'(theta))``. With horizon 1, LVC's Hessian is the exact Hessian of ``J``, so
the autograd gradient of :func:`promp_objective` must equal finite differences of::

    F(theta) = -mean_T J(theta + alpha grad J(theta)) + eta KL(pi_theta_o || pi_theta)

computed with plain autograd on ``J`` (no LVC, no inner_update), while REINFORCE's inner
loss, which drops the score outer product, must be visibly off.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from metafit.rl import MAMLRL, CategoricalMLPPolicy, GaussianMLPPolicy, Nav2d, TaskSampler
from metafit.rl.maml import MetaEpisode
from metafit.rl.objectives import lvc_losses, reinforce_losses
from metafit.rl.policies import per_task, policy_output
from metafit.rl.promp import (
    ProMPOuterStep,
    ProMPSettings,
    clipped_surrogate_losses,
    promp_objective,
)
from metafit.rl.trajectories import Trajectories
from metafit.runs.directory import RunDir, load_checkpoint
from metafit.training.rl import RLTrainer
from test_rl_training import tiny

DT = torch.float64
K, TASKS, ALPHA = 4, 2, 0.7


def _policy(seed: int = 0) -> CategoricalMLPPolicy:
    return CategoricalMLPPolicy(1, K, hidden=(3,),
                                generator=torch.Generator().manual_seed(seed)).to(DT)


def _probs(policy: CategoricalMLPPolicy, theta: dict[str, Tensor]) -> Tensor:
    """Each task's action probabilities ``[T, K]`` under ``theta [T, *param]``."""
    obs = torch.ones(TASKS, 1, 1, dtype=DT)  # [T, B=1, obs]
    return torch.softmax(policy_output(policy, theta, obs), dim=-1)[:, 0]


def _exact_batch(probs_old: Tensor, p: Tensor) -> Trajectories:
    """Every action once per task, advantage ``K pi_old(a) p_a`` (module docstring)."""
    actions = torch.arange(K).expand(1, TASKS, K)  # [H=1, T, B=K]
    ones = torch.ones(1, TASKS, K, dtype=DT)
    return Trajectories(observations=torch.ones(1, TASKS, K, 1, dtype=DT), actions=actions,
                        rewards=ones, masks=ones, dones=torch.zeros(1, TASKS, K, dtype=torch.bool),
                        advantages=(K * probs_old * p).unsqueeze(0).detach())


def _exact_objective(policy, theta: dict[str, Tensor], theta_o: dict[str, Tensor],
                     p: Tensor, eta: float) -> Tensor:
    """F(theta) of the module docstring, by plain autograd on the exact return."""
    per = per_task(theta, TASKS)
    leaves = {n: v.detach().requires_grad_() if not v.requires_grad else v
              for n, v in per.items()}
    j = (_probs(policy, leaves) * p).sum()  # sum over tasks of J_t
    grads = torch.autograd.grad(j, list(leaves.values()), create_graph=True)
    adapted = {n: v + ALPHA * g for (n, v), g in zip(leaves.items(), grads, strict=True)}
    after = (_probs(policy, adapted) * p).sum(dim=-1).mean()
    q_o = _probs(policy, per_task(theta_o, TASKS))  # [T, K]
    q = _probs(policy, leaves)
    kl = (q_o * (q_o.log() - q.log())).sum(dim=-1).mean()
    return -after + eta * kl


def _episode(algo: MAMLRL, theta_o: dict[str, Tensor], p: Tensor) -> MetaEpisode:
    """The exact batches of pi_theta_o (support) and of its exact adaptation (query)."""
    policy = algo.policy
    per = {n: v.detach().requires_grad_() for n, v in per_task(theta_o, TASKS).items()}
    grads = torch.autograd.grad((_probs(policy, per) * p).sum(), list(per.values()))
    adapted = {n: (v + ALPHA * g).detach() for (n, v), g in zip(per.items(), grads,
                                                                   strict=True)}
    support = _exact_batch(_probs(policy, per).detach(), p)
    query = _exact_batch(_probs(policy, adapted).detach(), p)
    return MetaEpisode((support,), query)


def _grad(algo: MAMLRL, episode: MetaEpisode, olds, settings: ProMPSettings
          ) -> list[Tensor]:
    loss = promp_objective(algo, episode, olds, settings).loss
    return list(torch.autograd.grad(loss, list(algo.policy.parameters())))


@pytest.mark.parametrize("shift", [0.0, 0.05])
def test_promp_meta_gradient_matches_finite_differences_of_the_exact_objective(
        shift: float) -> None:
    """At the sampling parameters (first PPO step) and away from them (later steps: the
    KL term's gradient is no longer 0 and the inner step is importance-weighted)."""
    policy = _policy()
    p = torch.tensor([[0.1, 0.9, 0.4, 0.2], [0.8, 0.3, 0.5, 0.1]], dtype=DT)  # [T, K]
    theta_o = {n: v.detach().clone() for n, v in policy.named_parameters()}
    lvc = MAMLRL(policy, inner_lr=ALPHA, inner_objective="lvc")
    episode = _episode(lvc, theta_o, p)
    olds = lvc.sampling_outputs(episode)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # move theta: the ratios stay inside the (wide) clip range
        for v in policy.parameters():
            v.add_(shift * torch.randn(v.shape, generator=gen, dtype=DT))
    eta = 0.5
    settings = ProMPSettings(clip_eps=0.9, inner_kl_penalty=eta)
    auto = _grad(lvc, episode, olds, settings)
    objective = promp_objective(lvc, episode, olds, settings)
    assert float(objective.clip_fraction.max()) == 0.0
    theta = {n: v.detach().clone() for n, v in policy.named_parameters()}
    torch.testing.assert_close(objective.loss,
                               _exact_objective(policy, theta, theta_o, p, eta))
    eps = 1e-6
    for (name, _), g in zip(policy.named_parameters(), auto, strict=True):
        fd = torch.zeros_like(g)
        for i in range(g.numel()):
            values = []
            for sign in (1.0, -1.0):
                moved = {n: v.clone() for n, v in theta.items()}
                moved[name].view(-1)[i] += sign * eps
                values.append(float(_exact_objective(policy, moved, theta_o, p, eta).detach()))
            fd.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
        torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-9)
    assert max(float(g.abs().max()) for g in auto) > 1e-2  # a gradient worth checking
    # REINFORCE's inner loss drops grad log pi grad log pi^T A: visibly another gradient
    vpg = MAMLRL(policy, inner_lr=ALPHA, inner_objective="vpg")
    other = _grad(vpg, episode, olds, settings)
    diff = max(float((a - b).abs().max()) for a, b in zip(auto, other, strict=True))
    assert diff > 1e-2 * max(float(g.abs().max()) for g in auto)
    # the KL term: its gradient is eta grad KL(pi_o || pi), 0 at the sampling point
    free = _grad(lvc, episode, olds, ProMPSettings(clip_eps=0.9, inner_kl_penalty=0.0))
    kl_grad = [(a - b) / eta for a, b in zip(auto, free, strict=True)]
    leaves = [v.detach().clone().requires_grad_() for v in policy.parameters()]
    named = dict(zip(theta, leaves, strict=True))
    q_o = _probs(policy, per_task(theta_o, TASKS))
    q = _probs(policy, per_task(named, TASKS))
    kl = (q_o * (q_o.log() - q.log())).sum(dim=-1).mean()
    expected = torch.autograd.grad(kl, leaves)
    for a, b in zip(kl_grad, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)
    size = max(float(g.abs().max()) for g in expected)
    assert (size < 1e-12) if shift == 0.0 else (size > 1e-4)


def _nav(inner_objective: str) -> tuple[MAMLRL, MetaEpisode]:
    family = Nav2d(horizon=8, dtype=DT)
    env = family.env(TaskSampler(family, seed=2).sample(3))
    policy = GaussianMLPPolicy(2, 2, hidden=(8,),
                               generator=torch.Generator().manual_seed(2)).to(DT)
    algo = MAMLRL(policy, inner_lr=0.3, inner_objective=inner_objective)
    return algo, algo.sample(env, 5, torch.Generator().manual_seed(3))


def test_the_lvc_inner_step_is_reinforces_at_the_sampling_parameters() -> None:
    lvc, episode = _nav("lvc")
    vpg = MAMLRL(lvc.policy, inner_lr=0.3, inner_objective="vpg")
    support = episode.supports[0]
    leaves = {n: v.clone().requires_grad_() for n, v in lvc.initial_params(3, False).items()}
    a = lvc_losses(lvc.policy, leaves, support)
    b = reinforce_losses(lvc.policy, leaves, support)
    assert not torch.allclose(a, b)  # the values differ (-mean A against -mean log pi A)
    for ga, gb in zip(torch.autograd.grad(a.sum(), list(leaves.values())),
                      torch.autograd.grad(b.sum(), list(leaves.values())), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-14)
    for n, v in lvc.adapted(episode, graph=False).items():  # the same adapted policy
        torch.testing.assert_close(v, vpg.adapted(episode, graph=False)[n])
    # the second-order meta-gradients differ by the score outer-product term
    g_lvc, _ = lvc.meta_gradients(episode)
    g_vpg, _ = vpg.meta_gradients(episode)
    diff = max(float((g_lvc[n] - g_vpg[n]).abs().max()) for n in g_lvc)
    assert diff > 1e-3 * max(float(g.abs().max()) for g in g_lvc.values())
    with pytest.raises(ValueError, match="inner_objective"):
        MAMLRL(lvc.policy, inner_objective="dice")


def test_the_clip_zeroes_the_gradient_of_steps_outside_the_range() -> None:
    """Four cases (A > 0 or < 0, ratio above 1 + eps or below 1 - eps): the clip is active
    (gradient 0) only where it makes the objective smaller (PPO's pessimistic bound)."""
    policy = _policy(seed=1)
    ones = torch.ones(1, TASKS, K, dtype=DT)
    actions = torch.arange(K).expand(1, TASKS, K)
    obs = torch.ones(1, TASKS, K, 1, dtype=DT)
    theta = {n: v.detach().clone().requires_grad_()
             for n, v in per_task(dict(policy.named_parameters()), TASKS).items()}
    logp = torch.log_softmax(policy_output(policy, theta, obs), dim=-1).detach()
    taken = logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)  # [1, T, K]
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1, 0.9, 1.5, 0.5], dtype=DT).view(1, TASKS, K)
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 2.0, -2.0], dtype=DT).view(1, TASKS,
                                                                                  K)
    active = torch.tensor([1, 1, 0, 0, 0, 0, 1, 1], dtype=DT).view(1, TASKS, K)
    # old log-probabilities that give each taken action the wanted ratio pi / pi_old: the
    # taken action's set, the others scaled to sum to 1 with it
    target = taken - ratio.log()  # [1, T, K]
    assert bool((target < 0).all())
    shift = torch.log1p(-target.exp()) - torch.log1p(-taken.exp())  # [1, T, K]
    old = logp + shift.unsqueeze(-1)
    old.scatter_(-1, actions.unsqueeze(-1), target.unsqueeze(-1))
    torch.testing.assert_close(torch.logsumexp(old, dim=-1), torch.zeros(1, TASKS, K,
                                                                        dtype=DT))
    batch = Trajectories(obs, actions, ones, ones, torch.zeros_like(ones, dtype=torch.bool),
                         adv)
    losses, fraction = clipped_surrogate_losses(policy, theta, batch, old, 0.2)
    torch.testing.assert_close(fraction, active.mean(dim=(0, 2)))
    grads = torch.autograd.grad(losses.sum(), list(theta.values()))
    out = policy_output(policy, theta, obs)
    r = torch.exp(policy.log_prob(out, actions) - policy.log_prob(old, actions))
    inside = -(r * adv * (1 - active)).mean(dim=(0, 2))  # only the unclipped steps
    expected = torch.autograd.grad(inside.sum(), list(theta.values()))
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14)
    assert max(float(g.abs().max()) for g in grads) > 1e-3
    clipped_value = torch.where(active.bool(), ratio.clamp(0.8, 1.2) * adv, ratio * adv)
    torch.testing.assert_close(losses, -clipped_value.mean(dim=(0, 2)))


def test_the_outer_step_improves_its_objective_and_keeps_adams_state() -> None:
    algo, episode = _nav("lvc")
    step = ProMPOuterStep(algo, ProMPSettings(clip_eps=0.2, ppo_steps=3, lr=1e-2))
    before = [v.detach().clone() for v in algo.policy.parameters()]
    metrics = step.step(algo, episode)
    assert metrics["loss_after"] < metrics["loss"] and metrics["grad_norm"] > 0
    assert metrics["inner_kl"] > 0 and 0 <= metrics["clip_fraction"] <= 1
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, algo.policy.parameters(),
                                                                strict=True))
    state = step.state_dict()["state"]
    assert len(state) == len(before) and all(float(s["step"]) == 3 for s in state.values())
    again = ProMPOuterStep(algo, ProMPSettings(ppo_steps=3, lr=1e-2))
    again.load_state_dict(step.state_dict())
    assert float(again.optimizer.state_dict()["state"][0]["step"]) == 3
    with pytest.raises(ValueError, match="clip_eps"):
        ProMPSettings(clip_eps=1.0)
    other, _ = _nav("lvc")
    with pytest.raises(ValueError, match="built for another learner"):
        step.step(other, episode)


def test_a_promp_checkpoint_holds_adams_moments(tmp_path: Path) -> None:
    recipe = tiny("rl_nav2d_promp", "iterations=2", "checkpoint_every=2")
    RLTrainer(recipe, tmp_path / "run", progress=False).fit()
    run = RunDir(tmp_path / "run")
    optimizer = load_checkpoint(run.checkpoint("last"))["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == recipe.outer_lr == 1e-3
    steps = {float(s["step"]) for s in optimizer["state"].values()}
    assert steps == {2.0 * recipe.ppo_steps}  # two meta-batches of 5 PPO steps
    assert all(float(s["exp_avg_sq"].abs().sum()) > 0 for s in optimizer["state"].values())
    train = [r for r in run.read_metrics() if r["split"] == "train"]
    assert {"loss", "loss_after", "inner_kl", "clip_fraction", "grad_norm"} <= set(train[0])
