"""Correctness of every algorithm's meta-gradient, checked against independent
formulations: finite differences, closed forms, torch.func, and plain-PyTorch loops that
mutate deep copies of the model (the way the papers describe the algorithms)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

from metafit import functional as mf
from metafit.algorithms import (
    ANIL,
    FOMAML,
    MAML,
    Algorithm,
    FineTune,
    MetaSGD,
    ProtoNet,
    Reptile,
)
from metafit.episodes import Episodes
from metafit.models import conv4, mlp
from metafit.models.base import FewShotModel


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def classification_episodes(
    tasks: int = 2, ways: int = 2, shots: int = 3, queries: int = 4, dim: int = 3, seed: int = 0
) -> Episodes:
    """Gaussian blobs with a class-dependent mean; labels 0..ways-1 per task."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(tasks, ways, dim, generator=gen)  # [T, N, D]

    def draw(per_class: int) -> tuple[Tensor, Tensor]:
        y = torch.arange(ways).repeat_interleave(per_class).expand(tasks, -1)  # [T, N*k]
        noise = 0.5 * torch.randn(tasks, ways * per_class, dim, generator=gen)
        x = means.gather(1, y.unsqueeze(-1).expand(-1, -1, dim)) + noise  # [T, N*k, D]
        return x, y.clone()

    sx, sy = draw(shots)
    qx, qy = draw(queries)
    classes = torch.stack([torch.randperm(10, generator=gen)[:ways] for _ in range(tasks)])
    return Episodes(sx, sy, qx, qy, classes)


def regression_episodes(tasks: int = 2, shots: int = 5, queries: int = 6, dim: int = 3,
                        seed: int = 0) -> Episodes:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(tasks, dim, 1, generator=gen)  # [T, D, 1]
    sx = torch.randn(tasks, shots, dim, generator=gen)  # [T, K, D]
    qx = torch.randn(tasks, queries, dim, generator=gen)  # [T, Q, D]
    return Episodes(sx, sx @ w, qx, qx @ w)


def tiny_mlp(seed: int = 0, out: int | None = 2) -> FewShotModel:
    torch.manual_seed(seed)
    return mlp(in_features=3, out_features=out, hidden=8, depth=1)


def finite_difference(algo: Algorithm, episodes: Episodes, eps: float = 1e-6) -> dict[str, Tensor]:
    """Central differences of ``algo.meta_loss`` w.r.t. every trainable entry."""
    result = {}
    for name, p in algo.trainable_parameters().items():
        g = torch.zeros_like(p)
        flat, g_flat = p.data.view(-1), g.view(-1)
        for i in range(flat.numel()):
            orig = float(flat[i])
            with torch.no_grad():
                flat[i] = orig + eps
            plus = float(algo.meta_loss(episodes)[0].detach())
            with torch.no_grad():
                flat[i] = orig - eps
            minus = float(algo.meta_loss(episodes)[0].detach())
            with torch.no_grad():
                flat[i] = orig
            g_flat[i] = (plus - minus) / (2 * eps)
        result[name] = g
    return result


def rel_error(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    assert set(a) == set(b)
    num = sum(float((a[n] - b[n]).pow(2).sum()) for n in a) ** 0.5
    den = sum(float(b[n].pow(2).sum()) for n in b) ** 0.5
    return num / den


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: MAML(m, inner_lr=0.5, inner_steps=1), id="maml-1"),
        pytest.param(lambda m: MAML(m, inner_lr=0.5, inner_steps=3), id="maml-3"),
        pytest.param(lambda m: MAML(m, inner_lr=0.5, inner_steps=2, lslr=True), id="maml++-2"),
        pytest.param(lambda m: MetaSGD(m, inner_lr=0.5, inner_steps=2), id="metasgd-2"),
        pytest.param(lambda m: ANIL(m, inner_lr=0.5, inner_steps=2), id="anil-2"),
        pytest.param(lambda m: ProtoNet(m), id="protonet"),
        pytest.param(lambda m: ProtoNet(m, distance="cosine", scale=5.0), id="protonet-cos"),
        pytest.param(lambda m: ProtoNet(m, distance="cosine", scale=5.0, learn_scale=True),
                     id="protonet-cos-learned"),
    ],
)
def test_meta_gradient_matches_finite_differences(make) -> None:  # type: ignore[no-untyped-def]
    algo = make(tiny_mlp())
    episodes = classification_episodes()
    grads, _ = algo.meta_gradients(episodes)
    assert rel_error(grads, finite_difference(algo, episodes)) < 1e-4


def test_maml_regression_matches_finite_differences() -> None:
    algo = MAML(tiny_mlp(out=1), inner_lr=0.05, inner_steps=2)
    episodes = regression_episodes()
    grads, metrics = algo.meta_gradients(episodes)
    assert set(metrics) == {"loss", "mse"}
    assert rel_error(grads, finite_difference(algo, episodes)) < 1e-4


def test_maml_linear_regression_closed_form() -> None:
    """One step on MSE: meta-grad = (I - a H_s) g_q(theta'), H_s = 2/K Xs^T Xs."""
    torch.manual_seed(0)
    model = FewShotModel(nn.Identity(), nn.Linear(3, 1), 3)
    a = 0.1
    episodes = regression_episodes(tasks=1, shots=5, queries=7)
    grads, _ = MAML(model, inner_lr=a, inner_steps=1).meta_gradients(episodes)

    def augmented(x: Tensor) -> Tensor:
        return torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)  # [B, D+1]

    xs, ys = augmented(episodes.support_x[0]), episodes.support_y[0]  # [K, 4], [K, 1]
    xq, yq = augmented(episodes.query_x[0]), episodes.query_y[0]  # [Q, 4], [Q, 1]
    theta = torch.cat([model.head.weight.detach().flatten(), model.head.bias.detach()])[:, None]
    g_s = 2 / len(xs) * xs.T @ (xs @ theta - ys)  # [4, 1]
    h_s = 2 / len(xs) * xs.T @ xs  # [4, 4]
    adapted = theta - a * g_s
    g_q = 2 / len(xq) * xq.T @ (xq @ adapted - yq)  # [4, 1]
    expected = ((torch.eye(4) - a * h_s) @ g_q).flatten()  # [4]
    got = torch.cat([grads["model.head.weight"].flatten(), grads["model.head.bias"]])
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_matches_torch_func_grad_of_grad(steps: int) -> None:
    model, a = tiny_mlp(), 0.3
    episodes = classification_episodes(tasks=3)
    grads, _ = MAML(model, inner_lr=a, inner_steps=steps).meta_gradients(episodes)
    theta = {n: p.detach() for n, p in model.named_parameters()}

    def outer(p: dict[str, Tensor], sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        for _ in range(steps):
            g = grad(lambda q: F.cross_entropy(functional_call(model, q, (sx,)), sy))(p)
            p = {n: p[n] - a * g[n] for n in p}
        return F.cross_entropy(functional_call(model, p, (qx,)), qy)

    per_task = [grad(outer)(theta, t.support_x, t.support_y, t.query_x, t.query_y)
                for t in episodes]
    expected = {"model." + n: torch.stack([g[n] for g in per_task]).mean(0) for n in theta}
    assert rel_error(grads, expected) < 1e-10


def sgd_adapt(model: nn.Module, x: Tensor, y: Tensor, lr: float, steps: int) -> nn.Module:
    """Independent reference: a deep copy trained in place by torch.optim.SGD."""
    clone = copy.deepcopy(model)
    optimizer = torch.optim.SGD(clone.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        mf.loss_fn(clone(x), y).backward()
        optimizer.step()
    return clone


def test_fomaml_equals_plain_gradient_at_adapted_weights() -> None:
    model, lr, steps = tiny_mlp(), 0.4, 3
    episodes = classification_episodes(tasks=3)
    grads, _ = FOMAML(model, inner_lr=lr, inner_steps=steps).meta_gradients(episodes)
    expected = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for t in episodes:
        adapted = sgd_adapt(model, t.support_x, t.support_y, lr, steps)
        adapted.zero_grad()
        mf.loss_fn(adapted(t.query_x), t.query_y).backward()
        for n, p in adapted.named_parameters():
            expected[n] += p.grad / len(episodes)
    assert rel_error(grads, {"model." + n: g for n, g in expected.items()}) < 1e-10
    # MAML(first_order=True) is the same algorithm
    same, _ = MAML(model, inner_lr=lr, inner_steps=steps, first_order=True).meta_gradients(
        episodes)
    assert all(torch.equal(same[n], grads[n]) for n in grads)


def test_second_order_differs_from_first_order() -> None:
    model = tiny_mlp()
    episodes = classification_episodes()
    second, _ = MAML(model, inner_lr=0.5, inner_steps=2).meta_gradients(episodes)
    first, _ = FOMAML(model, inner_lr=0.5, inner_steps=2).meta_gradients(episodes)
    assert rel_error(first, second) > 1e-3


def test_reptile_direction_is_theta_minus_sgd_adapted_theta() -> None:
    model, lr, steps = tiny_mlp(), 0.2, 4
    episodes = classification_episodes(tasks=3)
    grads, metrics = Reptile(model, inner_lr=lr, inner_steps=steps).meta_gradients(episodes)
    expected = {"model." + n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for t in episodes:
        adapted = dict(sgd_adapt(model, t.support_x, t.support_y, lr, steps).named_parameters())
        for n, p in model.named_parameters():
            expected["model." + n] += (p.detach() - adapted[n].detach()) / len(episodes)
    assert rel_error(grads, expected) < 1e-10
    assert set(metrics) == {"loss", "accuracy"}


def test_anil_adapts_only_the_head_and_matches_head_only_maml() -> None:
    model = tiny_mlp()
    episodes = classification_episodes()
    algo = ANIL(model, inner_lr=0.5, inner_steps=2)
    learner = algo.adapt(episodes.support_x[0], episodes.support_y[0], steps=3)
    for n, p in model.named_parameters():
        if n.startswith("body."):
            assert torch.equal(learner.params[n], p.detach())
        else:
            assert not torch.allclose(learner.params[n], p.detach())
    # reference: the full-model functional inner loop restricted to head.* names
    theta = dict(model.named_parameters())
    head = [n for n in theta if n.startswith("head.")]
    losses = []
    for t in episodes:
        adapted = mf.inner_loop(model, theta, t.support_x, t.support_y, 2, 0.5, adapt_names=head)
        losses.append(mf.task_loss(model, adapted, t.query_x, t.query_y))
    loss = torch.stack(losses).mean()
    expected = dict(zip(["model." + n for n in theta],
                        torch.autograd.grad(loss, list(theta.values())), strict=True))
    grads, _ = algo.meta_gradients(episodes)
    assert rel_error(grads, expected) < 1e-10
    assert all(float(grads[n].abs().sum()) > 0 for n in grads)


def test_metasgd_rates_get_gradients_and_frozen_rates_match_maml() -> None:
    model = tiny_mlp()
    episodes = classification_episodes()
    algo = MetaSGD(model, inner_lr=0.3, inner_steps=2)
    grads, _ = algo.meta_gradients(episodes)
    rate_names = [n for n in grads if n.startswith("lr.")]
    assert rate_names and "lr.body__1__weight" in rate_names
    assert all(float(grads[n].abs().sum()) > 0 for n in rate_names)
    assert all(grads[n].shape == algo.lr[n[3:]].shape for n in rate_names)
    algo.lr.requires_grad_(False)
    frozen, _ = algo.meta_gradients(episodes)
    maml, _ = MAML(model, inner_lr=0.3, inner_steps=2).meta_gradients(episodes)
    assert set(frozen) == set(maml)
    assert rel_error(frozen, maml) < 1e-12
    # first order: the rates still learn through lr * grad
    fo, _ = MetaSGD(model, inner_lr=0.3, first_order=True).meta_gradients(episodes)
    assert all(float(fo[n].abs().sum()) > 0 for n in rate_names)


def test_lslr_rates_get_gradients_and_start_as_maml() -> None:
    model = tiny_mlp()
    episodes = classification_episodes()
    algo = MAML(model, inner_lr=0.3, inner_steps=2, lslr=True)
    grads, _ = algo.meta_gradients(episodes)
    rate_names = [n for n in grads if n.startswith("lslr.")]
    assert len(rate_names) == 4 and all(grads[n].shape == (2,) for n in rate_names)
    assert all(float(grads[n].abs().min()) > 0 for n in rate_names)
    maml, _ = MAML(model, inner_lr=0.3, inner_steps=2).meta_gradients(episodes)
    assert rel_error({n: grads[n] for n in maml}, maml) < 1e-12


def test_protonet_logits_are_negative_squared_distances_to_class_means() -> None:
    model = tiny_mlp()
    episodes = classification_episodes(ways=3)
    t = episodes[0]
    learner = ProtoNet(model).adapt(t.support_x, t.support_y)
    with torch.no_grad():
        fs, fq = model.body(t.support_x), model.body(t.query_x)  # [N*K, F], [N*Q, F]
        expected = torch.empty(len(fq), 3)
        for c in range(3):
            proto = fs[t.support_y == c].mean(0)
            for i in range(len(fq)):
                expected[i, c] = -((fq[i] - proto) ** 2).sum()
        torch.testing.assert_close(learner(t.query_x), expected)
    grads, _ = ProtoNet(model).meta_gradients(episodes)
    assert all(float(grads[n].abs().sum()) == 0 for n in grads if n.startswith("model.head."))
    assert all(float(grads[n].abs().sum()) > 0 for n in grads if n.startswith("model.body."))


def test_protonet_cosine_logits_are_scaled_cosines_to_class_means() -> None:
    model = tiny_mlp()
    episodes = classification_episodes(ways=3)
    t = episodes[0]
    learner = ProtoNet(model, distance="cosine", scale=7.0).adapt(t.support_x, t.support_y)
    with torch.no_grad():
        fs, fq = model.body(t.support_x), model.body(t.query_x)  # [N*K, F], [N*Q, F]
        protos = torch.stack([fs[t.support_y == c].mean(0) for c in range(3)])  # [3, F]
        expected = 7.0 * F.cosine_similarity(fq[:, None], protos[None], dim=-1)  # [N*Q, 3]
        logits = learner(t.query_x)
        torch.testing.assert_close(logits, expected)
        assert float(logits.abs().max()) <= 7.0 + 1e-5
        # the scale changes the confidence, never the ranking
        other = ProtoNet(model, distance="cosine", scale=1.0).adapt(t.support_x, t.support_y)
        assert torch.equal(other(t.query_x).argmax(-1), logits.argmax(-1))
    with pytest.raises(ValueError, match="unknown distance 'cos'.*sqeuclidean, cosine"):
        ProtoNet(model, distance="cos")
    with pytest.raises(ValueError, match="scale must be positive"):
        ProtoNet(model, distance="cosine", scale=0.0)


def test_protonet_learned_scale_starts_at_the_scale_and_is_what_adapted_heads_use() -> None:
    model = tiny_mlp()
    episodes = classification_episodes(ways=3)
    t = episodes[0]
    algo = ProtoNet(model, distance="cosine", scale=7.0, learn_scale=True)
    assert "log_scale" in algo.trainable_parameters() and algo.scale == pytest.approx(7.0)
    grads, _ = algo.meta_gradients(episodes)
    assert float(grads["log_scale"].abs()) > 0  # the loss's temperature is learned
    fixed = ProtoNet(model, distance="cosine", scale=7.0).adapt(t.support_x, t.support_y)
    with torch.no_grad():
        algo.log_scale.fill_(math.log(3.0))
        learned = algo.adapt(t.support_x, t.support_y)
        torch.testing.assert_close(learned(t.query_x), fixed(t.query_x) * 3.0 / 7.0)
    with pytest.raises(ValueError, match="learn_scale.*needs distance='cosine'"):
        ProtoNet(model, learn_scale=True)


def test_finetune_meta_gradients_are_supervised_gradients_with_global_labels() -> None:
    model = tiny_mlp()
    episodes = classification_episodes(ways=3)
    algo = FineTune(model, num_classes=10)
    grads, metrics = algo.meta_gradients(episodes)
    body, head = copy.deepcopy(model.body), copy.deepcopy(algo.pretrain_head)
    xs, ys = [], []
    for t in episodes:
        assert t.classes is not None
        for x, y in ((t.support_x, t.support_y), (t.query_x, t.query_y)):
            xs.append(x)
            ys.append(torch.tensor([int(t.classes[int(label)]) for label in y]))
    loss = F.cross_entropy(head(body(torch.cat(xs))), torch.cat(ys))
    loss.backward()
    expected = {"model.body." + n: p.grad for n, p in body.named_parameters()}
    expected |= {"pretrain_head." + n: p.grad for n, p in head.named_parameters()}
    expected |= {"model.head." + n: torch.zeros_like(p) for n, p in model.head.named_parameters()}
    assert rel_error(grads, expected) < 1e-12
    assert metrics["loss"] == pytest.approx(float(loss.detach()))
    with pytest.raises(ValueError, match="classes"):
        algo.meta_gradients(Episodes(episodes.support_x, episodes.support_y,
                                     episodes.query_x, episodes.query_y))


def test_finetune_regression_pretrains_on_pooled_points() -> None:
    model = tiny_mlp(out=1)
    episodes = regression_episodes()
    grads, _ = FineTune(model).meta_gradients(episodes)
    x = torch.cat([episodes.support_x.flatten(0, 1), episodes.query_x.flatten(0, 1)])
    y = torch.cat([episodes.support_y.flatten(0, 1), episodes.query_y.flatten(0, 1)])
    clone = copy.deepcopy(model)
    F.mse_loss(clone(x), y).backward()
    assert rel_error(grads, {"model." + n: p.grad for n, p in clone.named_parameters()}) < 1e-12


def test_inner_loop_never_mutates_the_module() -> None:
    model = tiny_mlp()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    episodes = classification_episodes()
    for algo in (MAML(model), ANIL(model), Reptile(model), MetaSGD(model)):
        algo.meta_gradients(episodes)
        algo.adapt(episodes.support_x[0], episodes.support_y[0], steps=2)
        assert all(p.grad is None for p in algo.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_finetune_adapt_fits_new_head_and_only_the_last_blocks() -> None:
    torch.manual_seed(0)
    model = conv4(out_features=5, in_channels=1, hidden=4, image_size=8, depth=2)
    x = torch.randn(6, 1, 8, 8)  # [N*K, 1, 8, 8]
    y = torch.tensor([0, 1, 2, 0, 1, 2])  # 3 ways, not the model's 5
    algo = FineTune(model, num_classes=10, inner_lr=0.05, finetune_layers=1)
    learner = algo.adapt(x, y, steps=10)
    assert learner(x).shape == (6, 3)
    assert float(mf.loss_fn(learner(x), y)) < math.log(3)
    for n, p in model.body.named_parameters():
        changed = not torch.equal(learner.params["body." + n], p.detach())
        assert changed == n.startswith("1."), n
    frozen = FineTune(model, num_classes=10, inner_lr=0.05).adapt(x, y, steps=10)
    assert all(torch.equal(frozen.params["body." + n], p.detach())
               for n, p in model.body.named_parameters())
