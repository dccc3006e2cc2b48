"""``metafit bench``: meta-training speed against the peers, on identical weights and data.

The command is here; the problems are in :mod:`metafit.cli.bench_problems`, the peer
implementations in :mod:`metafit.cli.bench_peers`, peak memory in
:mod:`metafit.cli.bench_memory`.

For each configuration (algorithm x problem x inner steps) the same meta-gradient is
computed by metafit (``Algorithm.meta_gradients``) and by each peer:

* ``higher`` (Grefenstette et al. 2019, ``innerloop_ctx``, the MAML example's per-task
  loop with a ``backward()`` per task);
* ``torchopt``: TorchOpt's functional API (``torchopt.sgd`` + ``apply_updates`` over a
  parameter tuple, ``functional_call`` forwards), one task after another;
* ``loop``: the plain PyTorch per-task loop that learn2learn-style code runs
  (``functional_call``, one graph over the meta-batch, one backward), and the only peer for
  ProtoNet, which has no inner loop for ``higher`` or TorchOpt to differentiate.

All of them start from the same initial weights and one batch of episodes (the peers on
the textbook conv4 layer order, :func:`textbook`, which is what their examples define);
before timing, every peer's meta-gradient is compared with metafit's (``max |a - b| /
max |b|`` over all parameters, must be below ``1e-3``), so the speed comparison is between
equal computations (on a GPU the comparison runs in float64: in float32, cuDNN's summation
order, amplified by the inner steps, makes the implementations disagree beyond the
tolerance; ``benchmarks/RESULTS.md``, "On a GPU").
After one untimed call of each, timings alternate between implementations within one
process (metafit, peer 1, peer 2, ..., repeat) and report the median; tasks/s =
meta-batch / median seconds. Peak memory on a CPU is measured per implementation in a
fresh subprocess: the rise of the process's peak resident set size (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs``) over one meta-gradient after a warm-up one, with glibc's
mmap threshold fixed so that freed tensors are returned at once; metafit's is given for its
default task workers and for one worker (the peers run one task at a time). On a GPU it is
the CUDA allocator's peak over one meta-gradient.

On CUDA, ``--cuda-graph`` replays metafit's meta-gradient as a CUDA graph
(:mod:`metafit.execution.cuda_graphs`); ``--tf32`` and ``--cudnn-benchmark`` switch PyTorch's TF32
and cuDNN-autotuning settings on for every implementation alike.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from metafit.algorithms import get_algorithm
from metafit.cli.bench_memory import peak_memory_mib
from metafit.cli.bench_options import build_parser
from metafit.cli.bench_peers import (
    IMPLEMENTATIONS,
    PEERS,
    fresh,
    loop_fn,
    metafit_fn,
    peers_for,
    textbook,
)
from metafit.cli.bench_problems import (
    AGREEMENT_TOLERANCE,
    BenchConfig,
    GradFn,
    Grads,
    default_configs,
    make_problem,
    max_relative_difference,
    synchronize,
)
from metafit.io import atomic_write_text

__all__ = [
    "AGREEMENT_TOLERANCE",
    "IMPLEMENTATIONS",
    "PEERS",
    "BenchConfig",
    "BenchRow",
    "GradFn",
    "Grads",
    "default_configs",
    "format_table",
    "loop_fn",
    "make_problem",
    "max_relative_difference",
    "metafit_fn",
    "run_config",
    "textbook",
]


@dataclass
class BenchRow:
    """Results of one configuration: seconds per meta-batch (median) and tasks/s per
    implementation, peak memory (MiB, when measured) and the gradient agreement of each
    peer with metafit."""

    config: BenchConfig
    seconds: dict[str, float] = field(default_factory=dict)  # float32
    agreement: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float] = field(default_factory=dict)

    def tasks_per_second(self, impl: str) -> float:
        return self.config.meta_batch / self.seconds[impl]

    def speedup(self) -> tuple[str, float]:
        """(fastest peer, metafit's tasks/s over that peer's)."""
        peers = {k: v for k, v in self.seconds.items() if k != "metafit"}
        best = min(peers, key=peers.__getitem__)
        return best, peers[best] / self.seconds["metafit"]

    def to_json(self) -> dict[str, object]:
        return {"config": asdict(self.config), "label": self.config.label,
                "seconds": self.seconds, "agreement": self.agreement,
                "peak_mib": self.peak_mib}


def run_config(cfg: BenchConfig, peers: Sequence[str], repeats: int = 5, seed: int = 0,
               memory: bool = False) -> BenchRow:
    """Check agreement, then time metafit and ``peers`` alternately (median of
    ``repeats``); with ``memory``, also measure peak memory in subprocesses."""
    impls = ["metafit", *peers_for(cfg, peers)]
    fns = {impl: fresh(cfg, impl, seed)[0] for impl in impls}
    row = BenchRow(cfg)
    # On a GPU, float32 convolutions sum in an order of cuDNN's choosing, and K = 5 inner
    # steps at rate 0.4 amplify that rounding past the tolerance; there the computations
    # are compared in float64 (same weights, same data), and timed in float32.
    exact = cfg.device != "cpu"
    check = ({impl: fresh(cfg, impl, seed, torch.float64)[0] for impl in impls} if exact
             else fns)
    reference = check["metafit"]()
    for impl in impls[1:]:
        row.agreement[impl] = max_relative_difference(check[impl](), reference)
        if row.agreement[impl] > AGREEMENT_TOLERANCE:
            raise RuntimeError(
                f"{cfg.label}: {impl}'s meta-gradient differs from metafit's by "
                f"{row.agreement[impl]:.2e} (relative), above {AGREEMENT_TOLERANCE}: the "
                "implementations do not compute the same thing")
    for impl in impls:  # untimed: lazy set-up (cuDNN plans, thread pools, a CUDA graph)
        fns[impl]()
    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(repeats):
        for impl in impls:
            synchronize(cfg.device)
            start = time.perf_counter()
            fns[impl]()
            synchronize(cfg.device)
            times[impl].append(time.perf_counter() - start)
    row.seconds = {impl: statistics.median(v) for impl, v in times.items()}
    if memory:
        row.peak_mib = {impl: peak_memory_mib(cfg, impl, seed) for impl in impls}
        if cfg.device == "cpu":  # on a GPU metafit runs one task stream already
            row.peak_mib["metafit W=1"] = peak_memory_mib(cfg, "metafit", seed, workers=1)
    return row


# -- report -------------------------------------------------------------------------------
def format_table(rows: Sequence[BenchRow], peers: Sequence[str]) -> str:
    """Markdown: tasks/s (and peak MiB) per implementation, the fastest peer's ratio and
    the largest gradient difference."""
    memory = any(r.peak_mib for r in rows)
    head = ["configuration", "metafit", *peers, "speed-up vs fastest peer", "max grad diff"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.config.label]
        for impl in ["metafit", *peers]:
            if impl not in r.seconds:
                cells.append("n/a")
                continue
            cell = f"{r.tasks_per_second(impl):.1f}"
            if memory and impl in r.peak_mib:
                cell += f" / {max(0.0, r.peak_mib[impl]):.0f} MiB"
            if memory and impl == "metafit" and "metafit W=1" in r.peak_mib:
                cell += f" ({max(0.0, r.peak_mib['metafit W=1']):.0f} MiB with 1 worker)"
            cells.append(cell)
        best, ratio = r.speedup()
        cells.append(f"**{ratio:.2f}x** ({best})")
        cells.append(f"{max(r.agreement.values()):.1e}" if r.agreement else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``metafit bench`` / ``python -m metafit.cli.bench``."""
    parser = build_parser(argparse.ArgumentParser(prog="metafit bench"))
    return run(parser.parse_args(argv))


def select_configs(args: argparse.Namespace) -> list[BenchConfig]:
    """The default grid filtered by the command-line options."""
    configs = default_configs(args.quick)
    if args.algorithms:
        configs = [c for c in configs if c.algorithm in args.algorithms]
    if args.problems:
        configs = [c for c in configs if c.problem in args.problems]
    if args.steps:
        configs = [c for c in configs if not c.adapts_with_steps or c.inner_steps in args.steps]
    if args.meta_batch:
        configs = [BenchConfig(**{**asdict(c), "meta_batch": args.meta_batch}) for c in configs]
    configs = [BenchConfig(**{**asdict(c), "device": args.device, "batching": args.batching,
                              "cuda_graph": args.cuda_graph, "tf32": args.tf32,
                              "cudnn_benchmark": args.cudnn_benchmark})
               for c in configs]
    if args.cuda_graph:  # the others read values back from the device mid-computation
        configs = [c for c in configs if get_algorithm(c.algorithm).graphable]
    if not configs:
        raise SystemExit("metafit bench: no configuration matches the options")
    return configs


def _say(line: str, stream: Any = None) -> None:
    stream = stream or sys.stdout
    stream.write(line + "\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the selected configurations, print the table (and write JSON)."""
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        raise SystemExit(f"metafit bench: unknown peer(s) {unknown}; known: {list(PEERS)}")
    for peer in ("higher", "torchopt"):
        if peer in args.peers:
            try:
                __import__(peer)
            except ImportError:
                raise SystemExit(f"metafit bench: the peer {peer!r} is not installed; "
                                 "pip install 'metafit[bench]', or leave it out with "
                                 "--peers") from None
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(f"metafit bench: --device {args.device}, but torch sees no CUDA "
                             "device")
        # Full float32 unless --tf32: TF32 convolutions (cuDNN's default) make the peers'
        # second-order meta-gradients differ from each other well beyond the tolerance
        # (benchmarks/RESULTS.md, "On a GPU"); the agreement check runs in float64 on a GPU
        # either way.
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
    elif args.cuda_graph or args.tf32 or args.cudnn_benchmark:
        raise SystemExit("metafit bench: --cuda-graph, --tf32 and --cudnn-benchmark need "
                         "--device cuda")
    rows: list[BenchRow] = []
    configs = select_configs(args)
    say = functools.partial(_say, stream=sys.stderr if args.json else sys.stdout)
    say(f"# {len(configs)} configurations, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads")
    for i, cfg in enumerate(configs, 1):
        row = run_config(cfg, args.peers, args.repeats, memory=args.memory)
        rows.append(row)
        best, ratio = row.speedup()
        say(f"[{i}/{len(configs)}] {cfg.label}: metafit {row.tasks_per_second('metafit'):.1f} "
            f"tasks/s, {ratio:.2f}x {best}")
        if args.json_out:  # after every row, so an interrupted run keeps what it measured
            atomic_write_text(args.json_out, json.dumps([r.to_json() for r in rows], indent=1))
    say("\n" + format_table(rows, args.peers))
    if args.json:
        from metafit.cli.results import emit

        emit("bench", {"torch": torch.__version__, "threads": torch.get_num_threads(),
                       "rows": [r.to_json() for r in rows]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
