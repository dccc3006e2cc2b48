"""A process's block of a meta-batch under ``torchrun``: meta-RL's task parallelism.

Every rank draws the *whole* meta-batch of T tasks from the same seeded
:class:`~metafit.rl.tasks.TaskSampler` (so the task and rollout streams are those of one
process) and keeps the contiguous block ``start:stop`` of it
(:func:`metafit.distributed.shard`). A rank rolls out, adapts and scores only its block;
what the outer step needs of the whole batch (the task-mean gradient, every
Hessian-vector product of the KL, the line search's losses and KLs, Reptile's mean
displacement) is a sum over blocks of per-block sums divided by T: one ``all_reduce``
each (:meth:`TaskShard.sum`). Every rank then takes the same step and the parameters
stay identical.

The rollouts stay those of one process: the policy's forward pass runs on the block
only, but the random draws (actions, environment noise) are taken for all T tasks,
exactly as one process takes them, and the block's rows kept (:func:`pad_tasks`; the
other rows act with a zero output and are thrown away). Drawing T tasks' noise and
stepping a tensor environment for all T costs little next to the policy's forward and
backward passes, which are split. A run on N processes is therefore the one-process run
up to the order of floating-point sums (the block sums and the all-reduce add the same
terms in another order), not a different run.

Shapes: T tasks in the meta-batch, ``Tb = stop - start`` in the block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import Tensor

from metafit.distributed import DistContext, shard

__all__ = ["TaskShard", "local_sums", "pad_tasks"]


@dataclass(frozen=True)
class TaskShard:
    """Rank ``ctx.rank``'s block ``start:stop`` of a meta-batch of ``total`` tasks.

    Build it with :meth:`of`; pass it to :meth:`MAMLRL.sample
    <metafit.rl.maml.MAMLRL.sample>`, :func:`~metafit.rl.trpo.trpo_step` and
    :func:`~metafit.rl.reptile.reptile_step`.
    """

    start: int
    stop: int
    total: int
    ctx: DistContext

    @classmethod
    def of(cls, ctx: DistContext, total: int) -> TaskShard:
        """The block of ``ctx.rank`` when ``total`` tasks are split over ``ctx.world_size``
        ranks in contiguous blocks (the first ``total % world`` ranks get one more).

        Raises:
            ValueError: fewer tasks than ranks (a rank would have none).
        """
        if total < ctx.world_size:
            raise ValueError(f"meta_batch ({total}) must be at least the number of "
                             f"processes ({ctx.world_size}): every rank needs a task")
        block = shard(total, ctx.rank, ctx.world_size)
        return cls(block.start, block.stop, total, ctx)

    @property
    def size(self) -> int:
        """Tb, the tasks of this block."""
        return self.stop - self.start

    @property
    def block(self) -> slice:
        """The block's rows of a ``[T, ...]`` tensor."""
        return slice(self.start, self.stop)

    def sum(self, tensor: Tensor) -> Tensor:
        """The sum of ``tensor`` over all ranks (a new tensor; ``tensor`` is left as it is).
        With one process, ``tensor`` itself."""
        if not self.ctx.enabled:
            return tensor
        out = tensor.detach().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def mean_over_tasks(self, per_task: Tensor) -> Tensor:
        """The mean over the whole meta-batch of this block's ``per_task`` values
        ``[Tb, ...]``: ``sum over ranks of their block sums / T`` (``[...]``)."""
        return self.sum(per_task.sum(dim=0)) / self.total


def pad_tasks(block: Tensor, shard: TaskShard) -> Tensor:
    """``block [Tb, ...]`` placed at its rows of a zero ``[T, ...]`` tensor (the shape one
    process works on), so that a random draw shaped like it is one process's draw."""
    full = block.new_zeros((shard.total, *block.shape[1:]))
    full[shard.block] = block
    return full


def local_sums(values: Tensor, shard: TaskShard | None) -> Tensor:
    """Per-task ``values [Tb]`` as this rank's share of their meta-batch mean:
    ``values.sum() / T`` (sums over the ranks add up to the mean); with no shard, the
    plain mean (one process, as before sharding existed)."""
    if shard is None:
        return values.mean()
    return values.sum() / shard.total

