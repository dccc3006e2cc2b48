"""The problems ``metafit bench`` times: configurations, seeded weights and episodes.

:class:`BenchConfig` names one configuration (algorithm x problem x inner steps, the
device and metafit's execution settings); :func:`make_problem` draws its model and one
batch of episodes, the same numbers on every device; :func:`default_configs` is the grid
``metafit bench`` runs. Shapes: Omniglot-like ``[T, N*K, 1, 28, 28]`` support and
``[T, N*Q, 1, 28, 28]`` query images; sinusoid ``[T, K, 1]`` and ``[T, Q, 1]`` points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metafit.algorithms import get_algorithm
from metafit.episodes import Episodes
from metafit.models import conv4, mlp

Grads = dict[str, Tensor]
GradFn = Callable[[], Grads]
#: A peer's meta-gradient may differ from metafit's by this much (relative) at most.
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
    def adapts_with_steps(self) -> bool:
        """Whether the algorithm's adaptation takes inner steps (ProtoNet's does not)."""
        return get_algorithm(self.algorithm).adapts_with_steps

    @property
    def label(self) -> str:
        """E.g. ``maml omniglot 5w1s T=32 K=1`` (plus the device and batching when they
        are not the defaults)."""
        if self.problem == "sinusoid":
            shape = f"{self.shots}-shot"
        else:
            shape = f"{self.ways}w{self.shots}s"
        steps = f" K={self.inner_steps}" if self.adapts_with_steps else ""
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


def max_relative_difference(a: Grads, b: Grads) -> float:
    """``max |a - b| / max |b|`` over every parameter (b: the reference)."""
    scale = max(float(v.abs().max()) for v in b.values()) or 1.0
    return max(float((a[n] - b[n]).abs().max()) for n in b) / scale


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so that a timer measures it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
