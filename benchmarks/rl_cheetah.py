"""MAML-TRPO on half-cheetah direction or velocity (Finn et al. 2017, sec. 5.3, Figure 5)
through the library's trainer, against a policy pretrained on all tasks and a random
initialisation, each fine-tuned with the same inner steps on fixed held-out tasks.

    python benchmarks/rl_cheetah.py --out /tmp/cheetah                  # dir, 250 steps
    python benchmarks/rl_cheetah.py --out /tmp/cheetah --skip-train     # evaluate only
    python benchmarks/rl_cheetah.py --out /tmp/c --iterations 2 --eval-tasks 2 \
        --set meta_batch=2 trajectories=2 val_episodes=2 horizon=10      # a smoke run

Training is two ``metafit train`` runs of the shipped recipe ``rl_cheetah_{family}_maml``
(``threads=1``, ``iterations=--iterations``, no time budget), started side by side, one
core each: ``maml`` as shipped and ``pretrained`` with ``inner_steps=0`` (the same TRPO on
the same kind of batches, the policy best on average over tasks; it samples half as much
per outer step). The ``random`` row is the recipe's seeded initial policy, untrained. Each
row's checkpoint (``--checkpoint``, best by the validation return after one step by
default) is then adapted on the ``--eval-tasks`` fixed test tasks of the MAML run
(``metafit.runs.rl.rl_sampler(recipe, "test")``, the tasks ``metafit evaluate`` uses) with
``--eval-steps`` policy-gradient steps at the inner rate, each sampling
``--eval-trajectories`` trajectories; every row meets the same tasks and the same noise.
The table gives the mean undiscounted return after 0..k steps, +- the 95% CI over tasks
(1.96 s / sqrt(n)), the paired difference with MAML after one step, and the training's
wall and CPU time per run. A run of 100 iterations or more writes block ``rl_cheetah_{family}``
of RESULTS.md and rows ``rl_cheetah_{family}.json``; a shorter one is a smoke run.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import add_output_options, load_average, machine, publish

from metafit.evaluation.protocol import ci95
from metafit.evaluation.rl import adaptation_curves
from metafit.rl.from_recipe import build_rl_algorithm
from metafit.runs.directory import RunDir
from metafit.runs.rl import load_rl_trained, rl_sampler

log = logging.getLogger("rl_cheetah")

#: Finn et al. (2017), Figure 5: the mean return over the 40 test tasks after 0 / 1 / 2 / 3
#: steps, from the result files the figure was drawn from (github.com/cbfinn/maml_rl,
#: ``icml/icml_cheetah{,direc}_results_{maml,pretrain,random}.pkl``, commit 4d41869).
#: rllab's half-cheetah with the rewards of our families (``dir * v_x - 0.05 |a|^2``;
#: ``-|v_x - goal| - 0.05 |a|^2``, goals uniform in [0, 2]); the authors adapted with one
#: plain gradient step at 0.1 on 4,000 samples (``maml_examples/test_maml_cheetah.py``).
PAPER = {"dir": {"maml": "-50.7 / 293.2 / 313.5 / 315.7",
                 "pretrained": "-43.0 / -24.7 / -12.8 / 19.6",
                 "random": "-35.7 / 21.8 / 62.3 / 86.2"},
         "vel": {"maml": "-129.5 / -78.6 / -66.6 / -60.8",
                 "pretrained": "-158.0 / -135.4 / -128.5 / -133.6",
                 "random": "-254.8 / -254.3 / -246.8 / -230.8"}}


def train(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Start the MAML and pretrained runs side by side; their wall and CPU seconds."""
    recipe = f"rl_cheetah_{args.family}_maml"
    common = ["threads=1", f"iterations={args.iterations}", "time_budget=null", *args.set]
    extra = {"maml": [], "pretrained": ["inner_steps=0", f"name=rl_cheetah_{args.family}"
                                                         "_pretrained"]}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs, started = {}, time.perf_counter()
    for row, more in extra.items():
        cmd = [sys.executable, "-m", "metafit", "train", recipe, *common, *more,
               "--out", str(args.out / row), "--no-progress"]
        log.info("%s: %s", row, " ".join(cmd))
        with open(args.out / f"{row}.log", "ab") as sink:
            procs[row] = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env)
    times: dict[str, dict[str, float]] = {}
    pending = dict(procs)
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        row = next((r for r, p in pending.items() if p.pid == pid), None)
        if row is None:
            continue
        del pending[row]
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the {row} run failed: see {args.out / f'{row}.log'}")
        times[row] = {"wall_seconds": time.perf_counter() - started,
                      "cpu_seconds": usage.ru_utime + usage.ru_stime}
    return times


def evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row's per-task curve on the MAML run's test tasks."""
    maml_recipe, _ = load_rl_trained(args.out / "maml", args.checkpoint)
    sampler = rl_sampler(maml_recipe, "test")
    rows = []
    for row in ("maml", "pretrained", "random"):
        if row == "random":
            algo = build_rl_algorithm(maml_recipe)
        else:
            _, algo = load_rl_trained(args.out / row, args.checkpoint)
        started = time.perf_counter()
        curve = adaptation_curves(algo, sampler, args.eval_tasks, args.eval_steps,
                                  args.eval_trajectories, batch=args.eval_batch)  # [n, k+1]
        rows.append({"row": row, "mean": curve.mean(0).tolist(),
                     "ci95": [ci95(c) for c in curve.T], "per_task": curve.tolist()})
        log.info("%s: %s (%.0f s)", row, " / ".join(f"{m:.1f}" for m in rows[-1]["mean"]),
                 time.perf_counter() - started)
    return rows


def training_summary(run: Path) -> dict[str, Any]:
    """Iterations, the last logged training returns and the best validation of a run."""
    records = RunDir(run).read_metrics()
    train = [r for r in records if "return_after" in r]
    val = [r for r in records if r.get("split") == "val" or ("return" in r and "ci95" in r)]
    best = max(val, key=lambda r: r["return"]) if val else {}
    return {"iterations": train[-1].get("iteration") if train else 0,
            "return_before": train[-1]["return_before"] if train else None,
            "return_after": train[-1]["return_after"] if train else None,
            "best_val": best.get("return"), "best_iteration": best.get("iteration")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the two runs")
    parser.add_argument("--family", choices=("dir", "vel"), default="dir")
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more recipe overrides for both runs (smoke runs)")
    parser.add_argument("--skip-train", action="store_true",
                        help="evaluate the runs already in --out")
    parser.add_argument("--checkpoint", default="best", choices=("best", "last"))
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--eval-trajectories", type=int, default=20)
    parser.add_argument("--eval-steps", type=int, default=3)
    parser.add_argument("--eval-batch", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    add_output_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    times = {} if args.skip_train else train(args)
    rows = evaluate(args)
    maml_1 = torch.tensor(rows[0]["per_task"], dtype=torch.float64)[:, 1]
    summaries = {r: training_summary(args.out / r) for r in ("maml", "pretrained")}
    steps = range(args.eval_steps + 1)
    lines = [f"Machine: {machine()}; load average {load_average()} at the end (shared "
             "machine).",
             f"Training: `metafit train rl_cheetah_{args.family}_maml threads=1 iterations="
             f"{args.iterations} time_budget=null{''.join(' ' + o for o in args.set)}` (and "
             "`inner_steps=0` for pretrained), "
             "the two runs side by side; evaluation: "
             f"{args.eval_tasks} fixed test tasks x {args.eval_trajectories} trajectories per "
             f"step, the `{args.checkpoint}` checkpoint, return +- 95% CI over tasks.", "",
             "| row | " + " | ".join(f"after {k} step(s)" for k in steps)
             + " | after 1 step - MAML (paired) | outer steps | training wall / CPU min "
             "| paper, Fig. 5 (0 / 1 / 2 / 3 steps) |",
             "|---|" + "---|" * (len(steps) + 4)]
    for r in rows:
        cells = [f"{m:.1f} +- {c:.1f}" for m, c in zip(r["mean"], r["ci95"], strict=True)]
        diff = torch.tensor(r["per_task"], dtype=torch.float64)[:, 1] - maml_1
        paired = "-" if r["row"] == "maml" else f"{float(diff.mean()):.1f} +- {ci95(diff):.1f}"
        t = times.get(r["row"])
        timing = f"{t['wall_seconds'] / 60:.0f} / {t['cpu_seconds'] / 60:.0f}" if t else "-"
        its = summaries.get(r["row"], {}).get("iterations", 0)
        r.update(training=summaries.get(r["row"]), times=t)
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {paired} | {its} | "
                     f"{timing} | {PAPER[args.family][r['row']]} |")
    block = "\n".join(lines)
    print(block)
    smoke = args.iterations < 100
    name = f"rl_cheetah_{args.family}" + ("_smoke" if smoke else "")
    kind = "direction" if args.family == "dir" else "velocity"
    heading = f"Half-cheetah {kind} (MAML-TRPO)" + (": smoke run" if smoke else "")
    publish(args, name, heading, block, rows)


if __name__ == "__main__":
    main()
