"""The executor: one meta-batch through an algorithm's maths, on the path the plan picks.

    grads, metrics = meta_gradients(algorithm, episodes, Execution(workers=2))

The algorithm supplies pure functions (:class:`~metafit.execution.program.
MetaBatchProgram`): ``task_gradients(task)`` and, where it has one, ``batch_gradients(
episodes, chunk_size)``. Here they are run: the batch function (``vmap`` over the tasks,
in chunks of ``vmap_chunk``) or the per-task function (serially, or on worker threads,
:mod:`metafit.execution.threads`), as :func:`~metafit.execution.plan.runs_batched` says,
under the ``precision``'s autocast (:mod:`metafit.execution.precision`).
The metrics stay tensors on the device until :func:`meta_gradients` reads them, so a CUDA
graph can capture :func:`meta_gradient_tensors` (:mod:`metafit.execution.cuda_graphs`).
"""

from __future__ import annotations

from typing import cast

from torch import Tensor, nn

from metafit.episodes import Episodes
from metafit.execution.plan import runs_batched
from metafit.execution.precision import precision_context
from metafit.execution.program import MetaBatchProgram, metric_values
from metafit.execution.settings import Execution
from metafit.execution.threads import per_task_gradients, resolve_workers

__all__ = ["meta_gradient_tensors", "meta_gradients"]


def meta_gradient_tensors(program: MetaBatchProgram, episodes: Episodes, execution: Execution
                          ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The mean meta-gradients of ``episodes`` (keyed like the program's trainable
    parameters) and the metrics ``{"loss", "accuracy" | "mse"}`` as device tensors.
    With ``precision`` bf16 / fp16 every forward pass, inner and outer, runs under
    ``torch.autocast`` (worker threads enter it too: autocast is thread-local)."""
    program.check_episodes(episodes)
    if runs_batched(program, execution):
        with precision_context(execution.precision, episodes.support_x.device.type):
            grads, loss, scores = program.batch_gradients(episodes, execution.vmap_chunk)
    else:
        module = cast(nn.Module, program)
        workers = resolve_workers(module, execution.workers, len(episodes))
        grads, loss, scores = per_task_gradients(module, episodes, workers,
                                                 execution.precision)
    return grads, metric_values(loss, scores, episodes.is_regression)


def meta_gradients(program: MetaBatchProgram, episodes: Episodes, execution: Execution
                   ) -> tuple[dict[str, Tensor], dict[str, float]]:
    """:func:`meta_gradient_tensors` with the metrics read back as floats."""
    grads, metrics = meta_gradient_tensors(program, episodes, execution)
    return grads, {k: float(v) for k, v in metrics.items()}
