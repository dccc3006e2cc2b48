"""Model directories written atomically and verified when read.

A model directory holds its files and ``manifest.json``: the format name and version, the
library version, and the size and sha256 of every file. It is written into a temporary
directory beside the target (``.NAME.tmp-XXXX``), every file fsynced, the manifest last,
and then renamed into place, so a crash at any point leaves either no directory at the
target or the complete one. A directory without a manifest, with a file missing, changed
or truncated, or of an unknown format version does not load (:class:`ModelDirError`).

Replacing an existing model directory swaps the two directories in one atomic step on
Linux (``renameat2(RENAME_EXCHANGE)``) and then deletes the old one. Where that call is
missing, the old directory is first renamed to ``.NAME.previous`` and the new one renamed
into place; a crash between the two renames leaves no directory at the target, and
:func:`resolve` then reads ``.NAME.previous`` (the old model), so some complete model
always loads. A directory at the target that is not a model directory (no manifest) and
is not empty is never replaced.

Model directories are shared, so the manifest is untrusted input, checked on read and on
write (:mod:`metafit.deploy.manifest`): every file it lists is a relative, normalised path inside
the directory (no ``..``, no absolute path, no backslash), of a kind the format allows
(``model.json``, ``weights.safetensors``, ``encoder/<name>.json`` ...), reached through no
symbolic link, and its size is compared with the manifest's before it is read. Anything
else is a :class:`ModelDirError` naming the manifest and the entry.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import re
import secrets
import shutil
import stat
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metafit._version import __version__
from metafit.deploy.errors import ModelDirError
from metafit.deploy.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    check_file_name,
    check_manifest,
    sha256,
)
from metafit.io import fsync_dir, parse_json, remove_stale_dirs

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "write_model_dir", "read_model_dir",
           "read_listed_file", "resolve", "sha256", "check_manifest", "check_file_name",
           "check_not_source", "check_replaceable"]

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 1 << 20


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _backup(path: Path) -> Path:
    return path.with_name(f".{path.name}.previous")


def _exchange(a: Path, b: Path) -> bool:
    """Swap directories ``a`` and ``b`` atomically (Linux ``renameat2``); False where the
    system or file system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, f"cannot swap {a} and {b}: {os.strerror(code)}")


def _new_temp_dir(path: Path) -> Path:
    """A new empty directory ``.NAME.tmp-XXXXXXXX`` beside ``path`` (mode per umask)."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _replaceable(path: Path) -> None:
    """Raise unless ``path`` is absent, an empty directory or a model directory."""
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_dir() or path.is_symlink():
        raise ModelDirError(f"{path} exists and is not a directory; refusing to replace it")
    if (path / MANIFEST).is_file() or not any(path.iterdir()):
        return
    raise ModelDirError(f"{path} exists and is not a metafit model directory (no {MANIFEST}); "
                        "refusing to replace it: choose another output path")


def check_replaceable(path: str | os.PathLike[str]) -> None:
    """Raise :class:`ModelDirError` unless :func:`write_model_dir` may write ``path``
    (absent, an empty directory or a model directory): checked before long work whose
    result goes there (``compress --distill``)."""
    _replaceable(Path(path))


def check_not_source(source: str | os.PathLike[str], out: str | os.PathLike[str]) -> None:
    """Raise :class:`ModelDirError` when writing ``out`` would replace the model directory
    ``source`` being read (the same directory, one inside it, or one holding it): a write
    replaces its target whole, versions and all."""
    src, dst = Path(os.path.realpath(source)), Path(os.path.realpath(out))
    if dst == src or dst.is_relative_to(src) or src.is_relative_to(dst):
        where = ("is" if dst == src else "is inside" if dst.is_relative_to(src) else "holds")
        raise ModelDirError(f"--out {out} {where} the model directory {source} being read: "
                            "writing it would replace that model (and its versions); choose "
                            "another --out")


def _install(tmp: Path, path: Path) -> None:
    """Move the complete directory ``tmp`` to ``path`` (see the module docstring)."""
    if not path.exists():
        os.rename(tmp, path)
    elif _exchange(tmp, path):
        shutil.rmtree(tmp)  # now the old directory
    else:
        backup = _backup(path)
        if backup.exists():
            shutil.rmtree(backup)
        os.rename(path, backup)
        os.rename(tmp, path)
        shutil.rmtree(backup)
    fsync_dir(path.parent)


def _read_listed(root: Path, rel: str, size: int) -> bytes:
    """The bytes of ``root/rel``: no component a symbolic link, a regular file of
    ``size`` bytes (checked before reading)."""
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            raise ModelDirError(f"{root}: {rel} is reached through the symbolic link {path}; "
                                "model directories hold plain files only")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ModelDirError(f"{root}: {rel} is missing") from None
    except OSError as e:
        raise ModelDirError(f"{root}: {rel} cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelDirError(f"{root}: {rel} is not a regular file")
        if st.st_size != size:
            raise ModelDirError(f"{root}: {rel} does not match its size in {MANIFEST} "
                                "(changed or corrupt)")
        return f.read(size + 1)


def write_model_dir(path: str | os.PathLike[str], files: Mapping[str, bytes],
                    content: str) -> Path:
    """Write ``files`` (relative path -> bytes) and a manifest as the directory ``path``,
    atomically (module docstring). ``content``: what the directory holds (``"adapted"``,
    ``"onnx"``), recorded in the manifest. Returns ``path``.

    Raises:
        ModelDirError: ``path`` exists and is a file, or a non-empty directory that is not
            a model directory.
    """
    path = Path(path)
    if MANIFEST in files:
        raise ValueError(f"{MANIFEST} is written by write_model_dir itself")
    for rel in files:
        check_file_name(rel, content, FORMAT_VERSION, f"writing {path}")
    _replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # what a killed writer of the same directory left (a text model's is 90 MB or more)
    remove_stale_dirs(path.parent, rf"\.{re.escape(path.name)}\.tmp-[0-9a-f]{{8}}")
    tmp = _new_temp_dir(path)
    try:
        for rel, data in files.items():
            _write_synced(tmp / rel, data)
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "content": content,
            "metafit_version": __version__,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": {rel: {"bytes": len(data), "sha256": sha256(data)}
                      for rel, data in sorted(files.items())},
        }
        _write_synced(tmp / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
        for d in sorted({(tmp / rel).parent for rel in files}, reverse=True):
            fsync_dir(d)
        _install(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.debug("wrote %s (%d files)", path, len(files) + 1)
    return path


def resolve(path: str | os.PathLike[str]) -> Path:
    """``path``, or its ``.NAME.previous`` backup when a replacement was interrupted
    between its two renames (only where atomic exchange is unavailable)."""
    path = Path(path)
    backup = _backup(path)
    if not path.exists() and (backup / MANIFEST).is_file():
        log.warning("%s is missing; reading the previous model %s (a replacement was "
                    "interrupted)", path, backup)
        return backup
    return path


def _manifest(path: Path, content: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked manifest of the model directory ``path`` and its file entries."""
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist")
    file = path / MANIFEST
    if not file.is_file():
        raise ModelDirError(f"{path} has no {MANIFEST}: not a metafit model directory, or an "
                            "incomplete one (a write that did not finish)")
    if file.is_symlink() or file.stat().st_size > MAX_MANIFEST_BYTES:
        raise ModelDirError(f"{file}: a symbolic link or over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = parse_json(file.read_bytes(), file)
    except ValueError as e:
        raise ModelDirError(str(e)) from None
    return manifest, check_manifest(manifest, str(file), content)


def _verified(path: Path, rel: str, entry: dict[str, Any]) -> bytes:
    data = _read_listed(path, rel, entry["bytes"])
    if len(data) != entry["bytes"] or sha256(data) != entry["sha256"]:
        raise ModelDirError(f"{path}: {rel} does not match its checksum in {MANIFEST} "
                            "(changed or corrupt)")
    return data


def read_listed_file(path: Path, rel: str, content: str | None = None
                     ) -> tuple[dict[str, Any], bytes]:
    """The manifest of the model directory ``path`` and the verified bytes of one file
    it lists, ``rel`` (reading ``model.json`` without the weights).

    Raises:
        ModelDirError: as :func:`read_model_dir`, or ``rel`` is not listed.
    """
    manifest, entries = _manifest(path, content)
    if rel not in entries:
        raise ModelDirError(f"{path}: {MANIFEST} lists no {rel}")
    return manifest, _verified(path, rel, entries[rel])


def read_model_dir(path: Path, content: str | None = None
                   ) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest of the model directory ``path`` and the bytes of every file it lists,
    verified (present, with its size and sha256).

    Raises:
        ModelDirError: no such directory, no or unreadable manifest (an incomplete
            directory), another format or an unknown version, ``content`` differs, or a
            file missing or changed.
    """
    manifest, entries = _manifest(path, content)
    return manifest, {rel: _verified(path, rel, entry) for rel, entry in entries.items()}
