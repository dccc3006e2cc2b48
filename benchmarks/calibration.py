"""Expected calibration error before and after ``metafit adapt --calibrate``.

    python benchmarks/calibration.py --episodes 100 \\
        --row omniglot/protonet=runs/omni_protonet --row banking77/probe=runs/text_probe \\
        --row banking77/protonet+logistic=runs/text_protonet:logistic

Each ``--row NAME=RUN[:CLASSIFIER]`` takes the run's first ``--episodes`` fixed test
episodes (``split_sampler(recipe, "test", shots=--shots)``, the episodes ``metafit
evaluate`` scores, here at 5 shots: with one example per class there is nothing to hold
out and ``--calibrate`` keeps ``T = 1``). Each episode's support set is adapted exactly as
``metafit adapt`` does (:meth:`Adapter.adapt_tensors`, BatchNorm frozen on the support
set), the query set is scored, then the model is calibrated with
:func:`metafit.deploy.calibrate.calibrate` (temperature fitted on cross-validated folds of
the support set alone; the queries are never seen) and the same query logits are scored
with ``softmax(logits / T)``.

Reported per row, before and after: ECE (15 equal-width bins,
:func:`metafit.evaluation.classification.score_probabilities`) pooled over the queries of
all episodes, and its per-episode mean with a 95% CI; the paired per-episode change of ECE;
the query NLL; the accuracy (it must not change: ``T > 0`` keeps the argmax); the
median (quartiles) of the fitted temperatures and how often they hit the search's bounds;
and, as a bound on what any single temperature could do, the ECE and NLL with the one
temperature fitted on the pooled queries themselves (``query-fitted T``). One JSON line per
row is appended to ``calibration.jsonl`` in ``--results-dir`` (default
``benchmarks/results/<today>/``), and the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from common import add_output_options, append_row, cpu_only, load_average, results_dir

from metafit.deploy.adapter import Adapter
from metafit.deploy.calibrate import calibrate
from metafit.evaluation.calibration import (
    MAX_TEMPERATURE,
    MIN_TEMPERATURE,
    fit_temperature,
    nll,
)
from metafit.evaluation.classification import score_probabilities
from metafit.evaluation.protocol import ci95
from metafit.runs.trained import split_sampler

BINS = 15


def _mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (:func:`metafit.evaluation.protocol.ci95`)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), (ci95(t) if len(values) > 1 else 0.0)


def _ece(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """ECE with :data:`BINS` bins of ``probs [M, N]`` against ``labels [M]``."""
    names = [str(i) for i in range(probs.shape[1])]
    return score_probabilities(probs, labels, names, bins=BINS).ece


def _at_min(t: float) -> bool:
    """Whether a fitted ``t`` is the search's lower bound: every held-out support example
    was classified right, so the held-out NLL falls as ``T -> 0`` and has no minimum."""
    return t < MIN_TEMPERATURE * 1.01


#: The temperatures scored, from the fitted one: none (before), the fitted one (after),
#: and a diagnostic, not what ``--calibrate`` does: the fit reset to 1 where it hit the
#: lower bound.
SETTINGS: dict[str, Callable[[float], float]] = {
    "before": lambda t: 1.0, "after": lambda t: t,
    "after_bound_reset": lambda t: 1.0 if _at_min(t) else t}


def measure(run: str, classifier: str | None, episodes: int, shots: int,
            folds: int) -> dict[str, Any]:
    """The before/after scores of one run (see the module docstring)."""
    adapter = Adapter.from_run(run, classifier=classifier)
    recipe = adapter.recipe
    tasks = split_sampler(recipe, "test", shots=shots).sample(episodes)
    logits_all, labels_all, temps = [], [], []
    scores: dict[str, dict[str, list[float]]] = {
        name: {"ece": [], "accuracy": []} for name in SETTINGS}
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        if i % 10 == 0:
            print(f"{run}: episode {i}/{len(tasks)}, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        names = [str(i) for i in range(int(task.support_y.max()) + 1)]
        model = adapter.adapt_tensors(task.support_x, task.support_y, names)
        logits = model.logits(task.query_x).double()  # [M, N]
        y = task.query_y
        t = calibrate(model, adapter.adapt_tensors, folds).temperature
        temps.append(t)
        for name, temperature in SETTINGS.items():
            probs = torch.softmax(logits / temperature(t), dim=-1)
            scores[name]["ece"].append(_ece(probs, y))
            scores[name]["accuracy"].append(float((probs.argmax(-1) == y).double().mean()))
        logits_all.append(logits)
        labels_all.append(y)
    seconds = time.perf_counter() - start
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    row: dict[str, Any] = {
        "run": run, "classifier": classifier or recipe.classifier,
        "recipe": recipe.name, "algorithm": recipe.algorithm,
        "ways": recipe.eval_ways, "shots": shots, "queries_per_class": recipe.eval_queries,
        "episodes": len(tasks), "queries": len(labels), "bins": BINS, "folds": folds,
        "seconds": round(seconds, 1), "temperatures": temps,
        "temperature_median": statistics.median(temps),
        "temperature_quartiles": [float(q) for q in torch.tensor(temps).quantile(
            torch.tensor([0.25, 0.75], dtype=torch.float32)).tolist()],
        "temperature_above_1": sum(t > 1 for t in temps) / len(temps),
        # the search's bounds: every held-out example right (T -> 0) or wrong (T -> inf)
        "temperature_at_min": sum(map(_at_min, temps)) / len(temps),
        "temperature_at_max": sum(t > MAX_TEMPERATURE / 1.01 for t in temps) / len(temps),
    }
    # the one temperature best for these queries (fitted on them: a bound, not a method)
    oracle = fit_temperature(logits, labels)
    row["oracle"] = {"temperature": oracle,
                     "ece_pooled": _ece(torch.softmax(logits / oracle, dim=-1), labels),
                     "nll": nll(logits, labels, oracle)}
    for name, temperature in SETTINGS.items():
        scale = torch.cat([torch.full((len(y), 1), temperature(t), dtype=torch.float64)
                           for y, t in zip(labels_all, temps, strict=True)])  # [M, 1]
        ece_mean, ece_ci = _mean_ci(scores[name]["ece"])
        acc_mean, acc_ci = _mean_ci(scores[name]["accuracy"])
        diffs = [a - b for a, b in zip(scores[name]["ece"], scores["before"]["ece"],
                                       strict=True)]
        change, change_ci = _mean_ci(diffs)
        row[name] = {"ece_pooled": _ece(torch.softmax(logits / scale, dim=-1), labels),
                     "ece_episode_mean": ece_mean, "ece_episode_ci95": ece_ci,
                     "ece_change_mean": change, "ece_change_ci95": change_ci,
                     "ece_worse_episodes": sum(d > 0 for d in diffs),
                     "nll": float(torch.nn.functional.cross_entropy(logits / scale, labels)),
                     "accuracy": acc_mean, "accuracy_ci95": acc_ci,
                     "accuracy_changed_episodes": sum(
                         a != b for a, b in zip(scores[name]["accuracy"],
                                                scores["before"]["accuracy"], strict=True))}
    return row


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables of ``rows``: before and after ``--calibrate``, then the
    diagnostics (the fits at the lower bound reset to 1; one temperature fitted on the
    queries)."""
    out = ["| row | episodes | accuracy (%) | ECE pooled (%) before -> after | ECE per "
           "episode (%) before -> after | paired change | NLL before -> after | median T "
           "(IQR) | fits at T = 0.01 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        q1, q3 = r["temperature_quartiles"]
        out.append(
            f"| {r['name']} | {r['episodes']} | {_pct(b['accuracy'])} ± "
            f"{_pct(b['accuracy_ci95'])} | {_pct(b['ece_pooled'])} -> {_pct(a['ece_pooled'])}"
            f" | {_pct(b['ece_episode_mean'])} ± {_pct(b['ece_episode_ci95'])} -> "
            f"{_pct(a['ece_episode_mean'])} ± {_pct(a['ece_episode_ci95'])} | "
            f"{100 * a['ece_change_mean']:+.1f} ± {_pct(a['ece_change_ci95'])} | "
            f"{b['nll']:.3f} -> {a['nll']:.3f} | {r['temperature_median']:.2f} "
            f"({q1:.2f}-{q3:.2f}) | {r['temperature_at_min']:.0%} |")
    out += ["", "| row | bound fits reset to T = 1: ECE pooled, per episode (paired change), "
            "NLL | one T fitted on the queries: T, ECE pooled, NLL |", "|---|---|---|"]
    for r in rows:
        g, o = r["after_bound_reset"], r["oracle"]
        out.append(
            f"| {r['name']} | {_pct(g['ece_pooled'])}, {_pct(g['ece_episode_mean'])} "
            f"({100 * g['ece_change_mean']:+.1f} ± {_pct(g['ece_change_ci95'])}), "
            f"{g['nll']:.3f} | {o['temperature']:.2f}, {_pct(o['ece_pooled'])}, "
            f"{o['nll']:.3f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--row", action="append", required=True, metavar="NAME=RUN[:CLASSIFIER]",
                   help="a row: its name, the run directory, optionally a test-time "
                   "classifier (logistic)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.shots < 2:
        p.error("--shots must be >= 2: with one example per class --calibrate has nothing "
                "to hold out and keeps T = 1")
    rows = []
    out = results_dir(args.results_dir) / "calibration.jsonl"
    for spec in args.row:
        name, _, target = spec.partition("=")
        run, _, classifier = target.partition(":")
        if not name or not run:
            p.error(f"--row {spec!r}: expected NAME=RUN[:CLASSIFIER]")
        row = {"name": name, **measure(run, classifier or None, args.episodes, args.shots,
                                       args.folds)}
        row["command"] = "python benchmarks/calibration.py " + " ".join(sys.argv[1:])
        row["machine"] = f"{cpu_only()}, {args.threads} torch thread(s)"
        row["load_average_after"] = load_average()
        append_row(out, row)
        rows.append(row)
        print(table([row]), flush=True)
    print(table(rows))
    print(f"rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
