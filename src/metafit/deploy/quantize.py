"""int8 dynamic quantization of a module's layers (``torch.ao.quantization``; Jacob et al.
2018), below the model directory: :mod:`metafit.deploy.compress` applies it to an adapted
model, :mod:`metafit.deploy.reading` rebuilds the quantized structure before loading."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


@contextmanager
def quiet_quantization() -> Iterator[None]:
    """Silence torch.ao.quantization's deprecation warnings (it still works in 2.13) and
    those of loading quantized tensors."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*(quantize_per_tensor|TypedStorage).*",
                                category=UserWarning)
        yield


def vocabulary_table(module: nn.Module) -> str | None:
    """Name of a text encoder's token table: the input embeddings of a Hugging Face
    encoder inside ``module``, else the largest ``nn.Embedding`` (None: there is none). A
    trimmed token table (:mod:`metafit.deploy.vocabulary`) may be smaller than the
    position table, hence the encoder is asked first."""
    names = {id(m): n for n, m in module.named_modules()}
    for m in module.modules():
        get = getattr(m, "get_input_embeddings", None)
        if callable(get) and isinstance(m, nn.Module):
            try:
                table = get()
            except NotImplementedError:
                continue
            if isinstance(table, nn.Embedding) and id(table) in names:
                return names[id(table)]
    tables = [(m.num_embeddings * m.embedding_dim, n) for n, m in module.named_modules()
              if isinstance(m, nn.Embedding)]
    return max(tables)[1] if tables else None


def _qconfig(module: nn.Module, embeddings: bool) -> dict[Any, Any]:
    """``quantize_dynamic``'s spec: every linear layer, and with ``embeddings`` the token
    table (position and token-type tables are tiny, and read through strided views that
    the quantized embedding kernel refuses)."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    spec: dict[Any, Any] = {nn.Linear: default_dynamic_qconfig}
    table = vocabulary_table(module) if embeddings else None
    if table is not None:
        spec[table] = float_qparams_weight_only_qconfig
    return spec


def quantize_module(module: nn.Module, embeddings: bool) -> None:
    """Quantize ``module``'s linear layers (and token table) to int8 in place."""
    from torch.ao.quantization import quantize_dynamic

    with quiet_quantization():
        quantize_dynamic(module, _qconfig(module, embeddings), dtype=torch.qint8, inplace=True)


def prepare_structure(module: nn.Module, compression: dict[str, Any]) -> None:
    """Give a freshly built module the structure ``compression`` implies (quantized
    layers), so that the compressed model's state dict loads into it."""
    if compression.get("quantize") == "int8":
        quantize_module(module, bool(compression.get("quantize_embeddings")))


def is_quantized(module: nn.Module) -> bool:
    """Whether ``module`` holds a quantized layer (``torch.ao.nn.quantized``)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in module.modules())
