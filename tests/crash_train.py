"""``python tests/crash_train.py ITERATION ARGS...``: the ``metafit ARGS`` command line,
whose trainer (rank 0 under torchrun) kills its own process with SIGKILL right after
finishing iteration ITERATION: no clean-up, as in a machine failure. It tests resuming a
run that died mid-way; :class:`KillAt` is the callback doing it."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import metafit.training.trainer as trainer_module
from metafit.training.callbacks import Callback

log = logging.getLogger("crash_train")


class KillAt(Callback):
    """SIGKILLs this process at the end of iteration ``iteration`` (after its records and
    checkpoints are written, before the next step)."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration

    def on_step_end(self, iteration: int, metrics: dict[str, float]) -> None:
        if iteration == self.iteration:
            log.warning("killing this process after iteration %d (test hook)", iteration)
            os.kill(os.getpid(), signal.SIGKILL)


def main(argv: Sequence[str]) -> int:
    at, args = int(argv[0]), list(argv[1:])
    base = trainer_module.Trainer

    class CrashingTrainer(base):  # type: ignore[misc, valid-type]
        def __init__(self, *pos: Any, **kw: Any) -> None:
            kw["callbacks"] = [*kw.get("callbacks", ()), KillAt(at)]
            super().__init__(*pos, **kw)

    trainer_module.Trainer = CrashingTrainer  # type: ignore[misc]  # the CLI's, at call time
    from metafit.cli.main import main as metafit

    return metafit(args)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
