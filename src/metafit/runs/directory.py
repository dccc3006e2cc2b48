"""The run directory, metafit's unit of persistence::

    runs/NAME/
      config.yaml        the resolved recipe + library version (written first)
      status.json        {"status": "running" | "complete" | "stopped_early" | "failed", ...}
      metrics.jsonl      one JSON object per logged iteration / validation
      checkpoints/       last.pt, best.pt and the version before each (last.previous.pt,
                         best.previous.pt); atomic, each carrying the digest of its content
      report/            evaluation results and plots
      .lock              held by the process training into the directory

A run counts as finished only when ``status.json`` says ``complete`` or
``stopped_early``; an interrupted one says ``running`` and is resumed by training again
into the same directory. Every file is written atomically; a process killed while writing
one leaves a hidden temporary file (``.last.pt.XXXX.tmp``: a text model's checkpoint is
~270 MB), which training again removes (:meth:`RunDir.remove_stale_temporaries`).

Run directories are shared ("here is my trained run"), so reading one never runs code:
checkpoints load with ``torch.load(weights_only=True)`` (tensors and plain values only; a
pickled object is refused), their content digest (:func:`metafit.runs.digest.content_digest`)
is checked, and a checkpoint that fails either is replaced by the version before it, with
a warning. A crash that cut off the last line of ``metrics.jsonl`` loses that line only.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metafit._version import __version__
from metafit.config.recipe import Recipe, make_recipe, read_yaml_mapping, recipe_to_yaml
from metafit.config.schema import check_scope
from metafit.io import (
    atomic_save,
    atomic_write_text,
    check_tensor_archive,
    parse_json,
    read_bounded,
    refusal_reason,
)
from metafit.runs.digest import content_digest
from metafit.runs.lock import RunLock

__all__ = ["RunDir", "RunDirError", "CheckpointError", "load_checkpoint",
           "check_architecture", "restore_state", "previous_version"]

FINISHED = ("complete", "stopped_early")
#: Largest ``status.json`` read (metafit writes a few hundred bytes).
MAX_STATUS_BYTES = 2**20
#: Largest ``metrics.jsonl`` read (about 200 bytes a logged iteration).
MAX_METRICS_BYTES = 512 * 2**20

log = logging.getLogger(__name__)


CHECKSUM = "content_sha256"


class RunDirError(ValueError):
    """A run directory's file that cannot be read; the message names the file (and line)."""


class CheckpointError(RunDirError):
    """A checkpoint that is missing, corrupt, unsafe, or made for another architecture."""


def previous_version(path: Path) -> Path:
    """Where the version of checkpoint ``path`` before the current one is kept
    (``last.pt`` -> ``last.previous.pt``)."""
    return path.with_name(f"{path.stem}.previous{path.suffix}")


class RunDir:
    """Paths and small files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    status_file = property(lambda self: self.path / "status.json")
    checkpoints = property(lambda self: self._own_folder("checkpoints"))
    report = property(lambda self: self._own_folder("report"))

    def _own_folder(self, name: str) -> Path:
        """``path/name``, refused when it is a symbolic link: metafit never makes one, and
        a received run's link would have reports written, and old temporaries deleted,
        wherever it points."""
        folder = self.path / name
        if folder.is_symlink():
            raise RunDirError(f"{folder} is a symbolic link; a run directory's folders are "
                              "its own, so metafit neither reads nor writes through it")
        return folder

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    def has_checkpoint(self, which: str) -> bool:
        """Whether ``{which}.pt`` or the version before it exists."""
        path = self.checkpoint(which)
        return path.is_file() or previous_version(path).is_file()

    def trained_checkpoint(self, which: str = "best") -> Path:
        """``checkpoints/{which}.pt``; for ``best``, ``last.pt`` when no best exists (no
        validation ever scored a finite value). :func:`load_checkpoint` falls back to the
        version before it where it is missing or corrupt.

        Raises:
            CheckpointError: neither exists.
        """
        if which == "best" and not self.has_checkpoint("best") and self.has_checkpoint("last"):
            which = "last"
        if not self.has_checkpoint(which):
            raise CheckpointError(f"{self.path} has no checkpoint '{which}' (train it first)")
        return self.checkpoint(which)

    def lock(self) -> RunLock:
        """The directory's lock (:class:`~metafit.runs.lock.RunLock`; the directory must
        exist)."""
        return RunLock(self.path)

    def exists(self) -> bool:
        return self.config.is_file()

    def write_config(self, recipe: Recipe) -> None:
        atomic_write_text(self.config, recipe_to_yaml(recipe, metafit_version=__version__))

    def read_recipe(self) -> Recipe:
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path} is not a metafit run directory (no config.yaml)")
        values = read_yaml_mapping(self.config, "run config")
        values.pop("metafit_version", None)
        check_scope(values, str(self.config))
        return make_recipe(values, str(self.config))

    def status(self) -> dict[str, Any]:
        """``status.json`` (``{"status": "missing"}`` without one).

        Raises:
            RunDirError: the file is not a JSON object.
        """
        if not self.status_file.is_file():
            return {"status": "missing"}
        try:
            status = parse_json(read_bounded(self.status_file, MAX_STATUS_BYTES),
                                self.status_file)
        except (ValueError, OSError) as e:
            raise RunDirError(str(e)) from None
        if not isinstance(status, dict):
            raise RunDirError(f"{self.status_file} is not a JSON object")
        return status

    def set_status(self, status: str, **info: Any) -> None:
        atomic_write_text(self.status_file, json.dumps({"status": status, **info}, indent=1))

    def is_finished(self) -> bool:
        return self.status().get("status") in FINISHED

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of ``metrics.jsonl``. A last line cut off by a crash (not valid
        JSON) is left out, with a warning naming the file and line.

        Raises:
            RunDirError: another line is not a JSON object (the message names it).
        """
        if not self.metrics.is_file():
            return []
        try:
            lines = read_bounded(self.metrics, MAX_METRICS_BYTES).split(b"\n")
        except (ValueError, OSError) as e:
            raise RunDirError(str(e)) from None
        last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
        records: list[dict[str, Any]] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as e:  # RecursionError: nested too deeply
                if i == last:
                    log.warning("%s, line %d: an incomplete record (a write cut off by a "
                                "crash); leaving it out", self.metrics, i + 1)
                    break
                raise RunDirError(f"{self.metrics}, line {i + 1}: not a JSON record "
                                  f"({str(e)[:200]})") from None
            if not isinstance(record, dict) or not isinstance(record.get("iteration", 0), int):
                raise RunDirError(f"{self.metrics}, line {i + 1}: not a metric record (a "
                                  "JSON object with an integer 'iteration')")
            records.append(record)
        return records

    def truncate_metrics(self, iteration: int) -> None:
        """Keep only metric records up to ``iteration`` (those after it will be redone);
        an incomplete last line is cut (:meth:`read_metrics`)."""
        kept = [r for r in self.read_metrics() if int(r.get("iteration", 0)) <= iteration]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def remove_stale_temporaries(self, min_age: float = 60.0) -> list[Path]:
        """Delete the temporary files of atomic writes that never finished (the process
        died between writing and renaming: ``.NAME.XXXX.tmp`` beside the run's files and
        checkpoints) and were last modified over ``min_age`` seconds ago, so that a writer
        still at work keeps its file. Returns the deleted paths; logs what they held."""
        now, size = time.time(), 0
        removed: list[Path] = []
        for folder in (self.path, self.checkpoints, self.report):
            for path in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
                try:
                    st = path.stat()
                    if not path.is_file() or now - st.st_mtime < min_age:
                        continue
                    path.unlink()
                except FileNotFoundError:  # renamed or removed meanwhile
                    continue
                removed.append(path)
                size += st.st_size
        if removed:
            log.warning("removed %d unfinished temporary file(s) (%.1f MB) left in %s by an "
                        "interrupted write", len(removed), size / 2**20, self.path)
        return removed

    def save_checkpoint(self, which: str, payload: dict[str, Any]) -> None:
        """Write ``checkpoints/{which}.pt`` atomically with the digest of its content,
        keeping the version it replaces as ``{which}.previous.pt``."""
        data = {**payload, "metafit_version": __version__}
        data[CHECKSUM] = content_digest(data)
        path = self.checkpoint(which)
        if path.is_file():
            _keep_previous(path)
        atomic_save(data, path)


def _keep_previous(path: Path) -> None:
    """Make ``previous_version(path)`` the current ``path`` (a hard link: ``path`` itself
    never goes missing; a copy where links are not supported)."""
    previous = previous_version(path)
    link = previous.with_name(f".{previous.name}.{os.getpid()}.tmp")
    try:
        os.link(path, link)
    except OSError:
        import shutil

        shutil.copyfile(path, link)
    os.replace(link, previous)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """One checkpoint file, loaded without running code and checked against its digest."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        check_tensor_archive(path, f"checkpoint {path}")
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain values, which "
            f"metafit never loads (they could run code): {refusal_reason(e)}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e})") from None
    if not isinstance(data, dict) or "algorithm" not in data:
        raise CheckpointError(f"{path} is not a metafit checkpoint (no 'algorithm' state)")
    state = data["algorithm"]
    if not (isinstance(state, dict)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())):
        raise CheckpointError(f"{path}: its 'algorithm' state must map parameter names to "
                              "tensors")
    if not isinstance(data.get("state", {}), dict):
        raise CheckpointError(f"{path}: its 'state' (the trainer's counters) must be a "
                              "mapping")
    expected = data.pop(CHECKSUM, None)
    if expected is None:
        log.warning("checkpoint %s carries no content digest (written by an older metafit); "
                    "it cannot be checked for corruption", path)
    else:
        try:
            actual = content_digest(data)
        except TypeError as e:
            raise CheckpointError(f"checkpoint {path}: {e}") from None
        if actual != expected:
            raise CheckpointError(f"checkpoint {path} does not match its content digest "
                                  "(corrupt: changed after it was written)")
    return data


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`RunDir.save_checkpoint` (module docstring); where
    it is missing, corrupt or refused, the version before it (``*.previous.pt``), with a
    warning.

    Raises:
        CheckpointError: neither the file nor its previous version loads.
    """
    path = Path(path)
    try:
        return _read_checkpoint(path)
    except CheckpointError as e:
        previous = previous_version(path)
        if not previous.is_file():
            raise
        try:
            data = _read_checkpoint(previous)
        except CheckpointError as e2:
            raise CheckpointError(f"{e}; the previous version does not load either: "
                                  f"{e2}") from None
        log.warning("%s; using the previous checkpoint %s (iteration %s)", e, previous,
                    data.get("state", {}).get("iteration", "?"))
        return data


def restore_state(module: nn.Module, ckpt: dict[str, Any], source: str) -> None:
    """Load ``ckpt["algorithm"]`` into ``module`` after :func:`check_architecture`."""
    check_architecture(module, ckpt["algorithm"], source)
    module.load_state_dict(ckpt["algorithm"])


def check_architecture(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``module``'s tensors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source} was saved for a different architecture: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, tensor in own.items():
        if tuple(state[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} was saved for a different architecture: '{name}' has shape "
                f"{tuple(state[name].shape)} there but {tuple(tensor.shape)} in this model"
            )
