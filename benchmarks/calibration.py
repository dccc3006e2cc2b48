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
from metafit.deploy.calibrate import calibrate, held_out
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


#: The temperature rules scored per episode, from the held-out support logits: none
#: (``before``), what ``--calibrate`` stores (``after``: the library's MAP fit), and for
#: comparison maximum likelihood (``ml``, the fit before the prior) and the MAP fit with
#: other prior scales.
RULES: dict[str, Callable[[torch.Tensor, torch.Tensor], float] | None] = {
    "before": lambda logits, labels: 1.0,
    "after": None,  # calibrate(...).temperature
    "ml": lambda logits, labels: fit_temperature(logits, labels, prior_scale=None),
    "map_0.25": lambda logits, labels: fit_temperature(logits, labels, prior_scale=0.25),
    "map_0.5": lambda logits, labels: fit_temperature(logits, labels, prior_scale=0.5),
    "map_1": lambda logits, labels: fit_temperature(logits, labels, prior_scale=1.0)}


def measure(run: str, classifier: str | None, episodes: int, shots: int,
            folds: int) -> dict[str, Any]:
    """The before/after scores of one run (see the module docstring)."""
    adapter = Adapter.from_run(run, classifier=classifier)
    recipe = adapter.recipe
    tasks = split_sampler(recipe, "test", shots=shots).sample(episodes)
    logits_all, labels_all = [], []
    temps: dict[str, list[float]] = {name: [] for name in RULES}
    scores: dict[str, dict[str, list[float]]] = {
        name: {"ece": [], "accuracy": []} for name in RULES}
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        if i % 10 == 0:
            print(f"{run}: episode {i}/{len(tasks)}, {time.perf_counter() - start:.0f} s",
                  file=sys.stderr, flush=True)
        names = [str(i) for i in range(int(task.support_y.max()) + 1)]
        model = adapter.adapt_tensors(task.support_x, task.support_y, names)
        logits = model.logits(task.query_x).double()  # [M, N]
        y = task.query_y
        held = held_out(model, adapter.adapt_tensors, folds)
        for name, rule in RULES.items():
            t = (calibrate(model, adapter.adapt_tensors, folds, held=held).temperature
                 if rule is None else rule(held.logits, held.labels))
            temps[name].append(t)
            probs = torch.softmax(logits / t, dim=-1)
            scores[name]["ece"].append(_ece(probs, y))
            scores[name]["accuracy"].append(float((probs.argmax(-1) == y).double().mean()))
        logits_all.append(logits)
        labels_all.append(y)
    seconds = time.perf_counter() - start
    episodes_run = len(tasks)
    logits, labels = torch.cat(logits_all), torch.cat(labels_all)
    row: dict[str, Any] = {
        "run": run, "classifier": classifier or recipe.classifier,
        "recipe": recipe.name, "algorithm": recipe.algorithm,
        "ways": recipe.eval_ways, "shots": shots, "queries_per_class": recipe.eval_queries,
        "episodes": len(tasks), "queries": len(labels), "bins": BINS, "folds": folds,
        "seconds": round(seconds, 1), "temperatures": temps["after"],
        "temperatures_by_rule": temps,
    }
    # the one temperature best for these queries (fitted on them: a bound, not a method)
    oracle = fit_temperature(logits, labels, prior_scale=None)
    row["oracle"] = {"temperature": oracle,
                     "ece_pooled": _ece(torch.softmax(logits / oracle, dim=-1), labels),
                     "nll": nll(logits, labels, oracle)}
    for name in RULES:
        scale = torch.cat([torch.full((len(y), 1), t, dtype=torch.float64)
                           for y, t in zip(labels_all, temps[name], strict=True)])  # [M, 1]
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
                                                scores["before"]["accuracy"], strict=True)),
                     "temperature_median": statistics.median(temps[name]),
                     "temperature_quartiles": [float(q) for q in torch.tensor(
                         temps[name]).quantile(torch.tensor([0.25, 0.75])).tolist()],
                     # the search's bounds: every held-out example right (T -> 0, without
                     # a prior) or wrong (T -> inf)
                     "temperature_at_min": sum(map(_at_min, temps[name])) / episodes_run,
                     "temperature_at_max": sum(
                         t > MAX_TEMPERATURE / 1.01 for t in temps[name]) / episodes_run}
    return row


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown tables of ``rows``: before and after ``--calibrate``, then every
    temperature rule (maximum likelihood, the MAP fit at three prior scales) and one
    temperature fitted on the queries themselves (a bound, not a method)."""
    out = ["| row | episodes | accuracy (%) | ECE pooled (%) before -> after | ECE per "
           "episode (%) before -> after | paired change | NLL before -> after | median T "
           "(IQR) | fits at T = 0.01 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b, a = r["before"], r["after"]
        q1, q3 = a["temperature_quartiles"]
        out.append(
            f"| {r['name']} | {r['episodes']} | {_pct(b['accuracy'])} ± "
            f"{_pct(b['accuracy_ci95'])} | {_pct(b['ece_pooled'])} -> {_pct(a['ece_pooled'])}"
            f" | {_pct(b['ece_episode_mean'])} ± {_pct(b['ece_episode_ci95'])} -> "
            f"{_pct(a['ece_episode_mean'])} ± {_pct(a['ece_episode_ci95'])} | "
            f"{100 * a['ece_change_mean']:+.1f} ± {_pct(a['ece_change_ci95'])} | "
            f"{b['nll']:.3f} -> {a['nll']:.3f} | {a['temperature_median']:.2f} "
            f"({q1:.2f}-{q3:.2f}) | {a['temperature_at_min']:.0%} |")
    rules = [name for name in RULES if name not in ("before", "after")]
    out += ["", "| row | " + " | ".join(f"{name}: ECE pooled, NLL, median T, at 0.01"
                                         for name in rules)
            + " | one T fitted on the queries: T, ECE pooled, NLL |",
            "|---|" + "---|" * (len(rules) + 1)]
    for r in rows:
        cells = [f"{_pct(r[n]['ece_pooled'])}, {r[n]['nll']:.3f}, "
                 f"{r[n]['temperature_median']:.2f}, {r[n]['temperature_at_min']:.0%}"
                 for n in rules]
        o = r["oracle"]
        out.append(f"| {r['name']} | " + " | ".join(cells)
                   + f" | {o['temperature']:.2f}, {_pct(o['ece_pooled'])}, {o['nll']:.3f} |")
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
