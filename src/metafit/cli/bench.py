"""``metafit bench``: meta-training speed against the peers, on identical weights and data.

For each configuration (algorithm x problem x inner steps) the same meta-gradient is
computed by metafit (``Algorithm.meta_gradients``) and by each peer:

* ``higher`` (Grefenstette et al. 2019, ``innerloop_ctx``, the MAML example's per-task
  loop with a ``backward()`` per task);
* ``torchopt``: TorchOpt's functional API (``torchopt.sgd`` + ``apply_updates`` over a
  parameter tuple, ``functional_call`` forwards), one task after another;
* ``loop``: the plain PyTorch per-task loop that learn2learn-style code runs
  (``functional_call``, one graph over the meta-batch, one backward), and the only peer for
  ProtoNet, which has no inner loop for ``higher`` or TorchOpt to differentiate.

All of them start from the same initial weights and one batch of episodes (the peers on
the textbook conv4 layer order, :func:`textbook`, which is what their examples define);
before timing, every peer's meta-gradient is compared with metafit's (``max |a - b| /
max |b|`` over all parameters, must be below ``1e-3``), so the speed comparison is between
equal computations (on a GPU the comparison runs in float64: cuDNN's float32 summation
order, amplified by five inner steps, differs between implementations by ~1e-3).
After one untimed call of each, timings alternate between implementations within one
process (metafit, peer 1, peer 2, ..., repeat) and report the median; tasks/s =
meta-batch / median seconds. Peak memory on a CPU is measured per implementation in a
fresh subprocess: the rise of the process's peak resident set size (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs``) over one meta-gradient after a warm-up one, with glibc's
mmap threshold fixed so that freed tensors are returned at once; metafit's is given for its
default task workers and for one worker (the peers run one task at a time). On a GPU it is
the CUDA allocator's peak over one meta-gradient.

On CUDA, ``--cuda-graph`` replays metafit's meta-gradient as a CUDA graph
(:mod:`metafit.execution.cuda_graphs`); ``--tf32`` and ``--cudnn-benchmark`` switch PyTorch's TF32
and cuDNN-autotuning settings on for every implementation alike.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.algorithms import build_algorithm, get_algorithm
from metafit.episodes import Episodes
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.execution.settings import Batching, Execution
from metafit.models import conv4, mlp
from metafit.models.base import FewShotModel
from metafit.models.blocks import ConvBlock, StridedConvBlock

__all__ = [
    "BenchConfig",
    "BenchRow",
    "PEERS",
    "default_configs",
    "format_table",
    "make_problem",
    "run_config",
]

log = logging.getLogger(__name__)

Grads = dict[str, Tensor]
GradFn = Callable[[], Grads]
AGREEMENT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    ``problem``: ``"omniglot"`` (conv4, 64 filters, 1x28x28, 5-way 1-shot, 15 queries per
    class) or ``"sinusoid"`` (MLP 1-40-40-1, 10 support and 10 query points).
    """

    algorithm: str
    problem: str = "omniglot"
    inner_steps: int = 1
    meta_batch: int = 32
    ways: int = 5
    shots: int = 1
    queries: int = 15
    device: str = "cpu"
    batching: str = "auto"
    cuda_graph: bool = False  # metafit's meta-gradient replayed as a CUDA graph
    tf32: bool = False  # float32 timings with TF32 convolutions and matrix products
    cudnn_benchmark: bool = False  # cuDNN times its algorithms and keeps the fastest
    workers: int | None = None  # metafit's task worker threads (None: auto)

    @property
    def label(self) -> str:
        """E.g. ``maml omniglot 5w1s T=32 K=1`` (plus the device and batching when they
        are not the defaults)."""
        if self.problem == "sinusoid":
            shape = f"{self.shots}-shot"
        else:
            shape = f"{self.ways}w{self.shots}s"
        steps = "" if self.algorithm == "protonet" else f" K={self.inner_steps}"
        extra = "" if self.device == "cpu" else f" [{self.device}]"
        if self.batching != "auto" and get_algorithm(self.algorithm).batch_form == "vmap":
            extra += f" [{self.batching}]"
        if self.cuda_graph:
            extra += " [graph]"
        if self.tf32:
            extra += " [tf32]"
        if self.cudnn_benchmark:
            extra += " [cudnn benchmark]"
        return f"{self.algorithm} {self.problem} {shape} T={self.meta_batch}{steps}{extra}"

    @property
    def inner_lr(self) -> float:
        """0.4 on images (Finn et al. 2017, Omniglot), 0.01 on the sinusoid."""
        return 0.01 if self.problem == "sinusoid" else 0.4


def default_configs(quick: bool = False) -> list[BenchConfig]:
    """The issue's grid: MAML, FOMAML, ANIL, Reptile (K = 1 and 5) and ProtoNet on the
    Omniglot shape; the same inner-loop methods on the sinusoid MLP. ``quick``: K=1 only,
    meta-batch 8 (a smoke run)."""
    steps = (1,) if quick else (1, 5)
    batch = 8 if quick else 32
    configs = [BenchConfig(a, "omniglot", k, batch)
               for a in ("maml", "fomaml", "anil", "reptile") for k in steps]
    configs.append(BenchConfig("protonet", "omniglot", 0, batch))
    configs += [BenchConfig(a, "sinusoid", k, batch, 1, 10, 10)
                for a in ("maml", "fomaml", "anil", "reptile") for k in steps]
    return configs


def make_problem(cfg: BenchConfig, seed: int = 0) -> tuple[nn.Module, Episodes]:
    """The model (seeded initial weights) and one batch of episodes for ``cfg``, on
    ``cfg.device`` (drawn on the CPU, so every device gets the same numbers).

    Omniglot-shaped images are sparse binary strokes (so max-pooling sees the ties that
    real characters give); sinusoid tasks follow Finn et al. 2017 (amplitude 0.1-5.0,
    phase 0-pi, x in [-5, 5]).
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    t, n = cfg.meta_batch, cfg.ways
    if cfg.problem == "sinusoid":
        model: nn.Module = mlp(1, 1, 40, 2)
        amp = torch.rand(t, 1, 1, generator=gen) * 4.9 + 0.1
        phase = torch.rand(t, 1, 1, generator=gen) * torch.pi
        xs = torch.rand(t, cfg.shots + cfg.queries, 1, generator=gen) * 10 - 5
        ys = amp * torch.sin(xs - phase)
        k = cfg.shots
        return model.to(cfg.device), Episodes(xs[:, :k], ys[:, :k], xs[:, k:], ys[:, k:]).to(
            cfg.device)
    if cfg.problem != "omniglot":
        raise ValueError(f"unknown benchmark problem {cfg.problem!r}")
    out = None if cfg.algorithm == "protonet" else n
    model = conv4(out, 1, 64, 28)
    images = (torch.rand(t, n * (cfg.shots + cfg.queries), 1, 28, 28, generator=gen) > 0.85)
    x = images.float()
    ks, qs = n * cfg.shots, n * cfg.queries
    sy = torch.arange(n).repeat_interleave(cfg.shots).expand(t, ks).contiguous()
    qy = torch.arange(n).repeat_interleave(cfg.queries).expand(t, qs).contiguous()
    classes = torch.arange(n).expand(t, n).contiguous()
    return model.to(cfg.device), Episodes(x[:, :ks], sy, x[:, ks:], qy, classes).to(cfg.device)


def _loss(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, y) if y.is_floating_point() else F.cross_entropy(out, y)


def _protonet_loss(body: Callable[[Tensor], Tensor], sx: Tensor, sy: Tensor, qx: Tensor,
                   qy: Tensor, ways: int) -> Tensor:
    fs, fq = body(sx).flatten(1), body(qx).flatten(1)  # [N*K, F], [N*Q, F]
    protos = torch.stack([fs[sy == c].mean(0) for c in range(ways)])  # [N, F]
    return F.cross_entropy(-torch.cdist(fq, protos).pow(2), qy)


# -- metafit ----------------------------------------------------------------------------
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
                losses.append(_protonet_loss(model.body, sx, sy, qx, qy, cfg.ways))
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
IMPLEMENTATIONS: dict[str, Callable[[BenchConfig, nn.Module, Episodes], GradFn]] = {
    "metafit": metafit_fn, **PEERS}


def peers_for(cfg: BenchConfig, wanted: Sequence[str]) -> list[str]:
    """The peers that implement ``cfg.algorithm`` (ProtoNet: the plain loop only)."""
    return [p for p in wanted if cfg.algorithm != "protonet" or p == "loop"]


def max_relative_difference(a: Grads, b: Grads) -> float:
    """``max |a - b| / max |b|`` over every parameter (b: the reference)."""
    scale = max(float(v.abs().max()) for v in b.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


@dataclass
class BenchRow:
    """Results of one configuration: seconds per meta-batch (median) and tasks/s per
    implementation, peak memory (MiB, when measured) and the gradient agreement of each
    peer with metafit."""

    config: BenchConfig
    seconds: dict[str, float] = field(default_factory=dict)  # float32
    agreement: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)

    def tasks_per_second(self, impl: str) -> float:
        return self.config.meta_batch / self.seconds[impl]

    def speedup(self) -> tuple[str, float]:
        """(fastest peer, metafit's tasks/s over that peer's)."""
        peers = {k: v for k, v in self.seconds.items() if k != "metafit"}
        best = min(peers, key=peers.__getitem__)
        return best, peers[best] / self.seconds["metafit"]

    def to_json(self) -> dict[str, object]:
        return {"config": asdict(self.config), "label": self.config.label,
                "seconds": self.seconds, "agreement": self.agreement,
                "peak_mib": self.peak_mib}


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


def _fresh(cfg: BenchConfig, impl: str, seed: int, dtype: torch.dtype | None = None
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


def run_config(cfg: BenchConfig, peers: Sequence[str], repeats: int = 5, seed: int = 0,
               memory: bool = False) -> BenchRow:
    """Check agreement, then time metafit and ``peers`` alternately (median of
    ``repeats``); with ``memory``, also measure peak memory in subprocesses."""
    impls = ["metafit", *peers_for(cfg, peers)]
    fns = {impl: _fresh(cfg, impl, seed)[0] for impl in impls}
    row = BenchRow(cfg)
    # On a GPU, float32 convolutions sum in an order of cuDNN's choosing, and K = 5 inner
    # steps at rate 0.4 amplify that rounding past the tolerance; there the computations
    # are compared in float64 (same weights, same data), and timed in float32.
    exact = cfg.device != "cpu"
    check = ({impl: _fresh(cfg, impl, seed, torch.float64)[0] for impl in impls} if exact
             else fns)
    reference = check["metafit"]()
    for impl in impls[1:]:
        row.agreement[impl] = max_relative_difference(check[impl](), reference)
        if row.agreement[impl] > AGREEMENT_TOLERANCE:
            raise RuntimeError(
                f"{cfg.label}: {impl}'s meta-gradient differs from metafit's by "
                f"{row.agreement[impl]:.2e} (relative), above {AGREEMENT_TOLERANCE}: the "
                "implementations do not compute the same thing")
    for impl in impls:  # untimed: lazy set-up (cuDNN plans, thread pools, a CUDA graph)
        fns[impl]()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            _synchronize(cfg.device)
            start = time.perf_counter()
            fns[impl]()
            _synchronize(cfg.device)
            times[impl].append(time.perf_counter() - start)
    row.seconds = {impl: statistics.median(v) for impl, v in times.items()}
    if memory:
        row.peak_mib = {impl: peak_memory_mib(cfg, impl, seed) for impl in impls}
        if cfg.device == "cpu":  # on a GPU metafit runs one task stream already
            row.peak_mib["metafit W=1"] = peak_memory_mib(cfg, "metafit", seed, workers=1)
    return row


def _synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


# -- memory (a subprocess per measurement on the CPU, the allocator's peak on CUDA) -----
def _cuda_peak_mib(cfg: BenchConfig, impl: str, seed: int) -> float:
    """Peak CUDA memory (MiB) one meta-gradient of ``impl`` allocates above what is live
    before it (the caching allocator's ``max_memory_allocated``, after a warm-up call).
    metafit with ``cuda_graph``: the peak of its first call, capture included (replays
    allocate nothing; the graph keeps that memory)."""
    fn, _, _ = _fresh(cfg, impl, seed)
    if not (cfg.cuda_graph and impl == "metafit"):
        fn()
    _synchronize(cfg.device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(cfg.device)
    torch.cuda.reset_peak_memory_stats(cfg.device)
    fn()
    _synchronize(cfg.device)
    return (torch.cuda.max_memory_allocated(cfg.device) - baseline) / 2**20


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def _probe(cfg: BenchConfig, impl: str, seed: int) -> float:
    fn, _, _ = _fresh(cfg, impl, seed)
    fn()  # warm-up: lazy initialisation, thread pools, replicas
    baseline = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    fn()
    return (_status_kib("VmHWM") - baseline) / 1024.0


def peak_memory_mib(cfg: BenchConfig, impl: str, seed: int = 0, workers: int | None = None
                    ) -> float:
    """Peak memory (MiB) one meta-gradient of ``impl`` adds to its process, measured in a
    fresh interpreter with this process's thread setting (``workers``: metafit's task
    workers, default auto). glibc's mmap threshold is fixed at 64 KiB there, so freed
    tensors leave the resident set at once and its peak tracks the live tensors."""
    if cfg.device.startswith("cuda"):
        return _cuda_peak_mib(cfg, impl, seed)
    if not os.path.exists("/proc/self/clear_refs"):
        return float("nan")
    code = ("import json,sys,torch;from metafit.cli import bench;"
            f"torch.set_num_threads({torch.get_num_threads()});"
            "c=bench.BenchConfig(**json.loads(sys.argv[1]));"
            "print(bench._probe(c, sys.argv[2], int(sys.argv[3])))")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cfg = replace(cfg, workers=workers)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(asdict(cfg)), impl, str(seed)],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


# -- report -------------------------------------------------------------------------------
def format_table(rows: Sequence[BenchRow], peers: Sequence[str]) -> str:
    """Markdown: tasks/s (and peak MiB) per implementation, the fastest peer's ratio and
    the largest gradient difference."""
    memory = any(r.peak_mib for r in rows)
    head = ["configuration", "metafit", *peers, "speed-up vs fastest peer", "max grad diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.config.label]
        for impl in ["metafit", *peers]:
            if impl not in r.seconds:
                cells.append("n/a")
                continue
            cell = f"{r.tasks_per_second(impl):.1f}"
            if memory and impl in r.peak_mib:
                cell += f" / {max(0.0, r.peak_mib[impl]):.0f} MiB"
            if memory and impl == "metafit" and "metafit W=1" in r.peak_mib:
                cell += f" ({max(0.0, r.peak_mib['metafit W=1']):.0f} MiB with 1 worker)"
            cells.append(cell)
        best, ratio = r.speedup()
        cells.append(f"**{ratio:.2f}x** ({best})")
        cells.append(f"{max(r.agreement.values()):.1e}" if r.agreement else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``metafit bench`` / ``python -m metafit.cli.bench``."""
    parser = build_parser(argparse.ArgumentParser(prog="metafit bench"))
    return run(parser.parse_args(argv))


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of ``metafit bench``."""
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="subset of maml fomaml anil reptile protonet (default: all)")
    parser.add_argument("--problems", nargs="+", default=None,
                        help="subset of omniglot sinusoid (default: both)")
    parser.add_argument("--steps", nargs="+", type=int, default=None,
                        help="inner steps to run (default: 1 5)")
    parser.add_argument("--meta-batch", type=int, default=None, help="tasks per batch (32)")
    parser.add_argument("--peers", nargs="+", default=list(PEERS),
                        help="peers to compare with (default: higher torchopt loop)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median)")
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak memory (a subprocess per implementation)")
    parser.add_argument("--quick", action="store_true", help="K=1, meta-batch 8: a smoke run")
    parser.add_argument("--device", default="cpu",
                        help="cpu or cuda[:N]; GPU timings synchronise before reading the "
                             "clock and peak memory is the CUDA allocator's")
    parser.add_argument("--batching", default="auto", choices=["auto", "loop", "vmap"],
                        help="metafit's task batching for MAML, FOMAML and ANIL (default: "
                             "auto: on a CPU vmap for models without convolutions, on a GPU "
                             "vmap wherever it can run)")
    parser.add_argument("--cuda-graph", action="store_true",
                        help="replay metafit's meta-gradient as a CUDA graph "
                             "(metafit.execution.cuda_graphs; MAML, FOMAML, ANIL on CUDA)")
    parser.add_argument("--tf32", action="store_true",
                        help="on CUDA, time float32 with TF32 convolutions and matrix "
                             "products (PyTorch's cuDNN default) for every implementation; "
                             "agreement is still checked in float64")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="on CUDA, let cuDNN time its convolution algorithms and keep the "
                             "fastest (torch.backends.cudnn.benchmark), for every "
                             "implementation")
    parser.add_argument("--json", dest="json_out", default=None,
                        help="write the rows as JSON to this file")
    return parser


def select_configs(args: argparse.Namespace) -> list[BenchConfig]:
    """The default grid filtered by the command-line options."""
    configs = default_configs(args.quick)
    if args.algorithms:
        configs = [c for c in configs if c.algorithm in args.algorithms]
    if args.problems:
        configs = [c for c in configs if c.problem in args.problems]
    if args.steps:
        configs = [c for c in configs if c.algorithm == "protonet" or c.inner_steps in args.steps]
    if args.meta_batch:
        configs = [BenchConfig(**{**asdict(c), "meta_batch": args.meta_batch}) for c in configs]
    configs = [BenchConfig(**{**asdict(c), "device": args.device, "batching": args.batching,
                              "cuda_graph": args.cuda_graph, "tf32": args.tf32,
                              "cudnn_benchmark": args.cudnn_benchmark})
               for c in configs]
    if args.cuda_graph:  # the others read values back from the device mid-computation
        configs = [c for c in configs if get_algorithm(c.algorithm).graphable]
    if not configs:
        raise SystemExit("metafit bench: no configuration matches the options")
    return configs


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Run the selected configurations, print the table (and write JSON)."""
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"metafit bench: unknown peer(s) {unknown}; known: {list(PEERS)}")
    for peer in ("higher", "torchopt"):
        if peer in args.peers:
            try:
                __import__(peer)
            except ImportError:
                raise SystemExit(f"metafit bench: the peer {peer!r} is not installed; "
                                 "pip install 'metafit[bench]', or leave it out with "
                                 "--peers") from None
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"metafit bench: --device {args.device}, but torch sees no CUDA "
                             "device")
        # Full float32 unless --tf32: with TF32 convolutions (cuDNN's default) the peers'
        # second-order meta-gradients differ from each other by up to 7% at K = 5; the
        # agreement check runs in float64 on a GPU either way.
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    elif args.cuda_graph or args.tf32 or args.cudnn_benchmark:
        raise SystemExit("metafit bench: --cuda-graph, --tf32 and --cudnn-benchmark need "
                         "--device cuda")
    rows: list[BenchRow] = []
    configs = select_configs(args)
    _say(f"# {len(configs)} configurations, torch {torch.__version__}, "
         f"{torch.get_num_threads()} threads")
    for i, cfg in enumerate(configs, 1):
        row = run_config(cfg, args.peers, args.repeats, memory=args.memory)
        rows.append(row)
        best, ratio = row.speedup()
        _say(f"[{i}/{len(configs)}] {cfg.label}: metafit {row.tasks_per_second('metafit'):.1f} "
             f"tasks/s, {ratio:.2f}x {best}")
        if args.json_out:  # after every row, so an interrupted run keeps what it measured
            with open(args.json_out, "w") as f:
                json.dump([r.to_json() for r in rows], f, indent=1)
    _say("\n" + format_table(rows, args.peers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
