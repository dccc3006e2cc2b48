"""Meta-training across processes and machines with ``torch.distributed`` (``torchrun``).

``metafit train`` runs unchanged under ``torchrun --nproc_per_node N`` (and multi-node
rendezvous). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group (gloo on
CPU, nccl on CUDA). Without ``WORLD_SIZE > 1`` it returns the single-process context
:data:`SINGLE` and nothing changes.

The scheme (data parallelism over the tasks of a meta-batch, no DistributedDataParallel):

* every rank holds the same meta-parameters (rank 0's, broadcast at the start);
* rank r draws its share of the meta-batch (:func:`shard_sizes`) from its own sampler,
  seeded ``seed + r * RANK_SEED_STRIDE`` (rank 0 keeps ``seed``);
* each rank's meta-gradients and metrics, means over its own tasks, are weighted by its
  task count, summed across ranks in one flat ``all_reduce`` and divided by the
  meta-batch size (:func:`all_reduce_mean`): exactly the mean over the whole meta-batch,
  also for uneven shares;
* every rank then takes the same optimizer step, so the parameters stay identical.

A failure on one rank does not hang the others for ever: torchrun stops the whole group
when a worker exits, and collectives time out after ``METAFIT_DIST_TIMEOUT`` seconds
(default 1800).
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["DistContext", "SINGLE", "RANK_SEED_STRIDE", "ENV_TIMEOUT", "init_distributed",
           "current_context", "shutdown", "exit_after_shutdown", "shard_sizes", "shard",
           "rank_seed", "all_reduce_mean", "all_reduce_mean_grads",
           "all_reduce_mean_metrics", "all_gather_object", "broadcast_object",
           "broadcast_module", "barrier", "run_on_main"]

log = logging.getLogger(__name__)

#: Rank r seeds its training sampler (and torch's generator) with ``seed + r * stride``:
#: a large odd number, so the streams of nearby seeds and ranks do not collide.
RANK_SEED_STRIDE = 1_000_003
#: Seconds a collective may wait for the other ranks before it fails.
ENV_TIMEOUT = "METAFIT_DIST_TIMEOUT"

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run.

    ``rank`` in ``0..world_size-1`` (global), ``local_rank`` on its machine (its GPU
    index), ``owns_group``: this context created the process group (and destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and prints."""
        return self.rank == 0


#: The context of a plain single-process run.
SINGLE = DistContext()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None or value == "" else int(value)


def _timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(ENV_TIMEOUT, "1800")))


def current_context() -> DistContext:
    """The context of an already initialised process group, else :data:`SINGLE`."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                       local_rank=_env_int("LOCAL_RANK", 0))


def init_distributed(device: str = "cpu") -> DistContext:
    """Join the process group torchrun describes in the environment, if any.

    With ``WORLD_SIZE`` unset or 1 (a plain run) this returns :data:`SINGLE`; with a
    process group already initialised (by the caller) it returns that group's context.
    Otherwise it calls ``init_process_group`` with backend ``nccl`` when ``device`` is a
    CUDA device (and selects ``cuda:LOCAL_RANK``), else ``gloo``.
    """
    existing = current_context()
    if existing.enabled or _env_int("WORLD_SIZE", 1) <= 1:
        return existing
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=_timeout())
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                      local_rank=local_rank, owns_group=True)
    log.debug("rank %d of %d joined the %s process group", ctx.rank, ctx.world_size, backend)
    return ctx


_destroyed: list[bool] = []  # non-empty once shutdown() destroyed a group it created


def shutdown(ctx: DistContext) -> None:
    """Destroy the process group if ``ctx`` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        _destroyed.append(True)


def exit_after_shutdown(code: int) -> None:
    """End this process at once with ``code`` if :func:`shutdown` destroyed a process group
    it created (a ``torchrun`` worker at the end of ``metafit train`` / ``evaluate``);
    otherwise return.

    Every file is written and closed by then, so only interpreter teardown is skipped
    (logging and the standard streams are flushed first). That teardown is where a 2-process
    gloo run's worker sometimes aborted after finishing its work ("terminate called without
    an active exception", SIGABRT from a C++ static destructor), which torchrun reports as
    a failed job.
    """
    if not _destroyed:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# -- sharding --------------------------------------------------------------------------
def shard_sizes(n: int, world_size: int) -> list[int]:
    """Items per rank when ``n`` items are split over ``world_size`` ranks: ``n // world``
    each, plus one for the first ``n % world`` ranks."""
    if world_size < 1 or n < 0:
        raise ValueError(f"cannot shard {n} items over {world_size} ranks")
    base, extra = divmod(n, world_size)
    return [base + (1 if r < extra else 0) for r in range(world_size)]


def shard(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous block of ``range(n)`` (blocks in rank order cover it)."""
    sizes = shard_sizes(n, world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
    start = sum(sizes[:rank])
    return range(start, start + sizes[rank])


def rank_seed(seed: int, rank: int) -> int:
    """The training-stream seed of ``rank``: ``seed`` for rank 0 (single-process runs are
    unchanged), ``seed + rank * RANK_SEED_STRIDE`` otherwise."""
    return seed + rank * RANK_SEED_STRIDE


# -- collectives -----------------------------------------------------------------------
def all_reduce_mean(grads: dict[str, Tensor], metrics: dict[str, float], weight: float,
                    total: float, ctx: DistContext
                    ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Per-rank means of gradients and metrics turned into means over all ranks' tasks,
    in ONE flat ``all_reduce``: ``sum over ranks (weight_r * v_r) / total``.

    Args:
        grads: this rank's gradients, each the mean over its ``weight`` tasks (same keys
            and shapes on every rank).
        metrics: this rank's metrics, each a mean over its tasks (same keys on every rank).
        weight: this rank's task count.
        total: the task count of all ranks together (the meta-batch).
        ctx: the distributed context; with one process the inputs are returned unchanged.

    The buffer has the gradients' dtype, at least float32 (so metrics are averaged in
    float32 next to float32 gradients).
    """
    if not ctx.enabled:
        return grads, metrics
    tensors, keys = list(grads.values()), sorted(metrics)
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors], torch.float32)
    device = tensors[0].device if tensors else _device(ctx)
    flat = torch.cat([*(t.detach().reshape(-1).to(dtype) for t in tensors),
                      torch.tensor([float(metrics[k]) for k in keys], dtype=dtype,
                                   device=device)])
    flat *= weight  # [sum numel + M]
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= total
    out, start = {}, 0
    for name, t in grads.items():
        out[name] = flat[start : start + t.numel()].view_as(t).to(t.dtype)
        start += t.numel()
    return out, {k: float(v) for k, v in zip(keys, flat[start:].tolist(), strict=True)}


def all_reduce_mean_grads(grads: dict[str, Tensor], weight: float, total: float,
                          ctx: DistContext) -> dict[str, Tensor]:
    """:func:`all_reduce_mean` of gradients alone."""
    return all_reduce_mean(grads, {}, weight, total, ctx)[0]


def all_reduce_mean_metrics(metrics: dict[str, float], weight: float, total: float,
                            ctx: DistContext) -> dict[str, float]:
    """:func:`all_reduce_mean` of metrics alone."""
    return all_reduce_mean({}, metrics, weight, total, ctx)[1]


def _device(ctx: DistContext) -> torch.device:
    """Where collective tensors live: the rank's GPU under nccl, else the CPU."""
    if ctx.enabled and dist.get_backend() == "nccl":
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def all_gather_object(obj: T, ctx: DistContext) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` with one process."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, ctx: DistContext, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (``obj`` is ignored on the others)."""
    if not ctx.enabled:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[no-any-return]


def broadcast_module(module: nn.Module, ctx: DistContext, src: int = 0) -> None:
    """Overwrite every parameter and buffer of ``module`` with rank ``src``'s values."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=src)


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (no-op with one process)."""
    if ctx.enabled:
        dist.barrier()


def run_on_main(fn: Callable[[], T], ctx: DistContext) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank; an exception raised
    by ``fn`` is raised on every rank (so no rank waits for one that failed)."""
    if not ctx.enabled:
        return fn()
    outcome: tuple[bool, Any] = (True, None)
    error: Exception | None = None
    if ctx.is_main:
        try:
            outcome = (True, fn())
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error, outcome = e, (False, _picklable(e))
    ok, value = broadcast_object(outcome, ctx)
    if error is not None:
        raise error  # rank 0: the original, with its traceback
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _picklable(error: Exception) -> Exception:
    """``error`` itself when it survives pickling, else a RuntimeError with its text."""
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")
    return error
