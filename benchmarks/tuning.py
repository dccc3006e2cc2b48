"""A tuning study of MAML on the sinusoid family, and its best recipe against the hand-set
one on the same 600 test tasks.

    python benchmarks/tuning.py --out runs/bench_tuning --trials 30 --jobs 2

Steps (each one skipped when its output exists, so an interrupted benchmark resumes):

1. ``metafit tune sinusoid_maml_tune --trials N --jobs J --report`` into ``OUT/study``:
   TPE over inner/outer rates, inner steps, width and depth, median pruning, each trial
   the recipe's full 10,000 iterations scored on 600 fixed validation tasks.
2. ``metafit train OUT/study/best.yaml`` into ``OUT/best``: the winner trained again from
   its recipe (it must reproduce the trial's validation score: runs are deterministic).
3. ``metafit train sinusoid_maml`` into ``OUT/hand``: the hand-set MAML recipe (70,000
   iterations, the RESULTS.md sinusoid table's protocol).
4. Both evaluated on the same 600 fixed 5-shot test tasks after 10 steps: mean MSE with
   95% CI, the paired difference with its 95% CI, medians and the share of tasks won.

The table goes to ``--results`` between ``<!-- tuning:start -->`` and
``<!-- tuning:end -->``; the study's plots are copied to ``tuning_*.png`` in ``--results-dir``
(default ``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import add_output_options, cpu_only, relative, results_dir, write_block

PLOTS = ("optimization_history", "param_importances", "intermediate_values", "slice")


def metafit(*args: str) -> str:
    """Run ``python -m metafit.cli.main ARGS`` and return its standard output."""
    out = subprocess.run([sys.executable, "-m", "metafit.cli", *args], check=True,
                         stdout=subprocess.PIPE, text=True)
    return out.stdout


def evaluation(run: Path, episodes: int) -> dict[str, Any]:
    saved = run / "eval_test.json"
    if not saved.is_file():
        saved.write_text(metafit("evaluate", str(run), "--episodes", str(episodes), "--json"))
    return dict(json.loads(saved.read_text().strip().splitlines()[-1]))


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of ``a - b`` and its 95% CI half-width."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    return statistics.mean(d), 1.96 * statistics.stdev(d) / math.sqrt(len(d))


def study_summary(study_dir: Path) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(study_dir / 'study.db').resolve()}"
    study = optuna.load_study(study_name="sinusoid_maml_tune", storage=storage)
    states = [t.state.name for t in study.trials]
    seconds = sum(t.duration.total_seconds() for t in study.trials if t.duration)
    best = study.best_trial
    return {"trials": len(states), "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"), "failed": states.count("FAIL"),
            "best_number": best.number, "best_value": best.value, "params": best.params,
            "trial_seconds": seconds}


def table(s: dict[str, Any], best: dict[str, Any], hand: dict[str, Any],
          best_status: dict[str, Any], hand_status: dict[str, Any],
          args: argparse.Namespace, plots: Path) -> str:
    diff, ci = paired(best["per_episode"], hand["per_episode"])
    wins = sum(x < y for x, y in zip(best["per_episode"], hand["per_episode"], strict=True))
    params = ", ".join(f"{k} = {v:.3g}" if isinstance(v, float) else f"{k} = {v}"
                       for k, v in s["params"].items())
    rows = [
        f"Machine: {cpu_only()}. Command: `python benchmarks/tuning.py "
        f"{' '.join(sys.argv[1:])}`.",
        "",
        f"Study: {s['trials']} trials ({s['complete']} complete, {s['pruned']} pruned, "
        f"{s['failed']} failed), {s['trial_seconds'] / 60:.0f} min of trial time on "
        f"{args.jobs} processes. Best: trial {s['best_number']}, validation MSE "
        f"{s['best_value']:.4f} with {params}.",
        f"Retrained from `best.yaml`: best validation MSE {best_status['best_score']:.4f} "
        f"(the trial's {s['best_value']:.4f}).",
        "",
        "| recipe | iterations | train time | test MSE, 10 steps (600 tasks, 95% CI) | "
        "median | MSE after 1 step |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, st in (("tuned (`best.yaml`)", best, best_status),
                        ("hand-set `sinusoid_maml`", hand, hand_status)):
        rows.append(f"| {name} | {st['iteration']:,} | {st['train_seconds'] / 60:.1f} min | "
                    f"{r['mean']:.3f} ± {r['ci95']:.3f} | "
                    f"{statistics.median(r['per_episode']):.3f} | {r['curve'][1]:.3f} |")
    rows += ["", f"Paired over the same 600 test tasks: tuned − hand-set = {diff:+.3f} ± "
             f"{ci:.3f} MSE (95% CI); the tuned recipe has the lower MSE on {wins} of 600 "
             "tasks.", "", "Plots: " + ", ".join(
                 f"[{p}]({relative(plots / f'tuning_{p}.png')})" for p in PLOTS)]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench_tuning")
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=600)
    add_output_options(parser)
    args = parser.parse_args()
    out = Path(args.out)
    study_dir, best_dir, hand_dir = out / "study", out / "best", out / "hand"
    metafit("tune", "sinusoid_maml_tune", "threads=1", "--trials", str(args.trials),
            "--jobs", str(args.jobs), "--out", str(study_dir), "--report")
    for recipe, run in ((str(study_dir / "best.yaml"), best_dir), ("sinusoid_maml", hand_dir)):
        status = run / "status.json"
        if not status.is_file() or json.loads(status.read_text())["status"] != "complete":
            metafit("train", recipe, "threads=1", "--out", str(run), "--no-progress")
    best, hand = evaluation(best_dir, args.episodes), evaluation(hand_dir, args.episodes)
    statuses = [json.loads((r / "status.json").read_text()) for r in (best_dir, hand_dir)]
    folder = results_dir(args.results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for plot in PLOTS:
        shutil.copyfile(study_dir / "report" / f"{plot}.png", folder / f"tuning_{plot}.png")
    block = table(study_summary(study_dir), best, hand, *statuses, args, folder)
    write_block(Path(args.results), "tuning", "Hyperparameter search (`metafit tune`)", block)
    print(block)


if __name__ == "__main__":
    main()
