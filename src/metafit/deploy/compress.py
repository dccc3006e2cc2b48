"""Compression of an adapted model: int8 dynamic quantization and magnitude pruning, and
the size and latency figures to judge them by.

* **int8 dynamic quantization** (``torch.ao.quantization.quantize_dynamic``; Jacob et al.
  2018): the weights of every ``nn.Linear`` are stored as int8 with a per-tensor scale,
  activations are quantized on the fly; with ``embeddings=True`` the ``nn.Embedding``
  tables too (8-bit rows with a float scale and offset each). Convolutions and BatchNorm
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from metafit.deploy.adapted import AdaptedModel

__all__ = ["quantize", "prune", "prepare_structure", "sparsity", "prunable_weights",
           "state_size", "median_latency"]


@contextmanager
def _quiet_quantization() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation warnings (it still works in 2.13)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*(deprecated|quantize_per_tensor).*",
                                category=UserWarning)
        yield


def _qconfig(embeddings: bool) -> dict[type[nn.Module], Any]:
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    spec: dict[type[nn.Module], Any] = {nn.Linear: default_dynamic_qconfig}
    if embeddings:
        spec[nn.Embedding] = float_qparams_weight_only_qconfig
    return spec


def _quantize_module(module: nn.Module, embeddings: bool) -> None:
    """Quantize ``module``'s linear (and embedding) layers to int8 in place."""
    from torch.ao.quantization import quantize_dynamic

    with _quiet_quantization():
        quantize_dynamic(module, _qconfig(embeddings), dtype=torch.qint8, inplace=True)


def prepare_structure(module: nn.Module, compression: dict[str, Any]) -> None:
    """Give a freshly built module the structure ``compression`` implies (quantized
    layers), so that the compressed model's state dict loads into it."""
    if compression.get("quantize") == "int8":
        _quantize_module(module, bool(compression.get("quantize_embeddings")))


def _count(module: nn.Module, kinds: tuple[type[nn.Module], ...]) -> int:
    return sum(isinstance(m, kinds) for m in module.modules())


def _derived(model: AdaptedModel, module: nn.Module, **compression: Any) -> AdaptedModel:
    return AdaptedModel(module, model.label_names, model.recipe, model.arch,  # type: ignore[arg-type]
                        model.preprocessor, model.info, model.assets, model.support,
                        {**model.compression, **compression})


def quantize(model: AdaptedModel, embeddings: bool = False) -> AdaptedModel:
    """A copy of ``model`` with int8 dynamically quantized linear layers (and embedding
    tables with ``embeddings=True``); ``model`` is unchanged.

    Raises:
        ValueError: ``model`` is quantized already.
    """
    if model.compression.get("quantize"):
        raise ValueError("the model is quantized already")
    module = copy.deepcopy(model.module)
    kinds: tuple[type[nn.Module], ...] = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    if _count(module, kinds) == 0:
        warnings.warn(f"the model has no {' or '.join(k.__name__ for k in kinds)} layer: int8 "
                      "dynamic quantization changes nothing (its convolutions stay float)",
                      stacklevel=2)
    _quantize_module(module, embeddings)
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
    if model.compression.get("quantize"):
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
