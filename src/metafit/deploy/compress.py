"""Compression of an adapted model: int8 dynamic quantization and magnitude pruning, and
the size and latency figures to judge them by.

* **int8 dynamic quantization** (``torch.ao.quantization.quantize_dynamic``; Jacob et al.
  2018): the weights of every ``nn.Linear`` are stored as int8 with a per-tensor scale,
  activations are quantized on the fly; with ``embeddings=True`` the token embedding
  table too (the largest ``nn.Embedding``: 8-bit rows with a float scale and offset
  each). Convolutions and BatchNorm
  stay float: on conv4 only the linear head (MAML) changes, and ProtoNet's conv4 has no
  linear layer at all, so quantizing it changes nothing (a warning says so). PyTorch
  deprecates ``torch.ao.quantization`` in favour of ``torchao``; it still works in torch
  2.13 and needs no extra package, its warnings are silenced here.
* **Magnitude pruning** (Han et al. 2015): the weights of the convolutions and linear
  layers (not biases, normalisation or embeddings) with the smallest absolute values are
  set to zero, over all those layers at once (``scope="global"``) or the same fraction in
  each (``"layer"``), with ``torch.nn.utils.prune``, then made permanent. The weights stay
  dense tensors: the file does not shrink (it compresses better) and nothing runs faster
  without sparse kernels; the figures say so.
"""

from __future__ import annotations

import copy
import gzip
import io
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.quantize import (
    is_quantized,
    prepare_structure,
    quantize_module,
    quiet_quantization,
    vocabulary_table,
)

__all__ = ["quantize", "prune", "is_quantized", "quiet_quantization", "prepare_structure",
           "sparsity", "prunable_weights", "state_size", "median_latency", "measure",
           "compare", "batch_of"]


def _derived(model: AdaptedModel, module: nn.Module, **compression: Any) -> AdaptedModel:
    return model.derived(module=module, compression={**model.compression, **compression})


def quantize(model: AdaptedModel, embeddings: bool = False) -> AdaptedModel:
    """A copy of ``model`` with int8 dynamically quantized linear layers (and embedding
    tables with ``embeddings=True``); ``model`` is unchanged.

    Raises:
        ValueError: ``model`` is quantized already.
    """
    if model.compression.get("quantize"):
        raise ValueError("the model is quantized already")
    module = copy.deepcopy(model.module)
    if not any(isinstance(m, nn.Linear) for m in module.modules()) and not (
            embeddings and vocabulary_table(module)):
        warnings.warn("the model has no Linear layer: int8 dynamic quantization changes "
                      "nothing (its convolutions stay float)", stacklevel=2)
    quantize_module(module, embeddings)
    return _derived(model, module, quantize="int8", quantize_embeddings=embeddings)


def prunable_weights(module: nn.Module) -> list[tuple[nn.Module, str]]:
    """``(layer, "weight")`` of every convolution and linear layer."""
    return [(m, "weight") for m in module.modules()
            if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]


def sparsity(module: nn.Module) -> float:
    """Fraction of zeros among the :func:`prunable_weights` (0.0 if there are none)."""
    weights = [getattr(m, n) for m, n in prunable_weights(module)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def prune(model: AdaptedModel, amount: float, scope: str = "global") -> AdaptedModel:
    """A copy of ``model`` with the fraction ``amount`` of its conv and linear weights of
    smallest magnitude set to zero (``scope``: ``"global"`` over all those layers, or
    ``"layer"``: in each); ``model`` is unchanged.

    Raises:
        ValueError: ``amount`` outside [0, 1), an unknown scope, a quantized model (prune
            first, then quantize), or no layer to prune.
    """
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"the pruning amount (sparsity) must be in [0, 1), got {amount}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    if is_quantized(model.module):
        raise ValueError("cannot prune a quantized model: prune first, then quantize")
    module = copy.deepcopy(model.module)
    targets = prunable_weights(module)
    if not targets:
        raise ValueError("the model has no convolution or linear layer to prune")
    if scope == "global":
        torch_prune.global_unstructured(targets, pruning_method=torch_prune.L1Unstructured,
                                        amount=amount)
    else:
        for layer, name in targets:
            torch_prune.l1_unstructured(layer, name, amount=amount)
    for layer, name in targets:
        torch_prune.remove(layer, name)  # permanent: weight = weight_orig * mask
    reached = sparsity(module)
    return _derived(model, module, prune={"amount": amount, "scope": scope,
                                          "sparsity": round(reached, 6)})


def state_size(module: nn.Module) -> tuple[int, int]:
    """``(bytes, gzip bytes)`` of the module's saved state dict."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    data = buf.getvalue()
    return len(data), len(gzip.compress(data, compresslevel=6))


def median_latency(fn: Callable[[Tensor], Any], x: Tensor, repeats: int = 20,
                   warmup: int = 3) -> float:
    """Median wall-clock seconds of ``fn(x)`` over ``repeats`` calls (after ``warmup``)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def batch_of(x: Tensor, size: int) -> Tensor:
    """``size`` rows of ``x [B, *x]``, repeated cyclically: ``[size, *x]``."""
    return x[torch.arange(size) % len(x)]


def measure(model: AdaptedModel, x: Tensor, repeats: int = 20) -> dict[str, float]:
    """Size and one-thread latency of ``model``: file and gzip bytes of its weights, and
    the median milliseconds of :meth:`AdaptedModel.logits` on 1 and on 32 rows of ``x``
    (as predict runs them: an int8 model takes the 32 one at a time)."""
    size, packed = state_size(model.module)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b1 = median_latency(model.logits, batch_of(x, 1), repeats)
        b32 = median_latency(model.logits, batch_of(x, 32), repeats)
    finally:
        torch.set_num_threads(previous)
    return {"bytes": size, "gzip_bytes": packed, "ms_batch1": round(1e3 * b1, 3),
            "ms_batch32": round(1e3 * b32, 3)}


def compare(model: AdaptedModel, compressed: AdaptedModel, repeats: int = 20
            ) -> dict[str, Any]:
    """Figures of ``compressed`` against ``model``: size and latency of each
    (:func:`measure`), the sparsity reached, and on the stored support set the fraction of
    identical predictions and the largest probability change. Each model reads its own
    stored support set when it has one (a distilled student with its own tokenizer holds
    the same texts as other token ids)."""
    if model.support is None:
        raise ValueError("the model directory has no support set to measure on")
    x = model.support[0]
    y = x if compressed.support is None else compressed.support[0]
    before, after = model.logits(x).softmax(-1), compressed.logits(y).softmax(-1)  # [S, N]
    return {"before": measure(model, x, repeats), "after": measure(compressed, y, repeats),
            "sparsity": round(sparsity(compressed.module), 4),
            "support_agreement": float((before.argmax(-1) == after.argmax(-1)).float().mean()),
            "support_max_prob_change": float((before - after).abs().max())}
