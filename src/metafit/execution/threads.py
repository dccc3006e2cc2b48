"""Task-parallel meta-gradients: the tasks of a meta-batch on several CPU threads.

On a CPU the tasks of a meta-batch are small (5 support and 75 query 28x28 images), so the
intra-op parallelism of one PyTorch op uses the cores poorly. Running *tasks* in parallel
instead, W worker threads with one intra-op thread each, uses them better (measured in
benchmarks/RESULTS.md). Kernels release the GIL, autograd runs a backward on the calling
thread, and every worker holds its own replica of the algorithm (``functional_call``
swaps a module's parameters while it runs, so a module cannot be shared between threads);
the replicas' parameters share storage with the original, so they never go stale.

Each task's gradient is taken on its own (``autograd.grad`` per task, graph freed at once),
so the peak memory is that of W tasks, not of the meta-batch. Worker ``w`` takes tasks
``w, w+W, ...`` in order and the partial sums are added in worker order, so results are
deterministic for a given W and equal the serial loop up to float reassociation (tested).

While a meta-batch runs on workers, the process's intra-op thread count is 1 (restored
afterwards, also on errors), so other threads doing torch work at that moment run on one
thread too.

``workers``: :func:`resolve_workers` takes the explicit count (``Execution.workers``),
else picks ``min(torch.get_num_threads(), T)`` workers on CPU and 1 (the serial loop) on a
GPU, for models with random layers (dropout: per-thread random streams would not be
reproducible) and when only one intra-op thread is available.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar, cast

import torch
from torch import Tensor, nn

from metafit.episodes import Episode, Episodes
from metafit.execution.precision import precision_context
from metafit.execution.program import BatchResult, MetaBatchProgram

__all__ = ["per_task_gradients", "resolve_workers", "share_parameters"]

P = TypeVar("P", bound=nn.Module)

_RANDOM_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_replicas: weakref.WeakKeyDictionary[nn.Module, list[nn.Module]] = weakref.WeakKeyDictionary()
_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def resolve_workers(program: nn.Module, requested: int | None, tasks: int) -> int:
    """Worker threads for a meta-batch of ``tasks`` tasks: ``requested`` (at most one per
    task), or auto (module docstring) when it is ``None``."""
    if requested is not None:
        return max(1, min(requested, tasks))
    first = next(program.parameters(), None)
    if first is not None and first.device.type != "cpu":
        return 1
    if program.training and any(isinstance(m, _RANDOM_LAYERS) and m.p > 0
                                for m in program.modules()):
        return 1
    return max(1, min(torch.get_num_threads(), tasks))


def share_parameters(replica: nn.Module, module: nn.Module) -> nn.Module:
    """Point ``replica``'s parameters and buffers (a deep copy of ``module``) at
    ``module``'s storage, with its ``requires_grad`` flags and training mode; returns
    ``replica``. A replica can
    be used by ``functional_call`` in another thread while ``module`` is in use."""
    for (_, mine), (_, theirs) in zip(replica.named_parameters(), module.named_parameters(),
                                      strict=True):
        mine.data = theirs.data
        mine.requires_grad_(theirs.requires_grad)
    for (_, mine_b), (_, theirs_b) in zip(replica.named_buffers(), module.named_buffers(),
                                          strict=True):
        mine_b.data = theirs_b.data  # an fp16 run's loss scale, updated in place
    return replica.train(module.training)


def _replicas_of(algorithm: P, count: int) -> list[P]:
    """``count`` replicas of ``algorithm`` whose parameters share its storage."""
    replicas = cast(list[P], _replicas.get(algorithm, []))
    names = [(n, p.shape) for n, p in algorithm.named_parameters()]
    if len(replicas) < count or any(
            [(n, p.shape) for n, p in r.named_parameters()] != names for r in replicas):
        replicas = [copy.deepcopy(algorithm) for _ in range(count)]
        _replicas[algorithm] = list(replicas)
    for replica in replicas[:count]:
        share_parameters(replica, algorithm)
    return replicas[:count]


def _pool(workers: int) -> ThreadPoolExecutor:
    with _pool_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="metafit-task")
        return _pools[workers]


def _run_share(
    replica: nn.Module, tasks: Sequence[Episode], intra_threads: int | None,
    precision: str = "float32",
) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
    if intra_threads is not None:
        torch.set_num_threads(intra_threads)
    total: dict[str, Tensor] = {}
    losses: list[Tensor] = []
    scores: list[Tensor] = []
    for task in tasks:
        with precision_context(precision, task.support_x.device.type):
            grads, loss, score = cast(MetaBatchProgram, replica).task_gradients(task)
        for n, g in grads.items():
            if n in total:
                total[n] += g
            else:
                total[n] = g.clone()
        losses.append(loss)
        scores.append(score)
    return total, losses, scores


def per_task_gradients(algorithm: P, episodes: Episodes, workers: int,
                       precision: str = "float32") -> BatchResult:
    """Mean over the tasks of ``task_gradients(task)`` (of the algorithm or a replica),
    the mean loss ``[]`` and the per-task scores ``[T]``.

    Runs serially in this thread for ``workers=1``, else on that many threads (module
    docstring); each task under ``precision``'s autocast
    (:func:`~metafit.execution.precision.precision_context`), entered in the thread
    that runs it.
    """
    tasks = list(episodes)
    if workers == 1:
        shares = [_run_share(algorithm, tasks, None, precision)]
    else:
        replicas = _replicas_of(algorithm, workers)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            futures = [
                _pool(workers).submit(_run_share, replica, tasks[w::workers], 1, precision)
                for w, replica in enumerate(replicas)
            ]
            shares = [f.result() for f in futures]
        finally:
            torch.set_num_threads(previous)
    total = shares[0][0]
    for other, _, _ in shares[1:]:
        for n, g in other.items():
            total[n] += g
    count = float(len(tasks))
    grads = {n: g / count for n, g in total.items()}
    losses: list[Tensor] = [torch.empty(())] * len(tasks)
    scores: list[Tensor] = [torch.empty(())] * len(tasks)
    for w, (_, share_losses, share_scores) in enumerate(shares):  # worker w: w, w+W, ...
        losses[w::len(shares)] = share_losses
        scores[w::len(shares)] = share_scores
    return grads, torch.stack(losses).mean(), torch.stack(scores)  # {..}, [], [T]
