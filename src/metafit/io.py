"""Atomic file writes and the on-disk tensor cache.

Every file metafit writes that a later run reads back (checkpoints, run files, caches) goes
through :func:`atomic_write_bytes` / :func:`atomic_save`: write a temporary file in the
same directory, flush and fsync it, then ``os.replace`` it over the target and fsync the
directory. A crash leaves either the old file or the new one, never a truncated one; a
power cut after the write returns leaves the new one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_save", "cache_dir", "cached",
           "deferred_interrupt", "fsync_dir", "remove_stale_dirs", "written_together",
           "refusal_reason", "check_tensor_archive", "load_torch_file", "parse_json",
           "read_bounded"]

log = logging.getLogger(__name__)

#: Bumped when decoding changes (2: EXIF orientation and transparency on white), so that
#: no cache of the old decoding is read.
CACHE_VERSION = "2"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename + fsync of the
    directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    staged = _STAGED.get()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if staged is not None:  # inside written_together: renamed with the others
            staged.append((Path(tmp), path))
            return
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as e:  # a file system that cannot fsync a directory: still atomic
        log.debug("could not fsync %s (%s)", path.parent, e)


#: The (temporary, target) files of the innermost :func:`written_together` block.
_STAGED: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("metafit_staged",
                                                                 default=None)


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Inside the block, Ctrl-C (SIGINT) is held back and raised as
    :class:`KeyboardInterrupt` when the block ends: for a few renames that must happen
    together. Only in the main thread (elsewhere signals never arrive: a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


@contextmanager
def written_together() -> Iterator[None]:
    """Files written with :func:`atomic_write_bytes` / :func:`atomic_write_text` (and so
    every figure and page of a report) inside the block replace their targets together:
    each is written to a temporary beside its target first, and only once the block ends
    without an error are they all renamed into place, one after another with Ctrl-C held
    back. An error or an interrupt inside the block removes the temporaries and leaves
    every target as it was: a report is never half the old one and half the new one.
    A file written inside the block cannot be read back new before it ends."""
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _STAGED.reset(token)
    try:
        with deferred_interrupt():
            for tmp, target in staged:
                os.replace(tmp, target)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)  # none left but after a failed rename
    for folder in {target.parent for _, target in staged}:
        try:
            fsync_dir(folder)
        except OSError as e:
            log.debug("could not fsync %s (%s)", folder, e)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush directory ``path``'s entries (a rename or new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _newest_change(folder: Path) -> float:
    """The latest modification time of ``folder`` and everything under it (links not
    followed)."""
    newest = folder.lstat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            try:
                newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
            except FileNotFoundError:  # removed meanwhile
                continue
    return newest


def remove_stale_dirs(folder: Path, pattern: str, min_age: float = 60.0) -> list[Path]:
    """Remove the directories in ``folder`` whose names match ``pattern`` (a regular
    expression, whole name) and in which nothing changed for ``min_age`` seconds: the
    staging directories of atomic directory writes whose process died. A writer still at
    work keeps changing its directory and is left alone; links are never followed.
    Returns the removed paths; logs each."""
    if not folder.is_dir():
        return []
    removed: list[Path] = []
    now = time.time()
    for entry in sorted(folder.iterdir()):
        if not re.fullmatch(pattern, entry.name) or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            if now - _newest_change(entry) < min_age:
                continue
        except FileNotFoundError:
            continue
        log.warning("removing %s, left by an interrupted write", entry)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


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


def check_tensor_archive(source: str | os.PathLike[str] | bytes, where: object) -> None:
    """Refuse a ``torch.save`` file whose records would take more memory than the file.

    ``torch.save`` writes a zip archive of *stored* (uncompressed) records, so loading one
    needs no more memory than its size. A forged file can compress its records (a 1 MB
    file inflating to gigabytes inside ``torch.load``, before any digest or shape check)
    or declare records larger than itself; both are refused here, before ``torch.load``.

    Raises:
        ValueError: not a zip archive, a compressed record, or records larger than the
            file (the message names ``where`` and the record).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{where} is corrupt or truncated (not a torch archive, the zip "
                         f"file torch.save writes: {e})") from None
    with archive:
        size = len(source) if isinstance(source, bytes) else os.path.getsize(source)
        total = 0
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                raise ValueError(f"{where}: record {info.filename!r} is compressed "
                                 "(torch.save stores records as they are; a compressed one "
                                 "could inflate to any size), refused")
            total += info.file_size
        if total > size:
            raise ValueError(f"{where}: its records declare {total} bytes, more than the "
                             f"file's {size}; refused")


def load_torch_file(source: str | os.PathLike[str] | bytes, where: object) -> Any:
    """``torch.load(weights_only=True)`` of a file (path or bytes) after
    :func:`check_tensor_archive`: tensors and plain values only, on the CPU, in no more
    memory than the file's size.

    Raises:
        ValueError: as :func:`check_tensor_archive`.
        pickle.UnpicklingError: an object other than tensors and plain values.
        RuntimeError, EOFError, OSError: a corrupt or truncated file.
    """
    check_tensor_archive(source, where)
    file = io.BytesIO(source) if isinstance(source, bytes) else source
    return torch.load(file, map_location="cpu", weights_only=True)


def read_bounded(path: str | os.PathLike[str], max_bytes: int,
                 follow_links: bool = False) -> bytes:
    """The bytes of the regular file ``path``, refused above ``max_bytes`` before any is
    read; the last component is not followed if it is a symbolic link (unless
    ``follow_links``: a file the user names themselves).

    Raises:
        ValueError: not a regular file (a FIFO, a device, a link) or over ``max_bytes``.
        OSError: it cannot be opened.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link; refused") from None
        raise
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if st.st_size > max_bytes:
            raise ValueError(f"{path} is {st.st_size} bytes, over the limit of {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while being read
        raise ValueError(f"{path} is over the limit of {max_bytes} bytes")
    return data


def parse_json(data: bytes | str, where: object) -> Any:
    """``json.loads(data)``, every failure a ``ValueError`` naming ``where``: invalid JSON
    or UTF-8, nesting too deep for the parser (``RecursionError``), an integer of more
    digits than Python converts."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError(f"{where} is nested too deeply to be read") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, the digit limit
        raise ValueError(f"{where} is not valid JSON ({e})") from None


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
            return load_torch_file(path, path)  # type: ignore[no-any-return]
        except Exception as e:  # noqa: BLE001 - any unreadable cache is rebuilt
            log.warning("cache file %s is unreadable (%s); rebuilding it", path, e)
    value = build()
    try:
        atomic_save(value, path)
    except OSError as e:
        log.warning("could not write cache file %s (%s); continuing without a cache", path, e)
    return value
