"""Reference implementations (oracles) the tests check metafit against.

Kept here, apart from the package under test: ``metafit bench`` has its own copies of the
plain loop and the textbook layer order as peers in the speed table it publishes
(``metafit.cli.bench_peers``), and a change there must not change what the tests hold
metafit to.

* :class:`Problem` and :func:`make_problem`: a configuration and its seeded model and one
  batch of episodes (the numbers ``metafit bench`` draws for the same configuration);
* :func:`textbook`: a model whose conv blocks are plain ``Conv2d, BatchNorm2d, ReLU,
  MaxPool2d`` sequences (no fused kernels);
* :func:`loop_fn`: the plain per-task loop of learn2learn-style code (``functional_call``
  per task, one graph over the meta-batch, one ``autograd.grad``) for MAML, FOMAML, ANIL,
  Reptile and ProtoNet (Finn et al. 2017; Raghu et al. 2020; Nichol et al. 2018; Snell et
  al. 2017);
* :func:`max_relative_difference`: ``max |a - b| / max |b|`` over a gradient dict.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.episodes import Episodes
from metafit.models import conv4, mlp
from metafit.models.blocks import ConvBlock, StridedConvBlock

Grads = dict[str, Tensor]
GradFn = Callable[[], Grads]


@dataclass(frozen=True)
class Problem:
    """One configuration: ``problem`` ``"omniglot"`` (conv4-64 on 1x28x28 binary strokes,
    ``ways``-way) or ``"sinusoid"`` (MLP 1-40-40-1, ``shots`` support and ``queries``
    query points); ``meta_batch`` tasks; ``batching``: metafit's task batching."""

    algorithm: str
    problem: str = "omniglot"
    inner_steps: int = 1
    meta_batch: int = 32
    ways: int = 5
    shots: int = 1
    queries: int = 15
    device: str = "cpu"
    batching: str = "auto"

    @property
    def inner_lr(self) -> float:
        """0.4 on images (Finn et al. 2017, Omniglot), 0.01 on the sinusoid."""
        return 0.01 if self.problem == "sinusoid" else 0.4

    @property
    def label(self) -> str:
        """E.g. ``maml omniglot 3w1s T=3 K=2 [cuda] [vmap]`` (a test id)."""
        shape = f"{self.shots}-shot" if self.problem == "sinusoid" else f"{self.ways}w{self.shots}s"
        return (f"{self.algorithm} {self.problem} {shape} T={self.meta_batch} "
                f"K={self.inner_steps} [{self.device}] [{self.batching}]")


def make_problem(cfg: Problem, seed: int = 0) -> tuple[nn.Module, Episodes]:
    """The model (seeded initial weights) and one batch of episodes for ``cfg``, on
    ``cfg.device`` (drawn on the CPU). Images ``[T, N*K, 1, 28, 28]`` / ``[T, N*Q, 1, 28,
    28]`` are sparse binary strokes (max-pooling sees ties); sinusoid tasks follow Finn et
    al. 2017 (amplitude 0.1-5.0, phase 0-pi, x in [-5, 5]), points ``[T, K, 1]``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t, n = cfg.meta_batch, cfg.ways
    if cfg.problem == "sinusoid":
        model: nn.Module = mlp(1, 1, 40, 2)
        amp = torch.rand(t, 1, 1, generator=gen) * 4.9 + 0.1  # [T, 1, 1]
        phase = torch.rand(t, 1, 1, generator=gen) * torch.pi  # [T, 1, 1]
        xs = torch.rand(t, cfg.shots + cfg.queries, 1, generator=gen) * 10 - 5  # [T, K+Q, 1]
        ys = amp * torch.sin(xs - phase)
        k = cfg.shots
        return model.to(cfg.device), Episodes(xs[:, :k], ys[:, :k], xs[:, k:], ys[:, k:]).to(
            cfg.device)
    if cfg.problem != "omniglot":
        raise ValueError(f"unknown problem {cfg.problem!r}")
    model = conv4(None if cfg.algorithm == "protonet" else n, 1, 64, 28)
    x = (torch.rand(t, n * (cfg.shots + cfg.queries), 1, 28, 28, generator=gen) > 0.85).float()
    ks, qs = n * cfg.shots, n * cfg.queries
    sy = torch.arange(n).repeat_interleave(cfg.shots).expand(t, ks).contiguous()  # [T, N*K]
    qy = torch.arange(n).repeat_interleave(cfg.queries).expand(t, qs).contiguous()  # [T, N*Q]
    classes = torch.arange(n).expand(t, n).contiguous()  # [T, N]
    return model.to(cfg.device), Episodes(x[:, :ks], sy, x[:, ks:], qy, classes).to(cfg.device)


def to_dtype(model: nn.Module, episodes: Episodes, dtype: torch.dtype
             ) -> tuple[nn.Module, Episodes]:
    """``model`` and ``episodes`` with every floating tensor in ``dtype`` (labels kept)."""
    def cast(t: Any) -> Any:
        return t.to(dtype) if t.is_floating_point() else t

    return model.to(dtype), Episodes(cast(episodes.support_x), cast(episodes.support_y),
                                     cast(episodes.query_x), cast(episodes.query_y),
                                     episodes.classes)


def textbook(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose conv blocks are plain ``nn.Sequential(Conv2d,
    BatchNorm2d, ReLU, MaxPool2d)`` (strided: without the pooling): the same function and
    weights without metafit's fused kernels."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, (ConvBlock, StridedConvBlock)):
                setattr(module, name, nn.Sequential(*child))
    return twin


def task_loss(out: Tensor, y: Tensor) -> Tensor:
    """MSE for regression targets, cross-entropy for class labels."""
    return F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)


def protonet_loss(body: Callable[[Tensor], Tensor], sx: Tensor, sy: Tensor, qx: Tensor,
                  qy: Tensor, ways: int) -> Tensor:
    """Snell et al. 2017: query cross-entropy of negative squared distances to the class
    means of the support embeddings."""
    fs, fq = body(sx).flatten(1), body(qx).flatten(1)  # [N*K, F], [N*Q, F]
    protos = torch.stack([fs[sy == c].mean(0) for c in range(ways)])  # [N, F]
    return F.cross_entropy(-torch.cdist(fq, protos).pow(2), qy)


def _anil_query_loss(cfg: Problem, model: Any, theta: dict[str, Tensor], sx: Tensor,
                     sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    """ANIL (Raghu et al. 2020): second-order inner steps on the head only."""
    fs, fq = model.body(sx), model.body(qx)
    ph = {n[5:]: v for n, v in theta.items() if n.startswith("head.")}
    for _ in range(cfg.inner_steps):
        g = torch.autograd.grad(task_loss(functional_call(model.head, ph, (fs,)), sy),
                                list(ph.values()), create_graph=True)
        ph = {n: v - cfg.inner_lr * gv for (n, v), gv in zip(ph.items(), g, strict=True)}
    return task_loss(functional_call(model.head, ph, (fq,)), qy)


def _adapted(cfg: Problem, model: nn.Module, theta: dict[str, Tensor], sx: Tensor,
             sy: Tensor) -> dict[str, Tensor]:
    """``cfg.inner_steps`` SGD steps on the support set: second order for MAML, detached
    inner gradients for FOMAML, detached weights for Reptile."""
    second_order = cfg.algorithm == "maml"
    p = dict(theta) if cfg.algorithm != "reptile" else {
        n: v.detach().requires_grad_() for n, v in theta.items()}
    for _ in range(cfg.inner_steps):
        g = torch.autograd.grad(task_loss(functional_call(model, p, (sx,)), sy),
                                list(p.values()), create_graph=second_order)
        if not second_order:
            g = tuple(v.detach() for v in g)
        p = {n: v - cfg.inner_lr * gv for (n, v), gv in zip(p.items(), g, strict=True)}
        if cfg.algorithm == "reptile":
            p = {n: v.detach().requires_grad_() for n, v in p.items()}
    return p


def loop_fn(cfg: Problem, model: Any, episodes: Episodes) -> GradFn:
    """The plain per-task loop: the meta-gradient of the mean query loss over the tasks
    (Reptile: the mean of ``theta - theta_adapted``), keyed like ``named_parameters()``."""
    names = [n for n, _ in model.named_parameters()]

    def run() -> Grads:
        theta: dict[str, Tensor] = dict(model.named_parameters())
        losses: list[Tensor] = []
        deltas = {n: torch.zeros_like(p) for n, p in theta.items()}
        for task in episodes:
            sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y
            if cfg.algorithm == "protonet":
                losses.append(protonet_loss(model.body, sx, sy, qx, qy, cfg.ways))
            elif cfg.algorithm == "anil":
                losses.append(_anil_query_loss(cfg, model, theta, sx, sy, qx, qy))
            elif cfg.algorithm == "reptile":
                p = _adapted(cfg, model, theta, sx, sy)
                for n in names:
                    deltas[n] += theta[n].detach() - p[n].detach()
            else:
                p = _adapted(cfg, model, theta, sx, sy)
                losses.append(task_loss(functional_call(model, p, (qx,)), qy))
        if cfg.algorithm == "reptile":
            return {n: d / len(episodes) for n, d in deltas.items()}
        grads = torch.autograd.grad(torch.stack(losses).mean(), [theta[n] for n in names],
                                    allow_unused=True, materialize_grads=True)
        return dict(zip(names, grads, strict=True))
    return run


def max_relative_difference(a: Grads, b: Grads) -> float:
    """``max |a - b| / max |b|`` over every parameter (b: the reference)."""
    scale = max(float(v.abs().max()) for v in b.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale
