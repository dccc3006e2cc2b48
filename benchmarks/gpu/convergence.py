"""The MAML family trained towards convergence on Omniglot in one GPU lease (issue 30).

    python benchmarks/gpu/convergence.py --data-root .gpu/omniglot --device cuda --out OUT
    python benchmarks/gpu/convergence.py --tiny --data-root DIR --out OUT   # CPU, seconds

Trains MAML, FOMAML, Meta-SGD, ANIL and Reptile from the shipped ``omniglot_5w1s_*``
recipes (the two small background sets, held-out alphabets: ``split_scheme: alphabet``),
MAML once more in bf16 (the accuracy of ``precision: bf16`` against float32), and
ProtoNet for its batched speed; evaluates each on 600 test episodes in the deployed
setting (each query normalised with its support set's BatchNorm statistics, mean and 95%
CI); and writes ``convergence.json`` and ``convergence.md`` into ``--out`` after every
row, so a lease that ends early still returns the rows done (and each run's
``metrics.jsonl``, ``status.json`` and ``config.yaml`` under ``runs/``). It runs in one process
(the Omniglot tensor is decoded once), reads only local files, and exits non-zero when
any row failed or was skipped.

**Iterations: the papers' counts, cut to fit a 15-minute lease.** The shipped recipes
train 60,000 iterations of 32 tasks, MAML's count (Finn et al. 2017, 5-way 1-shot);
Reptile's paper trains 100,000 outer steps of 5 tasks (Nichol et al. 2018, Table 3).
At the 5,403 tasks/s measured for the MAML recipe with CUDA graphs on an H200
(RESULTS.md, "On a GPU", table 3), 60,000 iterations take 356 s, more than the five
methods together can have once the machine's start, data decoding, captures and the
evaluations (Reptile adapts 50 steps per test episode) are paid out of the 10 minutes
one command may run. So each row runs a cut count (:data:`ROWS`): 10,000 iterations for
the MAML family (1/6 of the paper's; 59 s for MAML at 5,403 tasks/s, 36 s for FOMAML
at its measured 8,851), 5,000 for Reptile (1/20) and 1,000 ProtoNet episodes; ``--scale``
multiplies them all. Each row also gets a ``time_budget`` (1.5x its expected time, and
never past ``--deadline``), so one slow method cannot eat the lease: a row stopped by it
says so in its ``stop`` column.

**Speed.** tasks/s from the run's ``metrics.jsonl`` (steps only, after the first logged
window: the CUDA-graph capture is excluded), as ``train_speed.py`` reads it. FLOPs per
task are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` around one
task's meta-gradient on the per-task path in float32 (every matmul and convolution of the
forward passes, the backward and, for second-order MAML, the double backward; the
vmapped path runs the same arithmetic as grouped convolutions). Achieved FLOP/s =
tasks/s x FLOPs per task, as a fraction of the H200's dense limits (:data:`PEAKS`). The
float32 rows run with PyTorch's defaults, under which cuDNN may use TF32 for
convolutions (RESULTS.md, "On a GPU").
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import tasks_per_second  # noqa: E402

from metafit.algorithms.from_recipe import build_algorithm  # noqa: E402
from metafit.config.recipe import Recipe, load_recipe  # noqa: E402
from metafit.episodes import Episodes  # noqa: E402
from metafit.runs.directory import RunDir  # noqa: E402
from metafit.runs.trained import evaluate_run  # noqa: E402
from metafit.training.trainer import train  # noqa: E402

#: Dense peak FLOP/s of one H200 SXM (NVIDIA's H200 datasheet: FP32 67 TFLOPS; TF32
#: Tensor Core 989 and BF16 Tensor Core 1,979 TFLOPS "with sparsity", halved here for
#: dense matrices; the GH100 compute of the H100 SXM, with more memory).
PEAKS = {"float32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12}


@dataclass(frozen=True)
class Row:
    """One row of the table: a shipped recipe, its cut, and what the papers train."""

    label: str
    recipe: str
    iterations: int  # the cut (before --scale)
    paper_iterations: int
    paper: str
    expected_tasks_per_s: float  # for the time budget only; measured rows say the truth
    overrides: tuple[str, ...] = ()
    graphs: bool = False  # cuda_graphs on a CUDA device (the graphable algorithms)


ROWS: tuple[Row, ...] = (
    Row("maml", "omniglot_5w1s_maml", 10_000, 60_000, "Finn et al. 2017", 5403, graphs=True),
    Row("fomaml", "omniglot_5w1s_fomaml", 10_000, 60_000, "Finn et al. 2017", 8851,
        graphs=True),
    Row("metasgd", "omniglot_5w1s_metasgd", 10_000, 60_000, "the shipped recipe's, MAML's",
        5000, graphs=True),
    Row("anil", "omniglot_5w1s_anil", 10_000, 60_000, "the shipped recipe's, MAML's", 5403,
        graphs=True),
    Row("reptile", "omniglot_5w1s_reptile", 5_000, 100_000, "Nichol et al. 2018", 1000),
    Row("protonet", "omniglot_5w1s_protonet", 1_000, 60_000, "the shipped recipe's", 300),
    Row("maml bf16", "omniglot_5w1s_maml", 10_000, 60_000, "Finn et al. 2017", 5403,
        overrides=("precision=bf16",), graphs=True),
)

#: --tiny: every row on the CPU in seconds (a smaller model and batch, tiny episodes).
TINY = ("iterations=2", "meta_batch=2", "hidden=8", "val_episodes=2", "log_every=1",
        "test_queries=2")
TINY_ROW = {"protonet": ("ways=5", "queries=1"), "reptile": ("eval_inner_steps=3",)}


@dataclass
class Result:
    """What one row measured (``status``: ok, failed or skipped)."""

    label: str
    recipe: str
    precision: str
    iterations_planned: int
    paper_iterations: int
    paper: str
    status: str = "skipped"
    iterations: int = 0
    stop: str | None = None
    train_seconds: float | None = None
    tasks_per_s: float | None = None
    flops_per_task: float | None = None
    tflops_per_s: float | None = None
    peak_fraction: dict[str, float] = field(default_factory=dict)
    accuracy: float | None = None
    ci95: float | None = None
    episodes: int | None = None
    batch_norm: str | None = None
    eval_seconds: float | None = None
    error: str | None = None


def random_tasks(recipe: Recipe, device: str, tasks: int = 1) -> Episodes:
    """``tasks`` meta-training tasks of the recipe's shape (random pixels: for counting
    FLOPs and timing, where the values do not matter)."""
    n, k, q = recipe.ways, recipe.shots, recipe.queries
    shape = (recipe.channels, recipe.image_size, recipe.image_size)
    g = torch.Generator().manual_seed(0)
    sx = torch.rand(tasks, n * k, *shape, generator=g)
    qx = torch.rand(tasks, n * q, *shape, generator=g)
    sy = torch.arange(n).repeat_interleave(k).expand(tasks, -1).clone()
    qy = torch.arange(n).repeat_interleave(q).expand(tasks, -1).clone()
    return Episodes(sx, sy, qx, qy).to(device)


def flops_per_task(recipe: Recipe) -> float:
    """FLOPs of one task's meta-gradient, counted on the per-task path in float32."""
    from torch.utils.flop_counter import FlopCounterMode

    plain = recipe.model_copy(update={"batching": "loop", "task_workers": 1,
                                      "cuda_graphs": False, "precision": "float32"})
    algo = build_algorithm(plain).to(recipe.device)
    with FlopCounterMode(display=False) as counter:
        algo.meta_gradients(random_tasks(plain, recipe.device))
    return float(counter.get_total_flops())


def run_row(row: Row, args: argparse.Namespace, budget: float) -> Result:
    """Train, time and evaluate one row (a failure is recorded, not raised)."""
    iterations = 2 if args.tiny else max(1, round(row.iterations * args.scale))
    log_every = 1 if args.tiny else max(1, iterations // 20)
    overrides = [f"data_root={args.data_root}", f"device={args.device}",
                 f"iterations={iterations}", f"val_every={iterations}",
                 f"log_every={log_every}", f"checkpoint_every={iterations}",
                 "checkpoint_minutes=null", "val_episodes=50", f"time_budget={budget:.0f}",
                 *row.overrides]
    if row.graphs and args.device.startswith("cuda"):
        overrides.append("cuda_graphs=true")
    if args.tiny:
        overrides += [*TINY, *TINY_ROW.get(row.label, ())]
    recipe = load_recipe(row.recipe, overrides)
    result = Result(row.label, row.recipe, recipe.precision, iterations,
                    row.paper_iterations, row.paper)
    out = Path(args.work) / row.label.replace(" ", "_")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run: resuming would skew tasks/s
    try:
        result.flops_per_task = flops_per_task(recipe)
        train(recipe, out, progress=False)
        status = RunDir(out).status()
        result.iterations, result.stop = int(status["iteration"]), status.get("reason")
        result.train_seconds = float(status["train_seconds"])
        result.tasks_per_s, _ = tasks_per_second(out)
        result.tflops_per_s = result.tasks_per_s * result.flops_per_task / 1e12
        result.peak_fraction = {k: result.tasks_per_s * result.flops_per_task / v
                                for k, v in PEAKS.items()}
        t0 = time.perf_counter()
        scores = evaluate_run(out, episodes=args.episodes, which="last", curve="ends",
                              batch_norm="support")
        result.eval_seconds = time.perf_counter() - t0
        result.accuracy, result.ci95 = scores.mean, scores.ci95
        result.episodes, result.batch_norm = scores.episodes, scores.batch_norm
        result.status = "ok"
    except Exception as e:  # noqa: BLE001 - recorded in the table; the exit code says it
        result.status, result.error = "failed", f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        keep = Path(args.out) / "runs" / out.name  # the learning curve comes back too
        if out.is_dir() and keep.resolve() != out.resolve():
            keep.mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "status.json", "config.yaml"):
                if (out / name).is_file():
                    shutil.copy(out / name, keep / name)
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.3g}%"


def markdown(results: list[Result], header: dict[str, Any]) -> str:
    """The results table (and the settings it ran with) as Markdown."""
    lines = [
        f"Machine: {header['machine']}. Command: `{header['command']}`. Data: the two small "
        "Omniglot background sets, held-out alphabets (test: Early_Aramaic, Korean). "
        f"Accuracy: {header['episodes']} test episodes, 5-way 1-shot, deployed BatchNorm "
        "(support statistics), mean +- 95% CI. Peaks (dense): float32 67, TF32 494.7, "
        "bf16 989.4 TFLOP/s. FLOPs per task: torch.utils.flop_counter on one task's "
        "meta-gradient.",
        "",
        "| method | precision | iterations (run / cut / paper) | stop | tasks/s | GFLOP per "
        "task | TFLOP/s | of float32 | of TF32 | of bf16 | test accuracy | train s | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        acc = "-" if r.accuracy is None else \
            f"{100 * r.accuracy:.2f} +- {100 * (r.ci95 or 0):.2f}"
        lines.append(
            f"| {r.label} | {r.precision} | {r.iterations:,} / {r.iterations_planned:,} / "
            f"{r.paper_iterations:,} ({r.paper}) | {r.stop or '-'} | "
            f"{'-' if r.tasks_per_s is None else f'{r.tasks_per_s:,.1f}'} | "
            f"{'-' if r.flops_per_task is None else f'{r.flops_per_task / 1e9:.3f}'} | "
            f"{'-' if r.tflops_per_s is None else f'{r.tflops_per_s:.3g}'} | "
            f"{_pct(r.peak_fraction.get('float32'))} | {_pct(r.peak_fraction.get('tf32'))} | "
            f"{_pct(r.peak_fraction.get('bf16'))} | {acc} | "
            f"{'-' if r.train_seconds is None else f'{r.train_seconds:.1f}'} | "
            f"{r.status}{': ' + r.error if r.error else ''} |")
    return "\n".join(lines) + "\n"


def write(out: Path, results: list[Result], header: dict[str, Any]) -> None:
    (out / "convergence.json").write_text(json.dumps(
        {**header, "peaks": PEAKS, "rows": [asdict(r) for r in results]}, indent=1))
    (out / "convergence.md").write_text(markdown(results, header))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True, help="the folder of the Omniglot zips")
    p.add_argument("--out", required=True, help="where convergence.json / .md go")
    p.add_argument("--work", default=None, help="run directories (default: OUT/runs)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--episodes", type=int, default=600, help="test episodes per row")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every row's cut")
    p.add_argument("--deadline", type=float, default=None,
                   help="seconds from the start after which no row starts or trains")
    p.add_argument("--rows", nargs="+", default=[r.label for r in ROWS],
                   choices=[r.label for r in ROWS])
    p.add_argument("--tiny", action="store_true",
                   help="the whole pipeline on the CPU in seconds: 2 iterations per row, "
                        "a smaller model, 4 test episodes")
    args = p.parse_args(argv)
    if args.tiny:
        args.device, args.episodes = "cpu", min(args.episodes, 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.work = args.work or str(out / "runs")
    start = time.perf_counter()
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else platform.processor() or "CPU")
    header = {"machine": f"{device_name}, torch {torch.__version__}, Python "
                         f"{platform.python_version()}",
              "command": "python benchmarks/gpu/convergence.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "episodes": args.episodes, "tiny": args.tiny, "scale": args.scale}
    results: list[Result] = []
    for row in (r for r in ROWS if r.label in args.rows):
        iterations = row.iterations * args.scale
        expected = iterations * _meta_batch(row) / row.expected_tasks_per_s
        budget = 1.5 * expected + 30
        if args.deadline is not None:
            left = args.deadline - (time.perf_counter() - start)
            budget = min(budget, left - 60)  # 60 s: capture, validation, evaluation
            if budget < 10:
                results.append(Result(row.label, row.recipe, "-", round(iterations),
                                      row.paper_iterations, row.paper,
                                      error=f"deadline: {left:.0f} s left"))
                write(out, results, header)
                continue
        if args.tiny:
            budget = 600
        print(f"[{time.perf_counter() - start:6.1f} s] {row.label}: training "
              f"(time budget {budget:.0f} s)", flush=True)
        result = run_row(row, args, budget)
        results.append(result)
        write(out, results, header)
        print(f"[{time.perf_counter() - start:6.1f} s] {row.label}: {result.status}, "
              f"{result.tasks_per_s or 0:,.1f} tasks/s, accuracy "
              f"{100 * (result.accuracy or math.nan):.2f}%", flush=True)
    print(markdown(results, header), flush=True)
    return 0 if results and all(r.status == "ok" for r in results) else 1


def _meta_batch(row: Row) -> int:
    """The recipe's meta-batch (for the expected time of a row)."""
    return load_recipe(row.recipe, ["data_root=."]).meta_batch


if __name__ == "__main__":
    sys.exit(main())
