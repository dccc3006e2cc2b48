"""One training process's session with its run directory.

Rank 0 alone reads and writes the directory; in a distributed run the other ranks
receive what it read (no shared file system needed) and join in the collective steps
(gathering every rank's random state into a checkpoint). For the whole session rank 0
holds the directory's lock (:class:`~metafit.runs.lock.RunLock`), so that no second
process trains into it.

    session = TrainingSession(RunDir(out), dist)
    try:
        start = session.open(recipe)                    # claim, check, read last.pt
        counters = session.resume(parts, start)         # when start.kind == "resume"
        session.begin(recipe, iteration)                # config.yaml, status "running"
        session.save("last", parts, counters)           # every rank
        session.set_status("complete", iteration=...)
    finally:
        session.release()
"""

from __future__ import annotations

import logging
from typing import Any

from metafit.config.recipe import Recipe
from metafit.distributed import DistContext, run_on_main
from metafit.runs.checkpoints import (
    Resumable,
    Start,
    restore_training_checkpoint,
    starting_point,
    training_checkpoint,
)
from metafit.runs.directory import RunDir
from metafit.runs.lock import LOCK_NAME, RunLock

__all__ = ["TrainingSession", "UNSTARTED_FILES"]

log = logging.getLogger(__name__)

#: What a start that failed before its first checkpoint leaves in a run directory, removed
#: by the next start so that it begins afresh with any recipe (``mlflow.json``: the MLflow
#: run id of :class:`~metafit.training.mlflow_logger.MLflowLogger`, so that a new MLflow
#: run is created too).
UNSTARTED_FILES = ("config.yaml", "status.json", "metrics.jsonl", "mlflow.json")


class TrainingSession:
    """``run`` as the process at ``dist`` trains into it (module docstring)."""

    def __init__(self, run: RunDir, dist: DistContext) -> None:
        self.run, self.dist = run, dist
        self._lock: RunLock | None = None  # rank 0's, from open() to release()
        self._created = False  # whether open() created the directory

    def open(self, recipe: Recipe) -> Start:
        """Rank 0 creates the directory if needed, locks it and reads where training
        ``recipe`` starts (:func:`~metafit.runs.checkpoints.starting_point`); every rank
        gets the answer (collective).

        Raises:
            RunLockedError: another live process holds the directory.
            ValueError: the directory holds a run of another recipe.
            CheckpointError: the checkpoint to start from does not load.
        """
        return run_on_main(lambda: self._claim_and_read(recipe), self.dist)

    def _claim_and_read(self, recipe: Recipe) -> Start:
        path = self.run.path
        self._created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        lock = self.run.lock()
        lock.acquire()
        self._lock = lock
        self._forget_failed_start()
        return starting_point(self.run, recipe)

    def _forget_failed_start(self) -> None:
        """Remove what an earlier start left when it failed before its first checkpoint
        (a missing package, bad data found late, a crash in the first iteration): with no
        checkpoint there is nothing to resume, so it must not pin the directory to its
        recipe (rank 0, holding the lock)."""
        run = self.run
        if not run.exists() or run.has_checkpoint("last") or run.has_checkpoint("best"):
            return
        log.info("%s: an earlier start left no checkpoint; starting afresh", run.path)
        for name in UNSTARTED_FILES:
            (run.path / name).unlink(missing_ok=True)

    def resume(self, parts: Resumable, start: Start) -> dict[str, Any]:
        """Restore ``parts`` from ``start``'s checkpoint (this rank's random state), cut
        the metric records after it (rank 0); returns the trainer's saved counters.

        Raises:
            ValueError: ``start`` holds no checkpoint.
            CheckpointError: the checkpoint is of another architecture or world size.
        """
        if start.checkpoint is None:
            raise ValueError(f"nothing to resume from (start: {start.kind})")
        counters = restore_training_checkpoint(parts, start.checkpoint, start.source,
                                               self.dist)
        if self.dist.is_main:
            self.run.truncate_metrics(int(counters["iteration"]))
        return counters

    def begin(self, recipe: Recipe, iteration: int) -> None:
        """Rank 0: remove what interrupted writes left, write ``config.yaml`` and mark the
        run ``running`` at ``iteration``."""
        if self.dist.is_main:
            self.run.remove_stale_temporaries()
            self.run.write_config(recipe)
        self.set_status("running", iteration=iteration)

    def save(self, which: str, parts: Resumable, counters: dict[str, Any]) -> None:
        """Write ``checkpoints/{which}.pt`` (collective: every rank calls it; rank 0
        writes)."""
        payload = training_checkpoint(parts, counters, self.dist)
        if self.dist.is_main:
            self.run.save_checkpoint(which, payload)

    def set_status(self, status: str, **info: Any) -> None:
        """``status.json`` (rank 0; with ``world_size`` in a distributed run)."""
        if self.dist.enabled:
            info["world_size"] = self.dist.world_size
        if self.dist.is_main:
            self.run.set_status(status, **info)

    def release(self) -> None:
        """Drop the lock (nothing to do where none is held); remove the directory again
        when :meth:`open` created it and a failed start left nothing in it but the lock
        file."""
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        path = self.run.path
        if self._created and {p.name for p in path.iterdir()} <= {LOCK_NAME}:
            (path / LOCK_NAME).unlink(missing_ok=True)
            path.rmdir()
