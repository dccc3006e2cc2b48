"""Versions of an adapted model directory: continual updates, listing, rollback.

Every model directory written by :meth:`AdaptedModel.save
<metafit.deploy.adapted.AdaptedModel.save>` is *version 1* of itself. An update
(:func:`metafit.deploy.update.update_model`) adds a complete model directory beside it and
a pointer naming the version to serve::

    MODEL/                 version 1: the model directory as `metafit adapt` wrote it
      manifest.json, model.json, weights.safetensors, support.safetensors, ...
      versions/v0002/      version 2: an ordinary, complete model directory (its own
      versions/v0003/        manifest, weights and support set: the union it was adapted on)
      current              "3\\n": the version that loads (absent: version 1)
      .lock                taken (fcntl) while one update or rollback runs

So a directory written before versions existed loads unchanged (no ``current``: version
1), and an older metafit reading a versioned directory still finds a complete model (the
first version) at its root.

Why it is safe with several processes, also on a shared file system (docs/serve.md):

* **A version appears whole or not at all.** It is written with ``AdaptedModel.save`` into
  a staging directory ``versions/.new-XXXX`` (itself written atomically), then claimed by
  ``rename(staging, versions/vNNNN)``. ``rename`` of a directory onto an existing
  non-empty directory fails (``ENOTEMPTY``/``EEXIST``), and every claimed version is
  non-empty, so two writers can never claim the same number: the loser takes the next.
  ``rename`` is one atomic operation on a local file system and on an NFS server.
* **A version is served only once the pointer has named it.** Until then it holds the
  empty file ``.uncommitted``: an update killed between claiming its number and moving
  the pointer leaves a version that is neither listed nor usable, and the next update
  (under the lock) removes it.
* **The pointer is replaced, never edited**: written to ``current.tmp-XXXX``, fsynced,
  then ``os.replace``-d over ``current``. A reader sees the old number or the new one.
  Readers re-read it on every request (one small read), so a cache keyed by (model,
  version) never serves a version another process has replaced.
* **Updates of one model are serialised** by an exclusive ``fcntl.lockf`` lock on
  ``MODEL/.lock`` (plus a lock per directory inside a process: POSIX locks are per
  process), held from reading the current version to moving the pointer, so a second
  update builds on the first instead of losing its examples. POSIX locks are released by
  the kernel when a process dies (no stale lock files), and NFS carries them (NLM on
  NFSv3, natively on NFSv4). Without working locks the versions stay distinct and
  uncorrupted (the rename rule above), but two simultaneous updates may each build on the
  same parent.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from metafit.deploy.errors import ModelDirError
from metafit.deploy.modeldir import MANIFEST, read_listed_file
from metafit.io import deferred_interrupt, fsync_dir, parse_json

__all__ = ["CURRENT", "VERSIONS", "MAX_VERSION", "VersionInfo", "version_dir",
           "current_version", "current_dir", "version_numbers", "list_versions",
           "set_current", "add_version", "delete_version", "update_lock", "is_version_home"]

log = logging.getLogger(__name__)

CURRENT = "current"
VERSIONS = "versions"
LOCK = ".lock"
#: In a version directory until the pointer names it (:func:`add_version`).
UNCOMMITTED = ".uncommitted"
#: The highest version number (four digits in the directory name).
MAX_VERSION = 9999
_VERSION_DIR = re.compile(r"v(\d{4})")
_STAGING = re.compile(r"\.new-[0-9a-f]{8}(\.tmp-.+)?")
_DELETING = re.compile(r"\.del-[0-9a-f]{8}")
_TOMBSTONE = re.compile(r"deleted-v(\d{4})")
_POINTER = re.compile(rb"\s*(\d{1,4})\s*")
#: Age (s) past which a staging directory left by a killed writer is removed.
STALE_SECONDS = 60.0


class Saves(Protocol):
    """What writes itself as a model directory (an :class:`~metafit.deploy.adapted.
    AdaptedModel`; this module sits below it)."""

    def save(self, path: str | os.PathLike[str]) -> Path: ...


@dataclass(frozen=True)
class VersionInfo:
    """One version of a model directory (:func:`list_versions`).

    Attributes:
        version: its number (1: the directory's root).
        created: when it was written (ISO 8601, UTC; its manifest's ``created``).
        classes: the label names it predicts.
        support_size: labelled examples it was adapted on.
        parent: the version it was updated from (None: version 1).
        added: examples the update added (None: version 1).
        current: whether it is the version that loads.
    """

    version: int
    created: str
    classes: list[str]
    support_size: int | None
    parent: int | None
    added: int | None
    current: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_number(n: object) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_VERSION:
        raise ValueError(f"a version is a number from 1 to {MAX_VERSION}, got {n!r}")
    return n


def version_dir(home: Path, n: int) -> Path:
    """The model directory of version ``n`` of ``home`` (``home`` itself for 1)."""
    _check_number(n)
    if n == 1:
        return Path(home)
    folder = Path(home) / VERSIONS
    where = folder / f"v{n:04d}"
    for path in (folder, where):
        if path.is_symlink():
            raise ModelDirError(f"{path} is a symbolic link; a model directory's versions "
                                "are its own folders (metafit never makes links)")
    return where


def is_version_home(path: Path) -> bool:
    """Whether ``path`` is a model directory that has been updated (holds a pointer)."""
    return (Path(path) / CURRENT).is_file()


def current_version(home: Path) -> int:
    """The version of ``home`` that loads: the number in ``current``, or 1 without it.

    Raises:
        ModelDirError: ``current`` is not a version number.
    """
    home = Path(home)
    try:
        fd = os.open(home / CURRENT, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return 1  # never updated (reading it says whether it is a model directory)
    except OSError as e:
        raise ModelDirError(f"{home / CURRENT} cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(64)
    found = _POINTER.fullmatch(raw)
    n = int(found.group(1)) if found else 0
    if not 1 <= n <= MAX_VERSION:
        raise ModelDirError(f"{home / CURRENT} must hold a version number 1..{MAX_VERSION}, "
                            f"got {raw[:20]!r}")
    return n


def current_dir(home: Path) -> Path:
    """The model directory of ``home``'s current version (:func:`current_version`)."""
    return version_dir(home, current_version(home))


def version_numbers(home: Path) -> list[int]:
    """The complete versions of ``home``, in order (a version being written, or left
    incomplete by a killed writer, is not listed: it has no manifest yet; nor is one whose
    update was killed before it was made current: :func:`_uncommitted`)."""
    home = Path(home)
    numbers = [1] if (home / MANIFEST).is_file() else []
    for n, entry in _version_entries(home):
        if (entry / MANIFEST).is_file() and not _uncommitted(home, n, entry):
            numbers.append(n)
    return sorted(numbers)


def _version_entries(home: Path) -> list[tuple[int, Path]]:
    """``(n, versions/vNNNN)`` of every version directory (2 and up; no links)."""
    folder = home / VERSIONS
    if not folder.is_dir() or folder.is_symlink():
        return []
    out = []
    for entry in folder.iterdir():
        found = _VERSION_DIR.fullmatch(entry.name)
        if found and not entry.is_symlink() and int(found.group(1)) >= 2:
            out.append((int(found.group(1)), entry))
    return out


def _uncommitted(home: Path, n: int, entry: Path) -> bool:
    """Whether version ``n`` (``entry``) still carries :data:`UNCOMMITTED` and is not the
    current version: its update was killed between claiming the number and moving the
    pointer, so it was never served (:func:`add_version`)."""
    if not (entry / UNCOMMITTED).exists():
        return False
    try:
        return current_version(home) != n
    except ModelDirError:
        return True


def list_versions(home: Path) -> list[VersionInfo]:
    """Every complete version of ``home`` (:func:`version_numbers`), read from its manifest
    and verified ``model.json`` only (no weights are read).

    Raises:
        ModelDirError: ``home`` is no model directory; a version's manifest or
            ``model.json`` is corrupt.
    """
    home = Path(home)
    now = current_version(home)
    out = []
    for n in version_numbers(home):
        where = version_dir(home, n)
        manifest, raw = read_listed_file(where, "model.json", "adapted")
        try:
            spec = parse_json(raw, f"{where}/model.json")
            info = spec.get("adaptation", {}) if isinstance(spec, dict) else {}
            labels = spec["labels"]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ModelDirError(f"{where}/model.json is not a model description") from None
        update = info.get("update") if isinstance(info, dict) else None
        update = update if isinstance(update, dict) else {}
        size = info.get("support_size") if isinstance(info, dict) else None
        out.append(VersionInfo(
            version=n, created=str(manifest.get("created", "")),
            classes=[str(c) for c in labels] if isinstance(labels, list) else [],
            support_size=size if isinstance(size, int) else None,
            parent=update.get("parent") if isinstance(update.get("parent"), int) else None,
            added=update.get("added") if isinstance(update.get("added"), int) else None,
            current=n == now))
    return out


def _write_pointer(home: Path, n: int) -> None:
    """Replace ``home/current`` with ``n`` atomically (temp file, fsync, rename)."""
    tmp = home / f"{CURRENT}.tmp-{secrets.token_hex(4)}"
    try:
        with tmp.open("wb") as f:
            f.write(f"{n}\n".encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, home / CURRENT)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(home)


def _check_exists(home: Path, n: int) -> None:
    """Refuse ``n`` if it is not a complete version of ``home`` (ValueError)."""
    have = version_numbers(home)
    if n not in have:
        raise ValueError(f"{home} has no version {n} (versions: "
                         f"{', '.join(map(str, have)) or 'none'})")


def set_current(home: Path, n: int) -> None:
    """Serve version ``n`` of ``home`` from now on (a rollback, or a roll forward), under
    :func:`update_lock`.

    Raises:
        ValueError: ``n`` is not a complete version of ``home``.
        ModelDirError: ``home`` is no model directory.
    """
    home = Path(home)
    _check_number(n)
    with update_lock(home):
        _check_exists(home, n)
        # the version served now may still carry the marker its writer could not remove:
        # drop it before the pointer moves away, or that served version would vanish
        _remove_uncommitted(home)
        _write_pointer(home, n)
    log.info("%s: version %d is current", home, n)


_LOCAL_LOCKS: dict[str, threading.Lock] = {}
_LOCAL_GUARD = threading.Lock()


@contextlib.contextmanager
def update_lock(home: Path) -> Iterator[None]:
    """Hold the update lock of ``home`` (module docstring): a lock per directory in this
    process, then an exclusive ``fcntl.lockf`` on ``home/.lock`` (where the platform
    has it).

    Raises:
        ModelDirError: ``home`` is no model directory.
    """
    home = Path(home)
    if not (home / MANIFEST).is_file():
        raise ModelDirError(f"model directory {home} does not exist (or has no {MANIFEST})")
    key = os.path.realpath(home)
    with _LOCAL_GUARD:
        local = _LOCAL_LOCKS.setdefault(key, threading.Lock())
    with local:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: the process lock only
            yield
            return
        try:
            fd = os.open(home / LOCK, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0),
                         0o600)
        except OSError as e:  # a planted link (ELOOP), a folder, no permission
            raise ModelDirError(f"{home / LOCK} cannot be opened as the update lock "
                                f"({e.strerror}); a model directory's .lock is a plain "
                                "file metafit makes") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _remove_stale_staging(folder: Path, older_than: float = STALE_SECONDS) -> None:
    """Remove staging directories of killed writers (``versions/.new-*``) older than
    ``older_than`` seconds, and what an interrupted deletion left (``versions/.del-*``)."""
    now = time.time()
    for entry in folder.iterdir():
        if not entry.is_dir() or entry.is_symlink():
            continue
        if _DELETING.fullmatch(entry.name) or (_STAGING.fullmatch(entry.name)
                                               and now - entry.lstat().st_mtime > older_than):
            log.warning("removing %s, left by an interrupted update or deletion", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _deleted_numbers(home: Path) -> list[int]:
    """The versions of ``home`` that were deleted (their tombstones): never reused."""
    folder = Path(home) / VERSIONS
    if not folder.is_dir() or folder.is_symlink():
        return []
    return [int(found.group(1)) for entry in folder.iterdir()
            if (found := _TOMBSTONE.fullmatch(entry.name))]


def delete_version(home: Path, n: int) -> None:
    """Delete version ``n`` of ``home`` for good, under :func:`update_lock`: its directory
    is renamed out of the listing in one step (``versions/.del-XXXX``), a tombstone
    ``versions/deleted-vNNNN`` keeps its number from being given to a later version (a
    server caching by (model, version) must never see a number change meaning), then the
    files are removed.

    Raises:
        ValueError: ``n`` is not a version of ``home``, is version 1 (the model directory
            itself: delete the whole directory instead) or the current one (roll back
            first: ``set_current``).
        ModelDirError: ``home`` is no model directory.
    """
    home = Path(home)
    _check_number(n)
    with update_lock(home):
        _check_exists(home, n)
        if n == 1:
            raise ValueError(f"version 1 is the model directory {home} itself; it holds "
                             "the others: delete the whole directory instead")
        if n == current_version(home):
            raise ValueError(f"version {n} of {home} is the one it serves: make another "
                             "current first (metafit versions MODEL --use N)")
        folder = home / VERSIONS
        tombstone = folder / f"deleted-v{n:04d}"
        _write_tombstone(tombstone)
        doomed = folder / f".del-{secrets.token_hex(4)}"
        os.rename(version_dir(home, n), doomed)
        fsync_dir(folder)
        shutil.rmtree(doomed, ignore_errors=True)
    log.info("%s: deleted version %d", home, n)


def _write_tombstone(path: Path) -> None:
    """Create the empty marker ``path`` (or keep the one a killed deletion left), never
    through a symbolic link: a received directory's planted ``deleted-vNNNN`` link would
    otherwise truncate whatever file it points at."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        if path.is_symlink() or not path.is_file():
            raise ModelDirError(f"{path} exists and is not a plain file (a symbolic link?); "
                                "refused") from None
        return  # left by a deletion that was killed before its rename
    except OSError as e:
        raise ModelDirError(f"{path} cannot be created ({e.strerror})") from None
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def add_version(home: Path, model: Saves, make_current: bool = True) -> int:
    """Write ``model`` as the next version of ``home`` (module docstring: staged, then
    claimed by ``rename``) and, with ``make_current``, point ``current`` at it. Call it
    under :func:`update_lock`: so that the parent read before is still current, and
    because it removes versions whose writer died before moving the pointer (another
    writer without the lock would look like one). Without the lock and with
    ``make_current=False`` concurrent writers still get distinct numbers.

    Returns:
        The new version's number.

    Raises:
        ModelDirError: ``home`` is no model directory, or it holds :data:`MAX_VERSION`
            versions.
    """
    home = Path(home)
    if not (home / MANIFEST).is_file():
        raise ModelDirError(f"model directory {home} does not exist (or has no {MANIFEST})")
    folder = home / VERSIONS
    if folder.is_symlink():
        raise ModelDirError(f"{folder} is a symbolic link; model directories hold plain "
                            "directories only")
    try:
        folder.mkdir(exist_ok=True)
    except OSError as e:
        raise ModelDirError(f"{folder} cannot be made a folder ({e.strerror})") from None
    _remove_stale_staging(folder)
    _remove_uncommitted(home)
    staging = folder / f".new-{secrets.token_hex(4)}"
    claimed: Path | None = None
    n, committed = 0, False
    try:
        model.save(staging)
        if make_current:  # until the pointer names it: a version that was never served
            with (staging / UNCOMMITTED).open("wb") as marker:
                os.fsync(marker.fileno())
        # claimed, pointed at and unmarked with Ctrl-C held back: done whole, or undone
        with deferred_interrupt():
            n = max([*version_numbers(home), *_deleted_numbers(home)], default=1) + 1
            while True:
                if n > MAX_VERSION:
                    raise ModelDirError(f"{home} holds {MAX_VERSION} versions, the most a "
                                        "model directory can")
                try:
                    os.rename(staging, version_dir(home, n))
                    claimed = version_dir(home, n)
                    break
                except OSError as e:
                    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    n += 1  # another writer claimed n first
            fsync_dir(folder)
            if make_current:
                _write_pointer(home, n)
                (claimed / UNCOMMITTED).unlink(missing_ok=True)
                fsync_dir(claimed)
            committed = True
    except BaseException:
        if committed:  # only the held-back Ctrl-C: the version is whole and current
            log.warning("%s: interrupted after version %d was written%s", home, n,
                        " and made current" if make_current else "")
            raise
        shutil.rmtree(staging, ignore_errors=True)
        if claimed is not None and make_current and _uncommitted(home, n, claimed):
            shutil.rmtree(claimed, ignore_errors=True)
        raise
    log.info("%s: wrote version %d", home, n)
    return n


def _remove_uncommitted(home: Path) -> None:
    """Remove the versions whose update was killed before they were made current
    (:func:`_uncommitted`; the caller holds :func:`update_lock`), and the marker of one
    that was made current just before its writer died."""
    for n, entry in _version_entries(home):
        if not (entry / UNCOMMITTED).exists():
            continue
        if _uncommitted(home, n, entry):
            log.warning("removing %s: its update was interrupted before it was served", entry)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            (entry / UNCOMMITTED).unlink(missing_ok=True)

