"""Reference meta-gradients (oracles) that the tests hold metafit to.

Written apart from metafit and from the peers that ``metafit bench`` times
(``metafit.cli.bench_peers``), and in another formulation than either: every task's
meta-gradient is taken on its own, by its own ``autograd.grad`` (Reptile: by
``torch.optim.SGD`` on a copy of the model), and the meta-gradient is their mean. The
textbook definitions, for ``K`` inner steps of rate ``a`` on the support loss ``L_s`` and
the query loss ``L_q``:

* MAML (Finn et al. 2017): ``phi = theta - a grad L_s``, ``K`` times, differentiated
  through; the task's meta-gradient is ``d L_q(phi) / d theta``;
* FOMAML: the same steps, not differentiated through; ``grad L_q`` at ``phi``;
* ANIL (Raghu et al. 2020): MAML's steps on the head only, over the body's features;
  ``d L_q / d theta`` for the body and the head;
* Reptile (Nichol et al. 2018): ``theta - phi`` after ``K`` plain SGD steps;
* ProtoNet (Snell et al. 2017): ``d L_q / d theta`` of the nearest-class-mean classifier
  (negative squared euclidean distances as logits).

Also here: :class:`Problem` and :func:`make_problem` (a configuration, its seeded model and
one batch of episodes), :func:`textbook` (conv blocks as plain ``nn.Sequential`` layers),
:func:`to_dtype` and :func:`max_relative_difference`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.episodes import Episode, Episodes
from metafit.models import conv4, mlp
from metafit.models.blocks import ConvBlock, StridedConvBlock

Grads = dict[str, Tensor]


@dataclass(frozen=True)
class Problem:
    """``problem``: ``"omniglot"`` (conv4-64, ``ways``-way, 1x28x28 images) or
    ``"sinusoid"`` (MLP 1-40-40-1, regression); ``shots`` / ``queries`` examples per class
    (sinusoid: per task); ``batching``: the task batching metafit is asked for."""

    algorithm: str
    problem: str
    inner_steps: int
    meta_batch: int
    ways: int = 5
    shots: int = 1
    queries: int = 15
    device: str = "cpu"
    batching: str = "auto"

    @property
    def inner_lr(self) -> float:
        """The inner rate: Finn et al.'s 0.4 for Omniglot, 0.01 for the sinusoid."""
        return {"sinusoid": 0.01}.get(self.problem, 0.4)

    @property
    def label(self) -> str:
        """A test id, e.g. ``maml omniglot 3w1s T=3 K=2 [cuda] [vmap]``."""
        parts = [self.algorithm, self.problem, f"{self.ways}w{self.shots}s",
                 f"T={self.meta_batch}", f"K={self.inner_steps}", f"[{self.device}]",
                 f"[{self.batching}]"]
        if self.problem == "sinusoid":
            parts[2] = f"{self.shots}-shot"
        return " ".join(parts)


# -- data ----------------------------------------------------------------------------------
def _sinusoid_episodes(cfg: Problem, gen: torch.Generator) -> Episodes:
    """Finn et al. 2017: ``A sin(x - p)``, ``A`` in [0.1, 5], ``p`` in [0, pi], ``x`` in
    [-5, 5]; points ``[T, K, 1]`` and ``[T, Q, 1]``."""
    t, k = cfg.meta_batch, cfg.shots
    amplitude, phase = torch.rand(2, t, 1, 1, generator=gen).unbind(0)
    x = torch.empty(t, k + cfg.queries, 1).uniform_(-5.0, 5.0, generator=gen)
    y = (0.1 + 4.9 * amplitude) * torch.sin(x - torch.pi * phase)
    return Episodes(x[:, :k], y[:, :k], x[:, k:], y[:, k:])


def _stroke_episodes(cfg: Problem, gen: torch.Generator) -> Episodes:
    """Sparse binary 1x28x28 images (max-pooling meets ties, as on real strokes), labels
    ``0..N-1`` in class order; ``[T, N*K, ...]`` support and ``[T, N*Q, ...]`` query.

    One draw for both sets, each pixel on above 0.85: the numbers these tests have always
    used. Other draws can put float32 near-ties under a max-pool, which metafit's fused
    conv kernel and the textbook block round apart and so route FOMAML's gradient through
    different pixels (seen: relative differences up to 0.4 at T=4; none in float64)."""
    t, n = cfg.meta_batch, cfg.ways

    def labels(per_class: int) -> Tensor:
        return torch.arange(n).repeat_interleave(per_class).repeat(t, 1)

    strokes = torch.rand(t, n * (cfg.shots + cfg.queries), 1, 28, 28, generator=gen) > 0.85
    support, query = strokes.float().split([n * cfg.shots, n * cfg.queries], dim=1)
    return Episodes(support, labels(cfg.shots), query, labels(cfg.queries),
                    torch.arange(n).repeat(t, 1))


def make_problem(cfg: Problem, seed: int = 0) -> tuple[nn.Module, Episodes]:
    """``cfg``'s model (initial weights from ``torch.manual_seed(seed)``) and one batch of
    its episodes (from a generator seeded ``seed``, on the CPU), both on ``cfg.device``."""
    gen = torch.Generator().manual_seed(seed)
    if cfg.problem == "sinusoid":
        episodes = _sinusoid_episodes(cfg, gen)
        torch.manual_seed(seed)
        model: nn.Module = mlp(1, 1, 40, 2)
    elif cfg.problem == "omniglot":
        episodes = _stroke_episodes(cfg, gen)
        torch.manual_seed(seed)
        model = conv4(cfg.ways if cfg.algorithm != "protonet" else None, 1, 64, 28)
    else:
        raise ValueError(f"no such problem: {cfg.problem!r}")
    return model.to(cfg.device), episodes.to(cfg.device)


def to_dtype(model: nn.Module, episodes: Episodes, dtype: torch.dtype
             ) -> tuple[nn.Module, Episodes]:
    """``model`` and ``episodes`` in ``dtype`` (integer labels and classes as they are)."""
    tensors = [episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y]
    converted = [v.to(dtype) if v.is_floating_point() else v for v in tensors]
    return model.to(dtype), Episodes(*converted, classes=episodes.classes)


def textbook(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in which every :class:`ConvBlock` and
    :class:`StridedConvBlock` is replaced by a plain ``nn.Sequential`` of its layers
    (``Conv2d, BatchNorm2d, ReLU[, MaxPool2d]``, applied in that order): the same weights
    and function, none of metafit's fused kernels."""
    copied = copy.deepcopy(model)
    found = [(owner, name, child) for owner in copied.modules()
             for name, child in owner.named_children()
             if isinstance(child, (ConvBlock, StridedConvBlock))]
    for owner, name, child in found:
        owner.register_module(name, nn.Sequential(*child.children()))
    return copied


# -- losses --------------------------------------------------------------------------------
def task_loss(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error on real-valued targets, cross-entropy on class labels."""
    if y.is_floating_point():
        return F.mse_loss(out, y)
    return F.cross_entropy(out, y)


def protonet_loss(body: Callable[[Tensor], Tensor], sx: Tensor, sy: Tensor, qx: Tensor,
                  qy: Tensor, ways: int) -> Tensor:
    """Snell et al. 2017: the query cross-entropy of the logits ``-|f(q) - c_k|^2``, ``c_k``
    the mean embedding of class ``k``'s support examples (a one-hot average)."""
    support, query = body(sx).flatten(1), body(qx).flatten(1)
    member = F.one_hot(sy, ways).to(support.dtype)  # [N*K, N]
    centres = (member.t() @ support) / member.sum(0).unsqueeze(1)  # [N, F]
    logits = -(query.unsqueeze(1) - centres.unsqueeze(0)).square().sum(-1)  # [N*Q, N]
    return F.cross_entropy(logits, qy)


# -- one task's meta-gradient --------------------------------------------------------------
def _gradient(loss: Tensor, wrt: dict[str, Tensor]) -> Grads:
    """``d loss / d wrt`` by name; zeros where ``loss`` does not depend on a tensor."""
    got = torch.autograd.grad(loss, list(wrt.values()), allow_unused=True)
    return {name: torch.zeros_like(w) if g is None else g
            for (name, w), g in zip(wrt.items(), got, strict=True)}


def _adapt(net: nn.Module, weights: dict[str, Tensor], x: Tensor, y: Tensor, cfg: Problem,
           second_order: bool) -> dict[str, Tensor]:
    """``cfg.inner_steps`` steps of gradient descent on ``task_loss(net(x), y)`` from
    ``weights``; ``second_order``: the steps stay differentiable (their gradients keep
    their graph), else each step's gradient is a constant."""
    for _ in range(cfg.inner_steps):
        loss = task_loss(functional_call(net, weights, (x,)), y)
        slopes = torch.autograd.grad(loss, list(weights.values()), create_graph=second_order)
        weights = {name: w - cfg.inner_lr * slope
                   for (name, w), slope in zip(weights.items(), slopes, strict=True)}
    return weights


def maml(cfg: Problem, model: nn.Module, task: Episode) -> Grads:
    """``d L_q(phi) / d theta``, ``phi``: the differentiable inner steps from ``theta``."""
    theta = dict(model.named_parameters())
    phi = _adapt(model, theta, task.support_x, task.support_y, cfg, second_order=True)
    return _gradient(task_loss(functional_call(model, phi, (task.query_x,)), task.query_y),
                     theta)


def fomaml(cfg: Problem, model: nn.Module, task: Episode) -> Grads:
    """``grad L_q`` at ``phi``, ``phi``: the inner steps from a detached copy of ``theta``."""
    start = {name: w.detach().requires_grad_() for name, w in model.named_parameters()}
    phi = _adapt(model, start, task.support_x, task.support_y, cfg, second_order=False)
    return _gradient(task_loss(functional_call(model, phi, (task.query_x,)), task.query_y),
                     phi)


def anil(cfg: Problem, model: nn.Module, task: Episode) -> Grads:
    """MAML on the head over the body's support and query features, differentiated
    into the body too."""
    theta = dict(model.named_parameters())
    body, head = model.get_submodule("body"), model.get_submodule("head")
    head_theta = {name.removeprefix("head."): w for name, w in theta.items()
                  if name.startswith("head.")}
    features = body(task.support_x)
    head_phi = _adapt(head, head_theta, features, task.support_y, cfg, second_order=True)
    query = functional_call(head, head_phi, (body(task.query_x),))
    return _gradient(task_loss(query, task.query_y), theta)


def reptile(cfg: Problem, model: nn.Module, task: Episode) -> Grads:
    """``theta - phi``, ``phi``: ``torch.optim.SGD`` on a copy of the model, one support
    batch a step."""
    learner = copy.deepcopy(model)
    optimiser = torch.optim.SGD(learner.parameters(), lr=cfg.inner_lr)
    for _ in range(cfg.inner_steps):
        optimiser.zero_grad()
        task_loss(learner(task.support_x), task.support_y).backward()
        optimiser.step()
    adapted = dict(learner.named_parameters())
    return {name: w.detach() - adapted[name].detach() for name, w in model.named_parameters()}


def protonet(cfg: Problem, model: nn.Module, task: Episode) -> Grads:
    """``d L_q / d theta`` of the prototype classifier (no inner steps)."""
    loss = protonet_loss(model.get_submodule("body"), task.support_x, task.support_y,
                         task.query_x, task.query_y, cfg.ways)
    return _gradient(loss, dict(model.named_parameters()))


TASK_GRADIENTS: dict[str, Callable[[Problem, nn.Module, Episode], Grads]] = {
    "maml": maml, "fomaml": fomaml, "anil": anil, "reptile": reptile, "protonet": protonet}


# -- the meta-batch ------------------------------------------------------------------------
def meta_gradient(cfg: Problem, model: nn.Module, episodes: Episodes) -> Grads:
    """The mean over the tasks of ``episodes`` of each task's meta-gradient (computed one
    task at a time), keyed like ``model.named_parameters()``."""
    per_task = [TASK_GRADIENTS[cfg.algorithm](cfg, model, task) for task in episodes]
    return {name: torch.stack([g[name] for g in per_task]).mean(0) for name in per_task[0]}


def max_relative_difference(a: Grads, b: Grads) -> float:
    """The largest ``|a - b|`` over all tensors, relative to the largest ``|b|`` (``b``:
    the reference)."""
    worst = max(float((a[name] - b[name]).abs().max()) for name in b)
    return worst / (max(float(w.abs().max()) for w in b.values()) or 1.0)
