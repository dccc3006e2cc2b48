"""Omniglot accuracy table: every algorithm at 5w1s, 5w5s, 20w1s, 20w5s under one budget.

    python benchmarks/omniglot.py --data-root ../shared/data/omniglot --budget 150 --jobs 2

For each setting and algorithm, the shipped recipe ``omniglot_{setting}_{algorithm}`` is
meta-trained for ``--budget`` seconds of meta-training steps (validation excluded; one
torch thread per run, ``--jobs`` runs side by side), the checkpoint with the best
validation accuracy is kept, and it is evaluated on ``--test-episodes`` fixed episodes of
the held-out test classes (mean, 95% CI). Before training, a few meta-steps are timed to
size the run: ``iterations`` is set to what fits in the budget (so decaying schedules
finish) and validation happens about ``--validations`` times.

Data: with only the small sets (``images_background_small1/2.zip``: 8 alphabets, 242
characters, x4 rotations), the split is by alphabet (``split_scheme=alphabet``, seed 0:
test = Early_Aramaic + Korean, val = Latin, train = the 5 others). With the full official
zips (``images_background.zip`` + ``images_evaluation.zip``) the papers' protocol is used
(``split_scheme=vinyals``: 1200 training characters, 423 test, rotations as classes), so
the published tables can be reproduced on a bigger machine (give a larger ``--budget``).

Every run is a directory under ``--out``; a finished run (its test result exists) is not
redone, so an interrupted benchmark resumes. The table goes to ``--results`` between
``<!-- omniglot:start -->`` and ``<!-- omniglot:end -->``, and the validation accuracy
against training time of MAML and ProtoNet to ``omniglot_time.png`` and the rows to
``omniglot.json`` in ``--results-dir`` (default ``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common import (
    add_output_options,
    cpu_only,
    relative,
    results_dir,
    write_block,
    write_rows,
)

SETTINGS = ("5w1s", "5w5s", "20w1s", "20w5s")
ALGORITHMS = ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "finetune")
# Published full-data figures (Omniglot, Vinyals split): MAML (Finn et al. 2017, Table 1),
# ProtoNet (Snell et al. 2017, Table 1), Meta-SGD (Li et al. 2017), Reptile (Nichol et al.
# 2018, transductive), FOMAML (Finn et al. 2017).
PAPERS = {
    "maml": (98.7, 99.9, 95.8, 98.9),
    "fomaml": (98.3, 99.2, 89.4, 97.9),
    "metasgd": (99.53, 99.93, 95.93, 98.97),
    "reptile": (97.68, 99.48, 89.43, 97.12),
    "protonet": (98.8, 99.7, 96.0, 98.9),
}
TARGETS = {"5w1s": 97.0, "5w5s": 99.0, "20w1s": 92.0}


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    root = Path(args.data_root)
    full = (root / "images_background.zip").is_file() and (
        root / "images_evaluation.zip").is_file()
    return {"data_root": str(root), "split_scheme": "vinyals" if full else "alphabet",
            "threads": 1, "val_episodes": args.val_episodes, "seed": args.seed}


def _probe(recipe: Any, steps: int = 3) -> float:
    """Median seconds of one meta-gradient + optimizer-free step on training episodes."""
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.data.sampler import EpisodeSampler
    from metafit.data.splits import load_split

    train = load_split(recipe, "train")
    sampler = EpisodeSampler(train, recipe.ways, recipe.shots, recipe.queries, seed=12345)
    algo = build_algorithm(recipe, len(train.classes))
    times = []
    for _ in range(steps + 1):
        episodes = sampler.sample(recipe.meta_batch)
        t = time.perf_counter()
        algo.meta_gradients(episodes)
        times.append(time.perf_counter() - t)
    return sorted(times[1:])[len(times[1:]) // 2]


def run_one(setting: str, algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train and test one recipe (in this process); returns and saves the result."""
    import torch

    from metafit.config.recipe import load_recipe
    from metafit.runs.directory import RunDir
    from metafit.runs.trained import evaluate_run
    from metafit.training.trainer import Trainer

    torch.set_num_threads(1)
    name = f"omniglot_{setting}_{algorithm}"
    run = Path(args.out) / name
    result_file = run / "report" / "benchmark.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())  # type: ignore[no-any-return]
    overrides = _overrides(args)
    if algorithm == "reptile":  # 50 test-time steps make each validation episode costly
        overrides["val_episodes"] = min(args.val_episodes, args.reptile_val_episodes)
    recipe = load_recipe(name, [f"{k}={v}" for k, v in overrides.items()])
    if RunDir(run).exists():  # resume with the sizing chosen the first time
        saved = RunDir(run).read_recipe()
        recipe, seconds_per_step = saved, float("nan")
    else:
        seconds_per_step = _probe(recipe)
        iterations = max(2, int(args.budget / seconds_per_step))
        recipe = recipe.model_copy(update={
            "iterations": iterations, "time_budget": float(args.budget),
            "val_every": max(1, iterations // args.validations),
            "checkpoint_every": max(1, iterations // args.validations), "log_every": 10,
            "patience": None,
        })
    t0 = time.perf_counter()
    state = Trainer(recipe, run, progress=False).fit()
    train_wall = time.perf_counter() - t0
    episodes = args.test_episodes
    if algorithm == "reptile" and recipe.ways >= 20:
        episodes = min(episodes, args.reptile20_episodes)
    t1 = time.perf_counter()
    # transductive BatchNorm, as the published tables it is compared with (the MAML
    # paper's protocol); the deployed setting's cost: RESULTS.md, "BatchNorm at deployment"
    result = evaluate_run(run, "test", episodes=episodes, batch_norm="batch")
    out = {
        "setting": setting, "algorithm": algorithm, "recipe": name,
        "accuracy": 100 * result.mean, "ci95": 100 * result.ci95,
        "episodes": result.episodes, "eval_steps": result.steps,
        "iterations": state.iteration, "best_iteration": state.best_iteration,
        "best_val": None if state.best_score is None else 100 * state.best_score,
        "train_seconds": round(state.train_seconds, 1),
        "train_wall_seconds": round(train_wall, 1),
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "probe_seconds_per_step": seconds_per_step, "meta_batch": recipe.meta_batch,
        "split_scheme": recipe.split_scheme, "budget": recipe.time_budget,
    }
    from metafit.io import atomic_write_text

    atomic_write_text(result_file, json.dumps(out, indent=1))
    return out


def _launch(setting: str, algorithm: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", setting, algorithm, "--data-root",
           args.data_root, "--budget", str(args.budget), "--out", args.out,
           "--test-episodes", str(args.test_episodes), "--val-episodes",
           str(args.val_episodes), "--validations", str(args.validations),
           "--reptile20-episodes", str(args.reptile20_episodes), "--reptile-val-episodes",
           str(args.reptile_val_episodes), "--seed", str(args.seed)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        print(f"FAILED {setting} {algorithm}:\n{tail}", flush=True)
        return {"setting": setting, "algorithm": algorithm, "error": tail}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{setting:6s} {algorithm:9s} {result['accuracy']:6.2f} +- {result['ci95']:.2f} "
          f"({result['iterations']} it, {time.perf_counter() - t:.0f} s)", flush=True)
    return result


def _cell(r: dict[str, Any] | None) -> str:
    if r is None or "error" in r:
        return "failed" if r else "-"
    star = "" if r["episodes"] >= 600 else f" ({r['episodes']} eps)"
    return f"{r['accuracy']:.1f} +- {r['ci95']:.1f}{star}"


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The Markdown section for RESULTS.md."""
    by = {(r["setting"], r["algorithm"]): r for r in results}
    scheme = next((r["split_scheme"] for r in results if "split_scheme" in r), "?")
    lines = [
        f"Machine: {cpu_only()}; each run one torch thread, {args.jobs} runs "
        f"side by side. Split scheme: `{scheme}`.",
        f"Budget: {args.budget:g} s of meta-training steps per run (validation excluded: "
        f"{args.validations} validations on {args.val_episodes} episodes, Reptile on "
        f"{args.reptile_val_episodes}); test: {args.test_episodes} fixed episodes of "
        f"held-out classes (Reptile at 20 ways: {args.reptile20_episodes}), 95% CI, "
        "best-validation checkpoint.",
        f"Command: `python benchmarks/omniglot.py --data-root {args.data_root} --budget "
        f"{args.budget:g} --jobs {args.jobs}`",
        "",
        "Test accuracy (%):",
        "",
        "| algorithm | " + " | ".join(SETTINGS) + " | papers, full data: "
        + " / ".join(SETTINGS) + " |",
        "|---|" + "---|" * (len(SETTINGS) + 1),
    ]
    for a in ALGORITHMS:
        paper = " / ".join(f"{v:g}" for v in PAPERS[a]) if a in PAPERS else "-"
        lines.append(f"| {a} | " + " | ".join(_cell(by.get((s, a))) for s in SETTINGS)
                     + f" | {paper} |")
    lines += ["", "Iterations reached in the budget (meta-batch) and best validation "
              "iteration:", "", "| algorithm | " + " | ".join(SETTINGS) + " |",
              "|---|" + "---|" * len(SETTINGS)]
    for a in ALGORITHMS:
        cells = []
        for s in SETTINGS:
            r = by.get((s, a))
            cells.append("-" if r is None or "error" in r else
                         f"{r['iterations']} x {r['meta_batch']} (best {r['best_iteration']})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    lines += ["", "Targets on the small sets (MAML and ProtoNet): "
              + ", ".join(f"{s} >= {v:g}%" for s, v in TARGETS.items()) + "."]
    for a in ("maml", "protonet"):
        for s, target in TARGETS.items():
            r = by.get((s, a))
            if r and "error" not in r:
                gap = r["accuracy"] - target
                verdict = "reached" if gap >= 0 else f"missed by {-gap:.1f} points"
                lines.append(f"- {a} {s}: {r['accuracy']:.1f}% ({verdict})")
    return "\n".join(lines)


def time_curves(args: argparse.Namespace, png: Path) -> str:
    """Validation accuracy against training seconds for MAML and ProtoNet at 5w1s; the PNG
    and a line per method saying when 90% and 95% were first reached."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from metafit.runs.directory import RunDir

    fig, ax = plt.subplots(figsize=(6, 4))
    lines = []
    for algorithm in ("maml", "protonet", "fomaml", "anil"):
        records = [r for r in RunDir(Path(args.out) / f"omniglot_5w1s_{algorithm}")
                   .read_metrics() if r.get("split") == "val" and "seconds" in r]
        if not records:
            continue
        xs = [r["seconds"] for r in records]
        ys = [100 * r["accuracy"] for r in records]
        ax.plot(xs, ys, marker="o", label=algorithm)
        firsts = []
        for level in (90, 95):
            hit = next((x for x, y in zip(xs, ys, strict=True) if y >= level), None)
            firsts.append(f"{level}%: " + (f"{hit:.0f} s" if hit is not None else
                                           f"not reached (best {max(ys):.1f}%)"))
        lines.append(f"- {algorithm} 5w1s validation accuracy: " + "; ".join(firsts))
    ax.set_xlabel("meta-training seconds (1 CPU thread)")
    ax.set_ylabel("validation accuracy, 5-way 1-shot (%)")
    ax.set_title("Omniglot: accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/data/omniglot")
    p.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (1 thread each)")
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--algorithms", default=",".join(ALGORITHMS))
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--val-episodes", type=int, default=100)
    p.add_argument("--validations", type=int, default=4, help="validations per run")
    p.add_argument("--reptile20-episodes", type=int, default=200,
                   help="test episodes for Reptile at 20 ways (50 steps each)")
    p.add_argument("--reptile-val-episodes", type=int, default=30,
                   help="validation episodes for Reptile (50 steps each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench_omniglot")
    add_output_options(p)
    p.add_argument("--one", nargs=2, metavar=("SETTING", "ALGORITHM"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one, args)))
        return
    jobs = [(s, a) for s in args.settings.split(",") for a in args.algorithms.split(",")]
    # Longest first, so the two workers finish together.
    cost = {"20w5s": 4, "20w1s": 3, "5w5s": 2, "5w1s": 1}
    jobs.sort(key=lambda j: -cost.get(j[0], 0) - (2 if j[1] == "reptile" else 0))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: _launch(*j, args), jobs))
    folder = results_dir(args.results_dir)
    write_rows(folder, "omniglot.json", results)
    png = folder / "omniglot_time.png"
    section = table(results, args) + "\n\n" + time_curves(args, png) + \
        f"\n\n![accuracy against time]({relative(png)})\n\nWall-clock of the whole " \
        f"benchmark: {(time.perf_counter() - t0) / 60:.0f} min."
    write_block(Path(args.results), "omniglot", "Omniglot accuracy (`benchmarks/omniglot.py`)",
                section)
    print(section)


if __name__ == "__main__":
    main()
