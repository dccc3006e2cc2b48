"""A bounded pool of adaptation workers.

At most ``workers`` adaptations run at once and at most ``queue`` more wait; a request
beyond that is refused at once (the server answers 503 with ``Retry-After``) instead of
piling up. Threads, not processes: the model's tensors are shared without copying, and
torch releases the GIL inside its kernels.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["AdaptationPool", "PoolFull"]

T = TypeVar("T")


class PoolFull(RuntimeError):
    """Every worker is busy and the queue is full."""


class AdaptationPool:
    """``workers`` threads and a waiting line of ``queue`` jobs."""

    def __init__(self, workers: int, queue: int) -> None:
        self.workers = workers
        self.capacity = workers + queue
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="metafit-adapt")
        self._lock = threading.Lock()
        self._pending = 0
        self._mean_seconds = 1.0  # running mean of a job's duration, for Retry-After

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn()`` on a worker. Its slot is freed when the future is done, cancelled
        while waiting included (a client that went away).

        Raises:
            PoolFull: ``workers + queue`` jobs are already running or waiting.
        """
        with self._lock:
            if self._pending >= self.capacity:
                raise PoolFull(f"{self._pending} adaptations running or queued")
            self._pending += 1
        try:
            future = self._executor.submit(self._timed, fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(lambda _: self._release())
        return future

    def retry_after(self) -> int:
        """Seconds after which a refused job would likely find room (at least 1)."""
        waves = max(1, self._pending - self.workers + 1) / self.workers
        return max(1, round(self._mean_seconds * waves))

    def shutdown(self) -> None:
        """Cancel waiting jobs and wait for the running ones."""
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _timed(self, fn: Callable[[], T]) -> T:
        start = time.perf_counter()
        try:
            return fn()
        finally:
            seconds = time.perf_counter() - start
            with self._lock:
                self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * seconds

    def _release(self) -> None:
        with self._lock:
            self._pending -= 1
