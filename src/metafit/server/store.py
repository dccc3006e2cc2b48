"""Adapted models kept on disk, one directory per adaptation id, with an LRU cache.

``state_dir/<id>/`` is written by ``AdaptedModel.save`` (atomic), so a model is either
complete on disk or absent; a restarted server finds every earlier adaptation there and
loads it on its first use.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from metafit.deploy import AdaptedModel

__all__ = ["AdaptationStore", "UnknownAdaptation"]

log = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")


class UnknownAdaptation(KeyError):
    """No adaptation with this id (or an id that cannot be one)."""


class AdaptationStore:
    """Adapted models under ``root``, the ``capacity`` most recently used held loaded.

    Thread-safe: workers add models while request threads read them.
    """

    def __init__(self, root: str | Path, capacity: int,
                 on_size: Callable[[int], None] | None = None) -> None:
        self.root = Path(root)
        self.capacity = capacity
        self._cache: OrderedDict[str, AdaptedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._on_size = on_size

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
        """Save ``model`` as ``adaptation_id`` and keep it loaded."""
        model.save(self.path(adaptation_id))
        self._remember(adaptation_id, model)

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
