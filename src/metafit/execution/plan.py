"""Which path a meta-batch takes: the algorithm's whole-batch function or its per-task one.

The one place the choice is made, from explicit settings (:class:`Execution`), the
device and the model, and what the algorithm declares (``batch_form``, ``batch_on_cpu``,
``second_order``):

* ``batch_form is None``: per task, always; ``"pooled"``: the batch function, always;
* ``batching="loop"`` / ``"vmap"``: as told;
* ``"auto"`` on a CPU: batched only where the algorithm says its batched form pays off on
  a CPU (``batch_on_cpu``) and the model has no convolution and no module marked
  ``per_task_only`` (vmapped per-task weights become grouped convolutions, slower on a
  CPU; DESIGN.md sec. 7); on a GPU, where the per-task loop is bound by kernel launches:
  batched wherever ``vmap`` can run: no ``per_task_only`` module and, for second-order
  meta-gradients, no fused BatchNorm (:func:`~metafit.models.blocks.native_batch_norms`,
  whose second derivatives are wrong under ``torch.func``).
"""

from __future__ import annotations

from torch import nn

from metafit.execution.program import MetaBatchProgram
from metafit.execution.settings import Execution
from metafit.models.blocks import native_batch_norms

__all__ = ["check_batching", "has_convolutions", "loops_over_tasks", "per_task_only",
           "runs_batched"]


def has_convolutions(model: nn.Module) -> bool:
    """True if ``model`` holds a convolution (where per-task vmap is slower on CPU)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def loops_over_tasks(model: nn.Module) -> bool:
    """True where the tasks of a batch must run one by one rather than under ``vmap``:
    models with convolutions (slower under vmap on a CPU) and models with a module marked
    ``per_task_only = True`` (a text encoder cuts each batch to its longest text: control
    flow on data, which vmap cannot trace)."""
    return has_convolutions(model) or per_task_only(model)


def per_task_only(model: nn.Module) -> bool:
    """True if a module of ``model`` is marked ``per_task_only = True`` (control flow on the
    data, which ``vmap`` cannot trace)."""
    return any(getattr(m, "per_task_only", False) for m in model.modules())


def _on_cpu(model: nn.Module) -> bool:
    first = next(model.parameters(), None)
    return first is None or first.device.type == "cpu"


def runs_batched(program: MetaBatchProgram, execution: Execution) -> bool:
    """Whether ``program``'s meta-batches run through its whole-batch function."""
    form = type(program).batch_form
    if form is None or form == "pooled":
        return form == "pooled"
    if execution.batching != "auto":
        return execution.batching == "vmap"
    model = program.model
    if _on_cpu(model):
        return type(program).batch_on_cpu and not loops_over_tasks(model)
    return not per_task_only(model) and not (program.second_order and native_batch_norms(model))


def check_batching(program: MetaBatchProgram, execution: Execution) -> None:
    """Raise ``ValueError`` where ``batching="vmap"`` would compute wrong second
    derivatives (fused BatchNorm under ``torch.func``)."""
    native = native_batch_norms(program.model)
    if execution.batching == "vmap" and program.second_order and native:
        raise ValueError(
            f"batching='vmap' with second-order meta-gradients needs BatchNorm layers "
            f"that differentiate twice under torch.func; {native[0]!r} (and "
            f"{len(native) - 1} more) use PyTorch's fused batch_norm, whose second "
            "derivatives are wrong there. Use batching='loop' (or 'auto'), or "
            "first_order=True")
