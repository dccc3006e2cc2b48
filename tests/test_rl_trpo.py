"""The TRPO outer step: conjugate gradient, Hessian-vector products, and one step of
MAML-TRPO (the surrogate decreases, the KL stays within max_kl), then a tiny meta-training
on 2D navigation."""

from __future__ import annotations

import torch

from metafit.rl import (
    MAMLRL,
    GaussianMLPPolicy,
    Nav2d,
    TaskSampler,
    TRPOSettings,
    adaptation_returns,
    conjugate_gradient,
    hessian_vector_product,
    trpo_step,
)
from metafit.rl.trpo import flat


def test_conjugate_gradient_solves_a_positive_definite_system() -> None:
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=gen, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=40)
    torch.testing.assert_close(a @ x, b, rtol=1e-8, atol=1e-8)
    rough = conjugate_gradient(lambda v: a @ v, b, iters=2)
    assert float((a @ rough - b).norm()) > 1e-3  # iterations are what converge it


def test_hessian_vector_product_matches_the_dense_hessian() -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(w_, c_):
        return (w_.sin().sum() * c_.square()).sum() + (w_ ** 3).sum() * c_.sum()

    v = torch.randn(10, generator=gen, dtype=torch.float64)
    hvp = hessian_vector_product(f(w, c), [w, c], damping=0.1)
    dense = torch.autograd.functional.hessian(lambda flat_: f(flat_[:6].view(3, 2), flat_[6:]),
                                              flat([w.detach(), c.detach()]))
    torch.testing.assert_close(hvp(v), dense @ v + 0.1 * v)
    torch.testing.assert_close(hvp(2 * v), 2 * (dense @ v + 0.1 * v))  # graph kept


def _nav_algo(seed: int = 0, hidden: tuple[int, ...] = (16,)) -> tuple[MAMLRL, Nav2d]:
    family = Nav2d(horizon=20)
    policy = GaussianMLPPolicy(2, 2, hidden=hidden, generator=torch.Generator().manual_seed(seed))
    return MAMLRL(policy, inner_lr=0.1, inner_steps=1), family


def test_trpo_step_lowers_the_surrogate_within_the_trust_region() -> None:
    algo, family = _nav_algo()
    env = family.env(TaskSampler(family, seed=0).sample(4))
    episode = algo.sample(env, 8, torch.Generator().manual_seed(1))
    settings = TRPOSettings(max_kl=0.01)
    start = {n: p.detach().clone() for n, p in algo.named_parameters()}
    before = algo.surrogate(episode)
    old = before.out.detach()
    metrics = trpo_step(algo, episode, settings)
    with torch.no_grad():
        after = algo.surrogate(episode, old, graph=False)  # recomputed, not trusted
    assert float(after.loss) < float(before.loss.detach())
    assert 0 < float(after.kl) <= settings.max_kl
    assert metrics["loss_after"] < metrics["loss_before"] and metrics["step_fraction"] > 0
    assert abs(metrics["loss_after"] - float(after.loss)) < 1e-6
    moved = [n for n, p in algo.named_parameters() if not torch.equal(p, start[n])]
    assert moved == [n for n, _ in algo.named_parameters()]


def test_trpo_step_takes_no_step_when_the_line_search_fails() -> None:
    algo, family = _nav_algo()
    env = family.env(TaskSampler(family, seed=0).sample(4))
    episode = algo.sample(env, 8, torch.Generator().manual_seed(1))
    start = {n: p.detach().clone() for n, p in algo.named_parameters()}
    metrics = trpo_step(algo, episode, TRPOSettings(max_kl=0.01, ls_max_steps=0))
    assert metrics["step_fraction"] == 0 and metrics["loss_after"] == metrics["loss_before"]
    assert all(torch.equal(p, start[n]) for n, p in algo.named_parameters())


def test_a_few_maml_trpo_steps_on_nav2d_learn_to_adapt() -> None:
    family = Nav2d()  # horizon 100, goals in [-0.5, 0.5]^2
    tasks = TaskSampler(family, seed=0)
    policy = GaussianMLPPolicy(2, 2, hidden=(32, 32), generator=torch.Generator().manual_seed(0))
    algo = MAMLRL(policy, inner_lr=0.1, inner_steps=1)
    held_out = family.env(tasks.fixed(20))

    def curve() -> torch.Tensor:  # mean return on held-out tasks after 0 and 1 steps
        return adaptation_returns(algo, held_out, 1, 20, torch.Generator().manual_seed(9)).mean(0)

    initial = curve()
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        trpo_step(algo, algo.sample(family.env(tasks.sample(8)), 8, gen))
    trained = curve()
    assert float(trained[1]) > float(trained[0]) + 2.0  # adaptation helps on held-out tasks
    assert float(trained[1]) > float(initial[1]) + 20.0  # and meta-training helped it
