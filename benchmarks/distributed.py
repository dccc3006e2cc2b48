"""Distributed meta-training throughput: tasks/s of ``metafit train`` on 1 and N processes.

Each configuration is meta-trained a few iterations by the real command line: plainly on
one process, and under ``torchrun --nproc_per_node N`` on N processes with one thread
each (the meta-batch split across them, meta-gradients all-reduced over gloo). For
comparison, one process also runs with as many task-worker threads as the largest N
(``metafit.execution.threads``: on a CPU, one process already spreads the tasks of a meta-batch
over the cores that way). Tasks/s come from rank 0's ``metrics.jsonl`` (the
meta-training step time, validation excluded; the first step is a warm-up and is not
counted), medians over ``--repeats`` runs, the modes interleaved. Scaling efficiency is
``tps(N) / (N * tps(1))``.

Usage::

    python benchmarks/distributed.py                 # 1 and 2 processes
    python benchmarks/distributed.py --quick         # a smoke run, results not written
    python benchmarks/distributed.py --procs 1 2 4   # on a machine with more cores

The block goes to ``--results`` between ``<!-- distributed:start -->`` and
``<!-- distributed:end -->`` (raw rows: ``distributed.json`` in ``--results-dir``, by default
``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import OMNIGLOT, add_output_options, load_average, machine, publish


@dataclass(frozen=True)
class Config:
    """One benchmarked recipe: shipped ``recipe`` plus ``overrides``, ``iterations``."""

    label: str
    recipe: str
    overrides: tuple[str, ...]
    iterations: int
    meta_batch: int
    omniglot: bool = False


def configs(quick: bool) -> list[Config]:
    """The benchmarked recipes (fewer iterations with ``quick``)."""
    return [
        Config("maml omniglot 5w1s conv4-64 T=16 (shipped recipe: 1 query)",
               "omniglot_5w1s_maml", ("meta_batch=16",), 4 if quick else 12, 16,
               omniglot=True),
        Config("protonet omniglot 5w1s conv4-64 T=16 (15 queries)", "omniglot_5w1s_protonet",
               ("ways=5", "queries=15", "meta_batch=16"), 3 if quick else 6, 16,
               omniglot=True),
        Config("maml sinusoid MLP 1-40-40-1 T=32", "sinusoid_maml", ("meta_batch=32",),
               60 if quick else 400, 32),
    ]


@dataclass(frozen=True)
class Mode:
    """``procs`` processes with ``threads`` torch threads (= task workers) each."""

    procs: int
    threads: int

    @property
    def label(self) -> str:
        if self.procs == 1:
            return ("1 process x 1 thread" if self.threads == 1 else
                    f"1 process x {self.threads} threads")
        return f"{self.procs} processes x 1 thread (torchrun)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(cfg: Config, mode: Mode, out: Path, data_root: Path | None) -> list[str]:
    """The ``metafit train`` command line of one timed run."""
    its = cfg.iterations
    args = ["train", cfg.recipe, *cfg.overrides, f"iterations={its}", "log_every=1",
            f"val_every={its}", "val_episodes=4", f"checkpoint_every={its}",
            f"threads={mode.threads}", f"task_workers={mode.threads}",
            "--out", str(out), "--no-progress"]
    if cfg.omniglot:
        args.insert(2, f"data_root={data_root}" if data_root else "dataset=glyphs")
    if mode.procs == 1:
        return [sys.executable, "-m", "metafit.cli", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(mode.procs),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            "-m", "metafit.cli", *args]


def tasks_per_second(run: Path, meta_batch: int) -> float:
    """Meta-training tasks/s of a finished run from its ``metrics.jsonl``, after the first
    (warm-up) step: rank 0's step time, which includes waiting for the all-reduce."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    first, last = train[0], train[-1]
    return (last["iteration"] - first["iteration"]) * meta_batch / (
        last["seconds"] - first["seconds"])


def time_one(cfg: Config, mode: Mode, tmp: Path, data_root: Path | None, index: int) -> float:
    out = tmp / f"{cfg.recipe}_{mode.procs}x{mode.threads}_{index}"
    env = {**os.environ, "OMP_NUM_THREADS": str(mode.threads)}
    done = subprocess.run(command(cfg, mode, out, data_root), env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{cfg.label} / {mode.label} failed:\n{done.stderr[-3000:]}")
    return tasks_per_second(out, cfg.meta_batch)


def table(rows: list[dict[str, object]], modes: list[Mode]) -> str:
    """Markdown: median (min-max) tasks/s per mode, efficiencies."""
    many = [m for m in modes if m.procs > 1]
    head = ["configuration", *[m.label for m in modes],
            *[f"scaling efficiency, {m.procs} processes" for m in many],
            *[f"{m.procs} processes / 1 process x {m.procs} threads" for m in many]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        tps: dict[str, list[float]] = row["tps"]  # type: ignore[assignment]
        med = {label: statistics.median(v) for label, v in tps.items()}
        cells = [str(row["label"])]
        cells += [f"{med[m.label]:.1f} ({min(tps[m.label]):.1f}-{max(tps[m.label]):.1f})"
                  for m in modes]
        one = med[Mode(1, 1).label]
        cells += [f"**{med[m.label] / (m.procs * one):.0%}**" for m in many]
        cells += [f"{med[m.label] / med[Mode(1, m.procs).label]:.2f}x" for m in many]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--data-root", default=str(OMNIGLOT),
                        help="Omniglot zips (default ../shared/data/omniglot; built-in "
                        "Glyphs when missing)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    data_root = Path(args.data_root) if Path(args.data_root).is_dir() else None
    top = max(args.procs)
    modes = [Mode(p, 1) for p in sorted(set(args.procs) | {1})]
    if top > 1:  # one process using as many cores through task-worker threads
        modes.insert(1, Mode(1, top))
    repeats = 1 if args.quick else args.repeats
    load_before, start = load_average(), time.perf_counter()
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in configs(args.quick):
            tps: dict[str, list[float]] = {m.label: [] for m in modes}
            for i in range(repeats):  # interleaved: drift hits every mode alike
                for mode in modes:
                    tps[mode.label].append(time_one(cfg, mode, Path(tmp), data_root, i))
                    sys.stdout.write(f"{cfg.label} | {mode.label}: "
                                     f"{tps[mode.label][-1]:.1f} tasks/s\n")
                    sys.stdout.flush()
            rows.append({"label": cfg.label, "iterations": cfg.iterations, "tps": tps})
    elapsed = time.perf_counter() - start
    text = table(rows, modes)
    sys.stdout.write("\n" + text + "\n")
    if args.quick:
        return 0
    cmd = "python benchmarks/distributed.py" + (
        "" if args.procs == [1, 2] else " --procs " + " ".join(map(str, args.procs)))
    data = f"Omniglot small sets ({data_root})" if data_root else "built-in Glyphs"
    block = "\n".join([
        f"Machine: {machine()}. Command: `{cmd}` ({elapsed / 60:.1f} min, load average "
        f"before: {load_before}). Data: {data}. Cells: meta-training tasks/s of `metafit "
        f"train`, median (min-max) of {repeats} runs, modes interleaved; from rank 0's "
        "step times after a warm-up step (validation excluded, all-reduce included). "
        "Scaling efficiency = tps(N processes) / (N x tps(1 process x 1 thread)). "
        f"\"1 process x {top} threads\": `threads={top} task_workers={top}`, i.e. {top} "
        f"task-worker threads for the conv4 rows (`metafit.execution.threads`) and {top} intra-op "
        "threads for the sinusoid MLP (its meta-batch runs as one `vmap`, no task loop).",
        "",
        text,
    ])
    publish(args, "distributed", "Distributed meta-training (`benchmarks/distributed.py`)",
            block, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
