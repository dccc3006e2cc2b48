"""What the executor needs from an algorithm: its maths, per task and per batch.

The execution layer sits below :mod:`metafit.algorithms`: it knows algorithms only through
this structural contract, which :class:`metafit.algorithms.Algorithm` implements. An
algorithm supplies pure functions of its parameters and one batch; the executor decides
how to run them (:mod:`metafit.execution.run`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal, Protocol

from torch import Tensor, nn

from metafit.episodes import Episode, Episodes

__all__ = ["BatchForm", "BatchResult", "MetaBatchProgram", "TaskResult", "metric_values"]

TaskResult = tuple[dict[str, Tensor], Tensor, Tensor]
"""``(gradients keyed like trainable_parameters(), loss [], score [])`` of one task."""

BatchResult = tuple[dict[str, Tensor], Tensor, Tensor]
"""``(mean gradients keyed like trainable_parameters(), mean loss [], scores [T] or [1])``
of a whole meta-batch."""

BatchForm = Literal["vmap", "pooled"]
"""An algorithm's whole-batch formulation: ``"vmap"`` (its per-task maths vectorised over
the task axis; the executor may use it or the per-task path) or ``"pooled"`` (a loss over
the examples of all tasks at once, with no per-task form: always used)."""


class MetaBatchProgram(Protocol):
    """The maths of one algorithm, as the executor sees it (an ``nn.Module``)."""

    #: The algorithm's whole-batch formulation, or ``None`` (per-task only).
    batch_form: ClassVar[BatchForm | None]
    #: Whether the batched form pays off on a CPU for models without convolutions.
    batch_on_cpu: ClassVar[bool]
    training: bool

    @property
    def model(self) -> nn.Module: ...

    @property
    def second_order(self) -> bool: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def check_episodes(self, episodes: Episodes) -> None: ...

    def task_gradients(self, task: Episode) -> TaskResult: ...

    def batch_gradients(self, episodes: Episodes, chunk_size: int | None) -> BatchResult: ...


def metric_values(loss: Tensor, scores: Tensor, is_regression: bool) -> dict[str, Tensor]:
    """``{"loss": mean loss, "accuracy" | "mse": mean of the per-task scores [T]}`` as
    detached tensors on the computation's device (nothing is read back)."""
    key = "mse" if is_regression else "accuracy"
    return {"loss": loss.detach(), key: scores.detach().mean()}
