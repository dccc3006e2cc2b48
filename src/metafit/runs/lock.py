"""One process at a time in a run directory.

Two ``metafit train`` processes writing one run directory would interleave its
``metrics.jsonl`` and overwrite each other's checkpoints. :class:`RunLock` holds an
exclusive ``flock`` on ``RUN/.lock`` for as long as a trainer works there; the file records
the holder's PID, host and start time, so the refusal names them, and is emptied on
release. The operating system drops the lock when its process dies, however it dies, so
the lock of a killed run is taken over by the next one (a warning names the dead PID) and
never needs removing by hand.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RunLock", "RunLockedError", "LOCK_NAME"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """Another live process holds the run directory."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(text: str) -> tuple[int | None, str]:
    """``(pid, "PID n on host since t")`` from a lock file's content."""
    parts = text.split()
    pid = int(parts[0]) if parts and parts[0].isdigit() else None
    if pid is None:
        return None, "an unknown process"
    host = parts[1] if len(parts) > 1 else "?"
    since = " ".join(parts[2:3])
    return pid, f"PID {pid} on {host}" + (f" since {since}" if since else "")


class RunLock:
    """An exclusive lock on the directory ``directory`` (a context manager).

    Raises (on :meth:`acquire`):
        RunLockedError: another live process holds it; the message names its PID.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _, who = _holder(os.pread(fd, 256, 0).decode("ascii", "replace"))
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is in use by another metafit process ({who}): two "
                "trainings into one run directory would interleave its files; wait for it "
                "to finish, stop it, or choose another --out") from None
        previous = os.pread(fd, 256, 0).decode("ascii", "replace")
        pid, who = _holder(previous)
        if pid is not None and pid != os.getpid() and not _alive(pid):
            log.warning("%s: taking over the lock left by %s, which is no longer running",
                        self.path.parent, who)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {stamp}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock. The file stays (removing it could race with a new holder), emptied,
        so that only a holder that died leaves a PID in it."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()
