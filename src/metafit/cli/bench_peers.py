"""The implementations ``metafit bench`` compares, each a ``GradFn`` over one batch.

* ``metafit``: ``Algorithm.meta_gradients`` (optionally replayed as a CUDA graph);
* ``higher`` (Grefenstette et al. 2019, ``innerloop_ctx``, the MAML example's per-task
  loop with a ``backward()`` per task);
* ``torchopt``: TorchOpt's functional API (``torchopt.sgd`` + ``apply_updates`` over a
  parameter tuple, ``functional_call`` forwards), one task after another;
* ``loop``: the plain PyTorch per-task loop that learn2learn-style code runs
  (``functional_call``, one graph over the meta-batch, one backward), and the only peer for
  ProtoNet, which has no inner loop for ``higher`` or TorchOpt to differentiate.

The peers run on the textbook conv4 layer order (:func:`textbook`), which is what their
examples define; every function returns gradients keyed like ``model.named_parameters()``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.algorithms import build_algorithm, get_algorithm
from metafit.cli.bench_options import PEER_NAMES
from metafit.cli.bench_problems import BenchConfig, GradFn, Grads, make_problem
from metafit.episodes import Episodes
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.execution.settings import Batching, Execution
from metafit.models.base import FewShotModel
from metafit.models.blocks import ConvBlock, StridedConvBlock


def _loss(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)


def protonet_loss(body: Callable[[Tensor], Tensor], sx: Tensor, sy: Tensor, qx: Tensor,
                   qy: Tensor, ways: int) -> Tensor:
    fs, fq = body(sx).flatten(1), body(qx).flatten(1)  # [N*K, F], [N*Q, F]
    protos = torch.stack([fs[sy == c].mean(0) for c in range(ways)])  # [N, F]
    return F.cross_entropy(-torch.cdist(fq, protos).pow(2), qy)


def metafit_fn(cfg: BenchConfig, model: nn.Module, episodes: Episodes) -> GradFn:
    """metafit's ``meta_gradients``, re-keyed like ``model.named_parameters()``."""
    options: dict[str, object] = {}
    if cfg.algorithm != "protonet":
        options = {"inner_lr": cfg.inner_lr, "inner_steps": cfg.inner_steps}
    if cfg.algorithm == "reptile":  # the peers compute no query metrics: neither do we
        options["query_metrics"] = False
    vmapped = get_algorithm(cfg.algorithm).batch_form == "vmap"
    batching = cast(Batching, cfg.batching if vmapped else "auto")
    options["execution"] = Execution(batching, cfg.workers)
    algo = build_algorithm(cfg.algorithm, model, **options)
    meta_gradients = GraphedMetaGradients(algo) if cfg.cuda_graph else algo.meta_gradients

    def run() -> Grads:
        grads, _ = meta_gradients(episodes)
        return {n[len("model."):]: g for n, g in grads.items() if n.startswith("model.")}
    return run


# -- peers ------------------------------------------------------------------------------
def _zero_grads(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


def _collect(model: nn.Module) -> Grads:
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
            for n, p in model.named_parameters()}


def higher_fn(cfg: BenchConfig, module: nn.Module, episodes: Episodes) -> GradFn:
    """The ``higher`` MAML example's loop (``innerloop_ctx``, ``backward()`` per task)."""
    model = cast(FewShotModel, module)
    import higher  # the `bench` extra

    t = len(episodes)
    second_order = cfg.algorithm in ("maml", "anil")

    def run() -> Grads:
        _zero_grads(model)
        if cfg.algorithm == "protonet":
            raise NotImplementedError
        for task in episodes:
            sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y
            if cfg.algorithm == "anil":
                fs, fq = model.body(sx), model.body(qx)
                inner = torch.optim.SGD(model.head.parameters(), lr=cfg.inner_lr)
                with higher.innerloop_ctx(model.head, inner, copy_initial_weights=False) as (
                        fhead, diffopt):
                    for _ in range(cfg.inner_steps):
                        diffopt.step(_loss(fhead(fs), sy))
                    (_loss(fhead(fq), qy) / t).backward()
                continue
            inner = torch.optim.SGD(model.parameters(), lr=cfg.inner_lr)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False,
                                      track_higher_grads=second_order) as (fmodel, diffopt):
                for _ in range(cfg.inner_steps):
                    diffopt.step(_loss(fmodel(sx), sy))
                if cfg.algorithm == "reptile":
                    for p, q in zip(model.parameters(), fmodel.parameters(), strict=True):
                        delta = (p.detach() - q.detach()) / t
                        p.grad = delta if p.grad is None else p.grad + delta
                    continue
                query = _loss(fmodel(qx), qy) / t
                if second_order:
                    query.backward()
                else:  # FOMAML: the gradient at the adapted weights
                    grads = torch.autograd.grad(query, list(fmodel.parameters()))
                    for p, g in zip(model.parameters(), grads, strict=True):
                        p.grad = g if p.grad is None else p.grad + g
        return _collect(model)
    return run


def torchopt_fn(cfg: BenchConfig, module: nn.Module, episodes: Episodes) -> GradFn:
    """TorchOpt's functional API: ``torchopt.sgd`` updates of a parameter tuple."""
    model = cast(FewShotModel, module)
    import torchopt  # the `bench` extra

    t = len(episodes)
    names = [n for n, _ in model.named_parameters()]
    head_names = [n for n in names if n.startswith("head.")]
    second_order = cfg.algorithm in ("maml", "anil")

    def run() -> Grads:
        _zero_grads(model)
        theta: dict[str, Tensor] = dict(model.named_parameters())
        for task in episodes:
            sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y
            adapt = head_names if cfg.algorithm == "anil" else names
            if cfg.algorithm == "anil":
                fs, fq = model.body(sx), model.body(qx)

                def fwd(p: tuple[Tensor, ...], x: Tensor) -> Tensor:
                    return functional_call(model.head, {n[5:]: v for n, v in
                                                        zip(head_names, p, strict=True)}, (x,))
                sxx, qxx = fs, fq
            else:
                def fwd(p: tuple[Tensor, ...], x: Tensor) -> Tensor:
                    return functional_call(model, dict(zip(names, p, strict=True)), (x,))
                sxx, qxx = sx, qx
            params = tuple(theta[n] for n in adapt)
            if cfg.algorithm == "reptile":
                params = tuple(p.detach().requires_grad_() for p in params)
            opt = torchopt.sgd(lr=cfg.inner_lr)
            state = opt.init(params)
            for _ in range(cfg.inner_steps):
                grads = torch.autograd.grad(_loss(fwd(params, sxx), sy), params,
                                            create_graph=second_order)
                if not second_order:
                    grads = tuple(g.detach() for g in grads)
                updates, state = opt.update(grads, state, inplace=False)
                params = torchopt.apply_updates(params, updates, inplace=False)
                if cfg.algorithm == "reptile":
                    params = tuple(p.detach().requires_grad_() for p in params)
            if cfg.algorithm == "reptile":
                for n, q in zip(adapt, params, strict=True):
                    p = theta[n]
                    delta = (p.detach() - q.detach()) / t
                    p.grad = delta if p.grad is None else p.grad + delta
                continue
            (_loss(fwd(params, qxx), qy) / t).backward()
        return _collect(model)
    return run


def loop_fn(cfg: BenchConfig, module: nn.Module, episodes: Episodes) -> GradFn:
    """The plain learn2learn-style loop: ``functional_call`` per task, one graph for the
    meta-batch, one ``autograd.grad``."""
    model = cast(FewShotModel, module)
    names = [n for n, _ in model.named_parameters()]
    second_order = cfg.algorithm in ("maml", "anil")

    def run() -> Grads:
        theta: dict[str, Tensor] = dict(model.named_parameters())
        losses: list[Tensor] = []
        deltas = {n: torch.zeros_like(p) for n, p in theta.items()}
        for task in episodes:
            sx, sy, qx, qy = task.support_x, task.support_y, task.query_x, task.query_y
            if cfg.algorithm == "protonet":
                losses.append(protonet_loss(model.body, sx, sy, qx, qy, cfg.ways))
                continue
            if cfg.algorithm == "anil":
                fs, fq = model.body(sx), model.body(qx)
                ph = {n[5:]: theta[n] for n in names if n.startswith("head.")}
                for _ in range(cfg.inner_steps):
                    g = torch.autograd.grad(_loss(functional_call(model.head, ph, (fs,)), sy),
                                            list(ph.values()), create_graph=True)
                    ph = {n: v - cfg.inner_lr * gv for (n, v), gv in zip(ph.items(), g,
                                                                         strict=True)}
                losses.append(_loss(functional_call(model.head, ph, (fq,)), qy))
                continue
            p: dict[str, Tensor] = dict(theta) if cfg.algorithm != "reptile" else {
                n: v.detach().requires_grad_() for n, v in theta.items()}
            for _ in range(cfg.inner_steps):
                g = torch.autograd.grad(_loss(functional_call(model, p, (sx,)), sy),
                                        list(p.values()), create_graph=second_order)
                if not second_order:
                    g = tuple(v.detach() for v in g)
                p = {n: v - cfg.inner_lr * gv for (n, v), gv in zip(p.items(), g, strict=True)}
                if cfg.algorithm == "reptile":
                    p = {n: v.detach().requires_grad_() for n, v in p.items()}
            if cfg.algorithm == "reptile":
                for n in names:
                    deltas[n] += theta[n].detach() - p[n].detach()
                continue
            losses.append(_loss(functional_call(model, p, (qx,)), qy))
        if cfg.algorithm == "reptile":
            return {n: d / len(episodes) for n, d in deltas.items()}
        grads = torch.autograd.grad(torch.stack(losses).mean(), [theta[n] for n in names],
                                    allow_unused=True, materialize_grads=True)
        return dict(zip(names, grads, strict=True))
    return run


PEERS: dict[str, Callable[[BenchConfig, nn.Module, Episodes], GradFn]] = {
    "higher": higher_fn,
    "torchopt": torchopt_fn,
    "loop": loop_fn,
}
assert tuple(PEERS) == PEER_NAMES  # the options module lists them without importing torch
IMPLEMENTATIONS: dict[str, Callable[[BenchConfig, nn.Module, Episodes], GradFn]] = {
    "metafit": metafit_fn, **PEERS}



def peers_for(cfg: BenchConfig, wanted: Sequence[str]) -> list[str]:
    """The peers that implement ``cfg.algorithm`` (ProtoNet: the plain loop only)."""
    return [p for p in wanted if cfg.algorithm != "protonet" or p == "loop"]


def textbook(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose :class:`~metafit.models.blocks.ConvBlock` s are plain
    ``nn.Sequential(Conv2d, BatchNorm2d, ReLU, MaxPool2d)``: the conv4 the peers' own
    examples define (e.g. higher's MAML Omniglot example). Same function, same weights."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, (ConvBlock, StridedConvBlock)):
                setattr(module, name, nn.Sequential(*child))
    return twin


def fresh(cfg: BenchConfig, impl: str, seed: int, dtype: torch.dtype | None = None
           ) -> tuple[GradFn, nn.Module, Episodes]:
    model, episodes = make_problem(cfg, seed)
    if dtype is not None:  # the same weights and inputs (and regression targets) in dtype
        def cast(t: Tensor) -> Tensor:
            return t.to(dtype) if t.is_floating_point() else t

        model = model.to(dtype)
        episodes = Episodes(cast(episodes.support_x), cast(episodes.support_y),
                            cast(episodes.query_x), cast(episodes.query_y), episodes.classes)
    if impl != "metafit":
        model = textbook(model)
    return IMPLEMENTATIONS[impl](cfg, model, episodes), model, episodes
