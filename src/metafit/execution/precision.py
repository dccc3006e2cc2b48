"""Mixed precision: the floating-point format the meta-gradient's passes compute in.

``precision`` (a recipe key, :class:`~metafit.execution.Execution`'s field) is one of

* ``"float32"`` (the default): nothing changes; PyTorch's own defaults hold (on CUDA,
  cuDNN may use TF32 for convolutions, matmuls stay float32), bit-identical to a run
  made before the setting existed (tested);
* ``"tf32"``: on CUDA, TF32 for matmuls and cuDNN convolutions (10-bit mantissa
  products, float32 accumulation; the flags are process-wide, set by the trainer);
* ``"bf16"`` / ``"fp16"``: the forward passes of the inner and the outer loop run under
  ``torch.autocast`` with that dtype (Micikevicius et al. 2018, "Mixed Precision
  Training"): matmuls and convolutions take bfloat16 / float16 inputs, the parameters
  stay float32 and so do their gradients. The inner loop's gradients, taken with
  ``create_graph=True`` for second-order MAML, are taken inside the same autocast region,
  so the second derivatives flow through the reduced-precision ops (tested against
  float32 on the CPU). ``fp16``'s narrow exponent range needs loss scaling: the outer
  loss is differentiated times a dynamic scale
  (:class:`~metafit.algorithms.base.Algorithm`'s ``loss_scale``, updated by
  :class:`metafit.training.optim.DynamicLossScale`).

Where it applies: :func:`metafit.execution.run.meta_gradient_tensors` enters
:func:`precision_context` around every path (per task, on worker threads, vmapped,
captured as a CUDA graph), the one place every algorithm's meta-gradient passes through.
Evaluation and adaptation stay float32.
"""

from __future__ import annotations

import warnings
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

__all__ = ["PRECISIONS", "Precision", "autocast_dtype", "autocast_supported",
           "check_precision", "precision_context", "set_tf32"]

Precision = Literal["float32", "tf32", "bf16", "fp16"]
PRECISIONS: tuple[Precision, ...] = ("float32", "tf32", "bf16", "fp16")

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None``: no autocast)."""
    return _DTYPES.get(precision)


def precision_context(precision: str, device_type: str) -> AbstractContextManager[Any]:
    """``torch.autocast(device_type, dtype)`` for ``bf16`` / ``fp16``, else a no-op.

    The autocast weight cache is off: a CUDA-graph capture must not keep cast copies
    between replays (PyTorch's CUDA-graph notes), and MAML's adapted weights are not
    leaves, so the cache would hold only the first pass's casts anyway."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type, dtype=dtype, cache_enabled=False)


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this torch build runs ``torch.autocast(device_type, dtype)`` (an
    unsupported pair only warns and disables autocast, so it is tried here)."""
    if not torch.amp.is_autocast_available(device_type):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast(device_type, dtype=dtype):
            return (torch.is_autocast_enabled(device_type)
                    and torch.get_autocast_dtype(device_type) == dtype)


def check_precision(precision: str, device: str) -> None:
    """Raise ``ValueError`` where ``precision`` cannot run on ``device``: ``tf32`` off
    CUDA (it has no CPU meaning), a dtype this torch build's autocast does not support
    there, bfloat16 on a GPU without it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device_type = torch.device(device).type
    if precision == "tf32" and device_type != "cuda":
        raise ValueError(f"precision 'tf32' is a CUDA setting (TensorFloat-32 matmuls and "
                         f"convolutions), not for device '{device}'; use float32 or bf16")
    dtype = autocast_dtype(precision)
    if dtype is None:
        return
    if not autocast_supported(device_type, dtype):
        raise ValueError(f"precision {precision!r}: torch {torch.__version__}'s autocast "
                         f"does not support {dtype} on device '{device}'; use float32"
                         + (" or bf16" if precision == "fp16" else ""))
    if (device_type == "cuda" and dtype == torch.bfloat16 and torch.cuda.is_available()
            and not torch.cuda.is_bf16_supported()):
        raise ValueError("precision 'bf16': this GPU has no bfloat16 support; use fp16 "
                         "or tf32")


def set_tf32(precision: str, device: str) -> None:
    """For ``precision == "tf32"`` on CUDA, let matmuls and cuDNN convolutions use TF32
    (process-wide); any other precision leaves PyTorch's flags as they are."""
    if precision == "tf32" and torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
