"""How the tasks of a meta-batch should run: explicit settings, fixed at construction.

An :class:`Execution` says *how* an algorithm's maths runs, never *what* it computes:

* ``batching``: ``"loop"`` (the per-task function, task after task or on worker threads),
  ``"vmap"`` (the algorithm's whole-batch function, one ``torch.func.vmap`` over the task
  axis) or ``"auto"`` (the rule of :func:`metafit.execution.plan.runs_batched`: from the
  device, the model and the algorithm's declared capabilities);
* ``workers``: worker threads for the per-task path (``None``: auto, see
  :func:`metafit.execution.threads.resolve_workers`);
* ``vmap_chunk``: tasks per vectorised call on the batched path (``None``: the whole
  meta-batch), bounding its memory;
* ``precision``: the floating-point format of the passes (``"float32"``, ``"tf32"``,
  ``"bf16"``, ``"fp16"``; :mod:`metafit.execution.precision`). The one setting that
  changes the floats beyond reassociation: bf16 / fp16 round what matmuls and
  convolutions compute.

The loop and vmap paths compute the same meta-gradients (tested); several workers sum the
tasks' gradients in another order, so their results equal the serial loop up to float
reassociation (tested), and are deterministic for a given ``workers``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from metafit.execution.precision import PRECISIONS, Precision

__all__ = ["BATCHING", "Batching", "Execution", "parse_workers"]

Batching = Literal["auto", "loop", "vmap"]
BATCHING: tuple[Batching, ...] = ("auto", "loop", "vmap")


def parse_workers(value: str | int | None, source: str) -> int | None:
    """A worker count from ``value`` (an integer, ``"auto"`` or ``None``; ``None`` means
    auto); ``source`` names where it came from in the error.

    Raises:
        ValueError: not a positive integer or ``"auto"``.
    """
    if value is None or value == "auto":
        return None
    try:
        workers = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}") from None
    if workers < 1 or (isinstance(value, float) and value != workers):
        raise ValueError(f"{source} must be a positive integer or 'auto', got {value!r}")
    return workers


@dataclass(frozen=True)
class Execution:
    """How a meta-batch runs (module docstring); immutable, checked on construction."""

    batching: Batching = "auto"
    workers: int | None = None
    vmap_chunk: int | None = None
    precision: Precision = "float32"

    def __post_init__(self) -> None:
        if self.batching not in BATCHING:
            raise ValueError(f"batching must be 'auto', 'loop' or 'vmap', got {self.batching!r}")
        parse_workers(self.workers, "task_workers")
        if self.vmap_chunk is not None and (not isinstance(self.vmap_chunk, int)
                                            or self.vmap_chunk < 1):
            raise ValueError(f"vmap_chunk must be a positive integer or None, got "
                             f"{self.vmap_chunk!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.precision!r}")
