"""Shared helpers of the multi-process tests (``test_distributed.py``,
``test_rl_distributed.py``): a free loopback port, workers spawned as a gloo process
group on the CPU, and ``metafit`` under the real ``torchrun`` launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp

from metafit.distributed import DistContext, init_distributed

__all__ = ["WORLD", "SRC", "free_port", "join_group", "spawn_group", "torchrun"]

#: Processes of the multi-process tests.
WORLD = 2
#: This checkout's sources, put first on the workers' path.
SRC = str(Path(__file__).resolve().parents[1] / "src")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def join_group(rank: int, port: int, world: int = WORLD) -> DistContext:
    """In a spawned worker: the environment torchrun would set, one thread, and the gloo
    process group joined (:func:`~metafit.distributed.init_distributed`)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    return init_distributed("cpu")


def spawn_group(worker: Callable[..., None], args: Sequence[Any],
                tmp_path_factory: pytest.TempPathFactory, name: str,
                world: int = WORLD) -> Path:
    """Run ``worker(rank, port, out, *args)`` on ``world`` spawned processes; the folder
    ``out`` they wrote to.

    A second try on a fresh port and folder if the first start fails: the port that
    :func:`free_port` found free can be taken before gloo binds it (one CI run aborted in
    gloo's start-up; the same code passed on the rerun)."""
    for attempt in (1, 2):
        tmp = tmp_path_factory.mktemp(name)
        try:
            mp.spawn(worker, args=(free_port(), str(tmp), *args), nprocs=world, join=True)
            return tmp
        except mp.ProcessExitedException:  # killed by a signal: not an error of the code
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def torchrun(program: Sequence[str], tmp: Path, nproc: int = WORLD,
             timeout: float = 150) -> subprocess.CompletedProcess[str]:
    """``python PROGRAM`` (e.g. ``-m metafit.cli train ...``) on ``nproc`` processes under
    the real torchrun launcher, one thread each, with ``tmp`` as its temporary directory
    (torchrun leaves a ``torchelastic_*`` log directory there)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "METAFIT_DIST_TIMEOUT": "60",
           "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
           "TMPDIR": str(tmp)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *program]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                          start_new_session=True)
