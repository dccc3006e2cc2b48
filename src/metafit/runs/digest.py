"""A checksum of a nested structure of tensors and plain values, independent of how it was
serialised.

:func:`content_digest` hashes what a checkpoint *holds* (every tensor's dtype, shape and
bytes, every key, number and string, in a canonical order), so a checkpoint can carry the
digest of its own content: the digest is computed before ``torch.save`` and compared with
the digest of what ``torch.load`` returns. A flipped byte in a tensor, a changed number or
a renamed key changes the digest; bytes that do not change the loaded content (zip
padding) do not.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["content_digest"]


def _update(h: Any, obj: Any) -> None:
    """Feed ``obj`` into the hash ``h`` with a type tag before every item, so that no two
    different structures produce the same byte stream."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        if t.is_quantized:
            scheme = t.qscheme()
            h.update(f"Q{scheme}{t.dtype}:".encode())
            if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
                _update(h, (t.q_scale(), t.q_zero_point()))
            else:
                _update(h, (t.q_per_channel_scales(), t.q_per_channel_zero_points(),
                            t.q_per_channel_axis()))
            t = t.int_repr()
        t = t.contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}:".encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, repr(k))):
            _update(h, key)
            _update(h, obj[key])
    elif isinstance(obj, list | tuple):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for item in obj:
            _update(h, item)
    elif obj is None or isinstance(obj, bool | int | float | str | bytes | torch.dtype
                                   | torch.Size):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"content_digest cannot hash a {type(obj).__name__}")


def content_digest(obj: Any) -> str:
    """The sha256 (hex) of ``obj``: nested dicts, lists and tuples of tensors, numbers,
    strings, bytes, ``None`` and dtypes.

    Raises:
        TypeError: ``obj`` holds another type.
    """
    h = hashlib.sha256()
    _update(h, obj)
    return h.hexdigest()
