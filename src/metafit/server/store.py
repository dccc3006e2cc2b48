"""Adapted models kept on disk, one directory per adaptation id, with an LRU cache.

``state_dir/<id>/`` is written by ``AdaptedModel.save`` (atomic), so a model is either
complete on disk or absent; a restarted server finds every earlier adaptation there and
loads it on its first use.

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
from collections.abc import Callable
from pathlib import Path

from metafit.deploy import AdaptedModel

__all__ = ["AdaptationStore", "UnknownAdaptation", "STALE_SECONDS", "make_private"]

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")
_TEMP = re.compile(r"\.([0-9a-f]{32})\.(tmp-.+|previous)")

#: Age (s, by modification time) past which a leftover temporary directory is removed.
STALE_SECONDS = 60.0


class UnknownAdaptation(KeyError):
    """No adaptation with this id (or an id that cannot be one)."""


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
        self._cache: OrderedDict[str, AdaptedModel] = OrderedDict()
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
        self._remember(adaptation_id, model)

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

    def get(self, adaptation_id: str) -> AdaptedModel:
        """The model of ``adaptation_id``, loaded from disk if it is not held.

        Raises:
            UnknownAdaptation: no such adaptation.
            ModelDirError: its directory exists but cannot be read as a model.
        """
        path = self.path(adaptation_id)
        with self._lock:
            model = self._cache.get(adaptation_id)
            if model is not None:
                self._cache.move_to_end(adaptation_id)
                return model
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        model = AdaptedModel.load(path)
        log.debug("loaded adaptation %s from %s", adaptation_id, path)
        self._remember(adaptation_id, model)
        return model

    def delete(self, adaptation_id: str) -> None:
        """Forget ``adaptation_id`` and remove its directory.

        Raises:
            UnknownAdaptation: no such adaptation.
        """
        path = self.path(adaptation_id)
        with self._lock:
            self._cache.pop(adaptation_id, None)
            size = len(self._cache)
        if not path.is_dir():
            raise UnknownAdaptation(adaptation_id)
        shutil.rmtree(path)
        self._report(size)

    def _remember(self, adaptation_id: str, model: AdaptedModel) -> None:
        with self._lock:
            self._cache[adaptation_id] = model
            self._cache.move_to_end(adaptation_id)
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
