"""Atomic file writes and the on-disk tensor cache.

Every file metafit writes that a later run reads back (checkpoints, run files, caches) goes
through :func:`atomic_write_bytes` / :func:`atomic_save`: write a temporary file in the
same directory, flush and fsync it, then ``os.replace`` it over the target. A crash leaves
either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save", "cache_dir", "cached",
           "refusal_reason"]

log = logging.getLogger(__name__)

CACHE_VERSION = "1"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def refusal_reason(error: BaseException) -> str:
    """The line of a ``torch.load(weights_only=True)`` refusal that names what was refused
    (``Trying to load unsupported GLOBAL posix.mkdir ...``), for one-line messages."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "nsupported" in line]
    return (named or lines or [type(error).__name__])[0]


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$METAFIT_CACHE`` or ``~/.cache/metafit``."""
    root = os.environ.get("METAFIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "metafit",
    )
    return Path(root)


def file_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a source file: resolved path, size and mtime (ns)."""
    st = os.stat(path)
    return f"{Path(path).resolve()}:{st.st_size}:{st.st_mtime_ns}"


def cached(
    kind: str,
    key_parts: list[str],
    build: Callable[[], dict[str, Any]],
    enabled: bool = True,
) -> dict[str, Any]:
    """Load a dict of tensors/lists from the cache, or ``build()`` it and store it.

    The cache file is ``cache_dir()/kind-<sha1(key_parts)>.pt``; include in ``key_parts``
    everything the content depends on (source fingerprints, image size, ...). A cache file
    that fails to load is rebuilt, with a warning.
    """
    if not enabled:
        return build()
    digest = hashlib.sha1("\n".join([CACHE_VERSION, kind, *key_parts]).encode()).hexdigest()
    path = cache_dir() / f"{kind}-{digest[:20]}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=True)  # type: ignore[no-any-return]
        except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, e)
    value = build()
    try:
        atomic_save(value, path)
    except OSError as e:
        log.warning("could not write cache file %s (%s); continuing without a cache", path, e)
    return value
