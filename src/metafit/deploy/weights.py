"""State dicts as safetensors files: the weights of a model directory, readable without
running code (no pickle), by metafit and by any safetensors reader.

A plain state dict (float and integer tensors) is stored as it is: the file is an ordinary
safetensors state dict. What safetensors has no type for is stored as plain tensors plus a
JSON *layout* in the file's metadata (key ``metafit_layout``), from which
:func:`decode_state` rebuilds it exactly:

* a quantized tensor (``torch.ao`` int8 dynamic quantization): its integer values
  (``int_repr``) under its own name, its scale and zero point in the layout (per tensor)
  or as the tensors ``NAME::scales`` / ``NAME::zero_points`` (per channel);
* a tuple of tensors or ``None`` (a quantized linear layer's packed weight and bias): one
  entry ``NAME::i`` per item;
* a ``torch.dtype`` (a quantized layer's dtype): its name.

The modules' state-dict versions (``state_dict._metadata``, which quantized layers read to
know their format) are kept in the metadata too (key ``metafit_module_versions``).

The layout is read as untrusted input: every node is checked (type, dtype names from a
closed list, the tensors it names present), and anything else is a :class:`ModelDirError`.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from metafit.deploy.errors import ModelDirError

__all__ = ["encode_state", "decode_state", "save_tensors", "load_tensors"]

LAYOUT_KEY = "metafit_layout"
VERSIONS_KEY = "metafit_module_versions"
_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool, torch.qint8, torch.quint8,
    torch.qint32)}
_QUANTIZED = {"qint8": torch.qint8, "quint8": torch.quint8, "qint32": torch.qint32}
_PER_TENSOR = "per_tensor_affine"
_PER_CHANNEL = ("per_channel_affine", "per_channel_affine_float_qparams")


def _encode(name: str, value: Any, tensors: dict[str, Tensor]) -> dict[str, Any] | None:
    """Put ``value``'s tensors into ``tensors``; return its layout node (None: a plain
    tensor stored under ``name``)."""
    if isinstance(value, Tensor) and not value.is_quantized:
        tensors[name] = value.detach()
        return None
    if isinstance(value, Tensor):
        scheme = str(value.qscheme()).removeprefix("torch.")
        node: dict[str, Any] = {"type": "quantized", "dtype": str(value.dtype)[6:],
                                "scheme": scheme}
        if scheme == _PER_TENSOR:
            node.update(scale=float(value.q_scale()), zero_point=int(value.q_zero_point()))
        elif scheme in _PER_CHANNEL:
            tensors[f"{name}::scales"] = value.q_per_channel_scales()
            tensors[f"{name}::zero_points"] = value.q_per_channel_zero_points()
            node["axis"] = int(value.q_per_channel_axis())
        else:
            raise ValueError(f"{name}: quantization scheme {scheme} cannot be saved")
        tensors[name] = value.int_repr()
        return node
    if isinstance(value, torch.dtype):
        return {"type": "dtype", "value": str(value).removeprefix("torch.")}
    if value is None:
        return {"type": "none"}
    if isinstance(value, tuple | list):
        items = [_encode(f"{name}::{i}", v, tensors) for i, v in enumerate(value)]
        return {"type": "tuple", "items": [{"type": "tensor"} if n is None else n
                                           for n in items]}
    raise ValueError(f"{name}: a {type(value).__name__} cannot be saved as safetensors")


def encode_state(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, layout)`` of a state dict (module docstring); tensors that share
    memory are copied (safetensors stores each tensor's own bytes)."""
    tensors: dict[str, Tensor] = {}
    layout: dict[str, Any] = {}
    for name, value in state.items():
        if "::" in name:
            raise ValueError(f"state dict key {name!r} contains '::'")
        node = _encode(name, value, tensors)
        if node is not None:
            layout[name] = node
    seen: set[int] = set()
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr() if t.numel() else 0
        if not t.is_contiguous() or (ptr and ptr in seen):
            t = t.contiguous().clone()
        seen.add(ptr)
        tensors[name] = t
    return tensors, layout


def _fail(where: str, what: str) -> ModelDirError:
    return ModelDirError(f"{where}: {what}")


def _tensor(tensors: Mapping[str, Tensor], name: str, where: str) -> Tensor:
    if name not in tensors:
        raise _fail(where, f"the layout names tensor {name!r}, which the file does not hold")
    return tensors[name]


def _decode(name: str, node: Any, tensors: Mapping[str, Tensor], used: set[str],
            where: str) -> Any:
    if not isinstance(node, dict):
        raise _fail(where, f"layout entry {name!r} is not an object")
    kind = node.get("type")
    if kind == "tensor":
        used.add(name)
        return _tensor(tensors, name, where)
    if kind == "none":
        return None
    if kind == "dtype":
        value = node.get("value")
        if value not in _DTYPES:
            raise _fail(where, f"layout entry {name!r}: unknown dtype {value!r}")
        return _DTYPES[value]
    if kind == "tuple":
        items = node.get("items")
        if not isinstance(items, list) or len(items) > 64:
            raise _fail(where, f"layout entry {name!r}: 'items' must be a short list")
        return tuple(_decode(f"{name}::{i}", n, tensors, used, where)
                     for i, n in enumerate(items))
    if kind == "quantized":
        return _quantized(name, node, tensors, used, where)
    raise _fail(where, f"layout entry {name!r} has unknown type {kind!r}")


def _quantized(name: str, node: dict[str, Any], tensors: Mapping[str, Tensor],
               used: set[str], where: str) -> Tensor:
    dtype, scheme = _QUANTIZED.get(node.get("dtype", "")), node.get("scheme")
    if dtype is None:
        raise _fail(where, f"{name!r}: unknown quantized dtype {node.get('dtype')!r}")
    values = _tensor(tensors, name, where)
    used.add(name)
    try:
        if scheme == _PER_TENSOR:
            scale, zero = node.get("scale"), node.get("zero_point")
            if not isinstance(scale, float) or not isinstance(zero, int):
                raise _fail(where, f"{name!r}: scale must be a number, zero_point an integer")
            return _checked(torch._make_per_tensor_quantized_tensor(values, scale, zero),
                            dtype, name, where)
        if scheme in _PER_CHANNEL:
            axis = node.get("axis")
            if not isinstance(axis, int) or not 0 <= axis < max(values.dim(), 1):
                raise _fail(where, f"{name!r}: bad quantization axis {axis!r}")
            scales = _tensor(tensors, f"{name}::scales", where)
            zeros = _tensor(tensors, f"{name}::zero_points", where)
            used.update((f"{name}::scales", f"{name}::zero_points"))
            return _checked(torch._make_per_channel_quantized_tensor(values, scales, zeros,
                                                                     axis), dtype, name, where)
    except (RuntimeError, TypeError) as e:
        raise _fail(where, f"{name!r}: cannot rebuild the quantized tensor ({e})") from None
    raise _fail(where, f"{name!r}: unknown quantization scheme {scheme!r}")


def _checked(q: Tensor, dtype: torch.dtype, name: str, where: str) -> Tensor:
    if q.dtype != dtype:
        raise _fail(where, f"{name!r}: integer values of the wrong type for {dtype}")
    return q


def decode_state(tensors: Mapping[str, Tensor], layout: Mapping[str, Any],
                 where: str) -> dict[str, Any]:
    """The state dict that :func:`encode_state` encoded (``where``: the file, for
    messages).

    Raises:
        ModelDirError: a malformed layout, a tensor it names missing, or a tensor of the
            file that no entry accounts for.
    """
    used: set[str] = set()
    state: dict[str, Any] = {}
    for name, node in layout.items():
        state[name] = _decode(name, node, tensors, used, where)
    for name, t in tensors.items():
        if name in used or name in state:
            continue
        if "::" in name:
            raise _fail(where, f"tensor {name!r} belongs to no layout entry")
        state[name] = t
    return state


def save_tensors(state: Mapping[str, Any]) -> bytes:
    """A state dict as the bytes of a safetensors file (its layout in the metadata)."""
    from safetensors.torch import save

    tensors, layout = encode_state(state)
    metadata = {"format": "pt"}
    if layout:
        metadata[LAYOUT_KEY] = json.dumps(layout, sort_keys=True)
    versions = getattr(state, "_metadata", None)
    if versions:
        metadata[VERSIONS_KEY] = json.dumps(
            {k: {"version": v["version"]} for k, v in versions.items()
             if isinstance(v, dict) and isinstance(v.get("version"), int)}, sort_keys=True)
    return save(tensors, metadata=metadata)  # type: ignore[no-any-return]


def _json_object(meta: Mapping[str, str], key: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(meta.get(key, "{}"))
    except ValueError as e:
        raise _fail(where, f"malformed {key} metadata ({e})") from None
    if not isinstance(value, dict):
        raise _fail(where, f"{key} metadata is not a JSON object")
    return value


def _metadata(data: bytes, where: str) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header."""
    if len(data) < 8:
        raise _fail(where, "not a safetensors file (too short)")
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        raise _fail(where, "not a safetensors file (its header runs past the end)")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError as e:
        raise _fail(where, f"not a safetensors file ({e})") from None
    meta = header.get("__metadata__", {}) if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise _fail(where, "malformed safetensors metadata")
    return meta


def load_tensors(data: bytes, where: str) -> OrderedDict[str, Any]:
    """The state dict saved by :func:`save_tensors` (``where``: the file, for messages).

    Raises:
        ModelDirError: not a safetensors file, or a malformed layout.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = _metadata(data, where)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise _fail(where, f"not a readable safetensors file ({e})") from None
    state = OrderedDict(decode_state(tensors, _json_object(meta, LAYOUT_KEY, where), where))
    versions = _json_object(meta, VERSIONS_KEY, where)
    for prefix, entry in versions.items():
        if not (isinstance(entry, dict) and set(entry) == {"version"}
                and isinstance(entry["version"], int)):
            raise _fail(where, f"{VERSIONS_KEY} entry {prefix!r} is not {{'version': N}}")
    state._metadata = versions  # type: ignore[attr-defined]
    return state
