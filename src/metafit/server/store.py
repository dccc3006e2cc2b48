"""Adapted models kept on disk, one directory per adaptation id, with an LRU cache.

``state_dir/<id>/`` is written by ``AdaptedModel.save`` (atomic), so a model is either
complete on disk or absent; a restarted server finds every earlier adaptation there and
loads it on its first use. Added examples write new versions into it
(:mod:`metafit.deploy.versions`: ``versions/vNNNN/`` and the ``current`` pointer).

Nothing lives only in memory, so several servers can share one ``state_dir`` (docs/serve.md,
"Several servers, one store"): the cache is keyed by (id, version), and every request
re-reads the adaptation's ``current`` pointer (one small read; a ``stat`` when the
adaptation was never updated), so a version written or chosen by another process is served
on the next request, and an adaptation another process deleted is a 404 here too.

Clients' support sets are kept readable by the server's user only: the root is made mode
0700 before anything is written into it (so nothing inside is reachable by others at any
moment, whatever the umask), and each saved adaptation is then set to 0700 directories
and 0600 files. At start, the temporary directories of writers killed mid-save
(``.<id>.tmp-*``) and leftover backups (``.<id>.previous`` beside a complete ``<id>``)
older than :data:`STALE_SECONDS` are removed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from metafit.deploy import AdaptedModel, Adapter, ModelDirError
from metafit.deploy.update import update_model
from metafit.deploy.versions import VersionInfo, current_version, list_versions, set_current

__all__ = ["AdaptationStore", "UnknownAdaptation", "UnknownVersion", "STALE_SECONDS",
           "make_private"]

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")
_TEMP = re.compile(r"\.([0-9a-f]{32})\.(tmp-.+|previous)")

#: Age (s, by modification time) past which a leftover temporary directory is removed.
STALE_SECONDS = 60.0


class UnknownAdaptation(KeyError):
    """No adaptation with this id (or an id that cannot be one)."""


class UnknownVersion(KeyError):
    """The adaptation has no such version."""


class AdaptationStore:
    """Adapted models under ``root``, the ``capacity`` most recently used held loaded.

    Thread-safe: workers add models while request threads read them. ``root`` is created
    (mode 0700) on the first :meth:`put`; an existing one is restricted to 0700 and
    cleared of stale temporary directories here.

    Raises:
        ValueError: an existing ``root`` open to other users holds other files than
            adaptations (it is not changed).
    """

    def __init__(self, root: str | Path, capacity: int,
                 on_size: Callable[[int], None] | None = None) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self._cache: OrderedDict[tuple[str, int], AdaptedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._on_size = on_size
        if self.root.is_dir():
            self._make_root()
            self.remove_stale()

    def remove_stale(self, older_than: float = STALE_SECONDS) -> list[Path]:
        """Remove what killed writers left in the root: ``.<id>.tmp-*`` directories, and
        ``.<id>.previous`` backups whose ``<id>`` is complete, last modified more than
        ``older_than`` seconds ago (a younger one may belong to a save in progress).

        Returns:
            The removed paths.
        """
        removed = []
        now = time.time()
        for entry in sorted(self.root.iterdir()):
            found = _TEMP.fullmatch(entry.name)
            if found is None or not entry.is_dir() or entry.is_symlink():
                continue
            if found.group(2) == "previous" and not (self.root / found.group(1)).is_dir():
                continue  # the only copy of an interrupted replacement: keep it
            if now - entry.lstat().st_mtime < older_than:
                continue
            log.warning("removing %s, left by an interrupted save of adaptation %s", entry,
                        found.group(1))
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        return removed

    @staticmethod
    def new_id() -> str:
        """A fresh adaptation id: 32 lowercase hex digits (uuid4)."""
        return uuid.uuid4().hex

    def path(self, adaptation_id: str) -> Path:
        """The directory of ``adaptation_id``.

        Raises:
            UnknownAdaptation: the id is not 32 lowercase hex digits (so no request can
                name a path outside ``root``).
        """
        if not _ID.fullmatch(adaptation_id):
            raise UnknownAdaptation(adaptation_id)
        return self.root / adaptation_id

    def put(self, adaptation_id: str, model: AdaptedModel) -> None:
        """Save ``model`` as ``adaptation_id`` (owner-only: 0700 / 0600) and keep it
        loaded."""
        path = self.path(adaptation_id)
        self._make_root()
        model.save(path)
        make_private(path)
        self._remember((adaptation_id, 1), model)

    def _make_root(self) -> None:
        """Create ``root`` with mode 0700, or restrict an existing one to it.

        Raises:
            ValueError: an existing root open to others holds something else than
                adaptations (``--state-dir`` names a shared directory): it is left as is.
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = stat.S_IMODE(self.root.stat().st_mode)
        if not mode & 0o077:
            return
        foreign = sorted(p.name for p in self.root.iterdir()
                         if not (_ID.fullmatch(p.name) or _TEMP.fullmatch(p.name)))
        if foreign:
            raise ValueError(
                f"the adaptation directory {self.root} is open to other users (mode "
                f"{mode:04o}) and holds more than adaptations ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}): give --state-dir a directory of "
                f"its own, or run `chmod 700 {self.root}`")
        log.warning("restricting the adaptation directory %s to its owner (mode %04o -> "
                    "0700): it holds clients' support sets", self.root, mode)
        os.chmod(self.root, 0o700)

    def current(self, adaptation_id: str) -> int:
        """The version of ``adaptation_id`` served now, read from disk (module docstring).

        Raises:
            UnknownAdaptation: no such adaptation (also: deleted by another process).
            ModelDirError: its version pointer is corrupt.
        """
        path = self.path(adaptation_id)
        if not path.is_dir():
            self._forget(adaptation_id)
            raise UnknownAdaptation(adaptation_id)
        return current_version(path)

    def get(self, adaptation_id: str) -> AdaptedModel:
        """The current model of ``adaptation_id`` (:meth:`get_version`)."""
        return self.get_version(adaptation_id)[1]

    def get_version(self, adaptation_id: str) -> tuple[int, AdaptedModel]:
        """The version of ``adaptation_id`` served now and its model, loaded from disk if
        it is not held.

        Raises:
            UnknownAdaptation: no such adaptation.
            ModelDirError: its directory exists but cannot be read as a model.
        """
        version = self.current(adaptation_id)
        key = (adaptation_id, version)
        with self._lock:
            model = self._cache.get(key)
            if model is not None:
                self._cache.move_to_end(key)
                return version, model
        path = self.path(adaptation_id)
        try:
            model = AdaptedModel.load(path, version)
        except ModelDirError:
            if not path.is_dir():  # deleted by another process while being read
                raise UnknownAdaptation(adaptation_id) from None
            raise
        log.debug("loaded adaptation %s version %d from %s", adaptation_id, version, path)
        self._remember(key, model)
        return version, model

    def update(self, adaptation_id: str, inputs: Sequence[Any], labels: Sequence[str],
               adapter: Adapter, steps: int | None = None,
               max_total: int | None = None) -> tuple[int, AdaptedModel]:
        """Add labelled examples to ``adaptation_id`` and adapt it again into a new
        version, served from now on (:func:`metafit.deploy.update.update_model`; safe
        against other processes updating it at the same time).

        Raises:
            UnknownAdaptation: no such adaptation (also: deleted meanwhile).
            SupportError: bad examples.
            RunMismatch: ``adapter``'s run is not the one the adaptation came from.
        """
        path = self.path(adaptation_id)
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        try:
            version, model = update_model(path, inputs, labels, adapter, steps,
                                          max_total=max_total)
        except ModelDirError:
            if not path.is_dir():  # deleted by another process meanwhile
                raise UnknownAdaptation(adaptation_id) from None
            raise
        make_private(path)
        self._remember((adaptation_id, version), model)
        return version, model

    def rollback(self, adaptation_id: str, version: int) -> tuple[int, AdaptedModel]:
        """Serve ``version`` of ``adaptation_id`` from now on; returns it and its model.

        Raises:
            UnknownAdaptation: no such adaptation.
            UnknownVersion: it has no such version.
        """
        path = self.path(adaptation_id)
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        try:
            set_current(path, version)
        except ValueError:
            raise UnknownVersion(version) from None
        return self.get_version(adaptation_id)

    def versions(self, adaptation_id: str) -> list[VersionInfo]:
        """Every version of ``adaptation_id`` (:func:`metafit.deploy.versions.
        list_versions`).

        Raises:
            UnknownAdaptation: no such adaptation.
        """
        path = self.path(adaptation_id)
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        return list_versions(path)

    def delete(self, adaptation_id: str) -> None:
        """Forget ``adaptation_id`` and remove its directory, every version with it.

        Raises:
            UnknownAdaptation: no such adaptation.
        """
        path = self.path(adaptation_id)
        size = self._forget(adaptation_id)
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        # renamed away first (one atomic step: every process sees it gone at once, never
        # half removed), then removed; a leftover is a stale temporary directory
        doomed = path.with_name(f".{adaptation_id}.tmp-deleted-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(path, doomed)
        except FileNotFoundError:  # another process deleted it first
            raise UnknownAdaptation(adaptation_id) from None
        shutil.rmtree(doomed, ignore_errors=True)
        self._report(size)

    def _forget(self, adaptation_id: str) -> int:
        """Drop every cached version of ``adaptation_id``; the cache's size after."""
        with self._lock:
            for key in [k for k in self._cache if k[0] == adaptation_id]:
                del self._cache[key]
            return len(self._cache)

    def _remember(self, key: tuple[str, int], model: AdaptedModel) -> None:
        with self._lock:
            self._cache[key] = model
            self._cache.move_to_end(key)
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
            size = len(self._cache)
        self._report(size)

    def _report(self, size: int) -> None:
        if self._on_size is not None:
            self._on_size(size)


def make_private(path: Path) -> None:
    """Set every directory under ``path`` (itself included) to 0700 and every file to
    0600; symbolic links are left alone (not followed)."""
    os.chmod(path, 0o700)
    for parent, dirs, files in os.walk(path):
        for name in dirs:
            if not os.path.islink(os.path.join(parent, name)):
                os.chmod(os.path.join(parent, name), 0o700)
        for name in files:
            if not os.path.islink(os.path.join(parent, name)):
                os.chmod(os.path.join(parent, name), 0o600)
