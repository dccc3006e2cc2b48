"""The run directory, metafit's unit of persistence::

    runs/NAME/
      config.yaml        the resolved recipe + library version (written first)
      status.json        {"status": "running" | "complete" | "stopped_early" | "failed", ...}
      metrics.jsonl      one JSON object per logged iteration / validation
      checkpoints/       last.pt, best.pt (atomic: temp file + rename)
      report/            evaluation results and plots

A run counts as finished only when ``status.json`` says ``complete`` or
``stopped_early``; an interrupted one says ``running`` and is resumed by training again
into the same directory. Every file is written atomically; a process killed while writing
one leaves a hidden temporary file (``.last.pt.XXXX.tmp``: a text model's checkpoint is
~270 MB), which training again removes (:meth:`RunDir.remove_stale_temporaries`).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from metafit import __version__
from metafit.config import Recipe, make_recipe, recipe_to_yaml
from metafit.io import atomic_save, atomic_write_text

__all__ = ["RunDir", "CheckpointError", "load_checkpoint", "check_architecture",
           "restore_state"]

FINISHED = ("complete", "stopped_early")

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or made for another architecture."""


class RunDir:
    """Paths and small files of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    status_file = property(lambda self: self.path / "status.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    report = property(lambda self: self.path / "report")

    def checkpoint(self, which: str = "best") -> Path:
        return self.checkpoints / f"{which}.pt"

    def trained_checkpoint(self, which: str = "best") -> Path:
        """``checkpoints/{which}.pt``; for ``best``, ``last.pt`` when no best exists (no
        validation ever scored a finite value).

        Raises:
            CheckpointError: neither exists.
        """
        path = self.checkpoint(which)
        if not path.is_file() and which == "best" and self.checkpoint("last").is_file():
            path = self.checkpoint("last")
        if not path.is_file():
            raise CheckpointError(f"{self.path} has no checkpoint '{which}' (train it first)")
        return path

    def exists(self) -> bool:
        return self.config.is_file()

    def write_config(self, recipe: Recipe) -> None:
        atomic_write_text(self.config, recipe_to_yaml(recipe, metafit_version=__version__))

    def read_recipe(self) -> Recipe:
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path} is not a metafit run directory (no config.yaml)")
        values = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        values.pop("metafit_version", None)
        return make_recipe(values, str(self.config))

    def status(self) -> dict[str, Any]:
        if not self.status_file.is_file():
            return {"status": "missing"}
        return json.loads(self.status_file.read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def set_status(self, status: str, **info: Any) -> None:
        atomic_write_text(self.status_file, json.dumps({"status": status, **info}, indent=1))

    def is_finished(self) -> bool:
        return self.status().get("status") in FINISHED

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        lines = self.metrics.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_metrics(self, iteration: int) -> None:
        """Keep only metric records up to ``iteration`` (those after it will be redone)."""
        kept = [r for r in self.read_metrics() if int(r.get("iteration", 0)) <= iteration]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def remove_stale_temporaries(self, min_age: float = 60.0) -> list[Path]:
        """Delete the temporary files of atomic writes that never finished (the process
        died between writing and renaming: ``.NAME.XXXX.tmp`` beside the run's files and
        checkpoints) and were last modified over ``min_age`` seconds ago, so that a writer
        still at work keeps its file. Returns the deleted paths; logs what they held."""
        now, size = time.time(), 0
        removed: list[Path] = []
        for folder in (self.path, self.checkpoints):
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
        atomic_save({**payload, "metafit_version": __version__}, self.checkpoint(which))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :meth:`RunDir.save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not a metafit checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e})") from e
    if not isinstance(data, dict) or "algorithm" not in data:
        raise CheckpointError(f"{path} is not a metafit checkpoint (no 'algorithm' state)")
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
