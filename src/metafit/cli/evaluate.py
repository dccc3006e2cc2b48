"""The verbs that score and plot trained runs: ``evaluate`` and ``report``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from metafit.cli.adapt import add_reject_options
from metafit.cli.options import (
    add_checkpoint_option,
    add_classifier_option,
    add_json_option,
    add_progress_option,
    add_threads_option,
    add_verb,
    show_progress,
)

__all__ = ["add_evaluate_parser", "add_report_parser"]


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    if args.reject is not None and not args.test:
        raise ValueError("--reject scores a test set's out-of-scope rows: use it with a run, "
                         "--support S and --test T")
    if args.versions and not args.test:
        raise ValueError("--versions compares versions of a model directory on a test set: "
                         "give --test PATH")
    if (Path(args.run) / "manifest.json").is_file() or args.test or args.support:
        from metafit.cli.score import score_test_set

        return score_test_set(args)
    if _is_rl_run(args.run):
        return _evaluate_rl(args)
    from metafit.distributed import init_distributed, shutdown
    from metafit.evaluation.protocol import BatchNormSetting
    from metafit.runs.trained import evaluate_run

    ctx = init_distributed("cpu")  # under torchrun: episodes split across the processes
    choices: dict[str, list[BatchNormSetting]] = {
        "deployed": ["support"], "transductive": ["batch"], "both": ["support", "batch"]}
    settings = choices[args.batch_norm]
    results = []
    try:
        for setting in settings:
            result = evaluate_run(args.run, split=args.split, episodes=args.episodes,
                                  which=args.checkpoint, steps=args.steps, dist=ctx,
                                  cache_features=not args.no_feature_cache,
                                  classifier=args.classifier,
                                  penalty=args.classifier_penalty,
                                  progress=show_progress(args), batch_norm=setting,
                                  episode_scheme=args.episode_scheme)
            results.append(result)
            if result.batch_norm == "none":  # no BatchNorm: every setting is this one
                break
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return 0
    if args.json:
        from metafit.cli.results import emit

        other = results[1].to_dict() if len(results) > 1 else None
        emit("evaluate", {**results[0].to_dict(), "protocol": "episodes",
                          "run": str(args.run), "split": args.split,
                          "checkpoint": args.checkpoint, "other_setting": other})
        return 0
    penalty = args.classifier_penalty
    where = ", ".join([args.split, args.checkpoint, *filter(None, [
        results[0].extra.get("episode_scheme"),
        args.classifier, None if penalty is None else f"penalty {penalty:g}"])])
    for result in results:
        scale = 100.0 if result.metric == "accuracy" else 1.0
        curve = ", ".join(f"{s}: {v * scale:.2f}"
                          for s, v in zip(result.curve_steps, result.curve, strict=True))
        sys.stdout.write(f"{args.run} [{where}]: {result.summary()}\n"
                         f"after 0..{result.steps} inner steps: {curve}\n"
                         f"BatchNorm: {BATCH_NORM_LINES[result.batch_norm]}\n")
    sys.stdout.write(_forgetting_line(args.run))
    return 0


def _forgetting_line(run: str) -> str:
    """For a warm-started run, the line of its ``forgetting.json`` (written by training,
    :mod:`metafit.runs.forgetting`; not recomputed here); ``""`` for other runs."""
    from metafit.runs.forgetting import read_forgetting, summary

    figure = read_forgetting(run)
    if figure is None:
        return ""
    return f"forgetting (previous run's test tasks, from forgetting.json): {summary(figure)}\n"


#: What the text output says about each BatchNorm setting of a result.
BATCH_NORM_LINES = {
    "support": "deployed setting: each query normalised with its support set's statistics "
               "(as `metafit adapt` models predict)",
    "batch": "transductive: batch statistics over each query set (not what a deployed "
             "model scores; --batch-norm deployed)",
    "none": "none (the model has no BatchNorm: deployed and transductive are the same)",
}


def _is_rl_run(run: str) -> bool:
    """Whether ``run`` holds a meta-RL run (:func:`metafit.runs.rl.is_rl_run`)."""
    from metafit.runs.rl import is_rl_run

    return is_rl_run(run)


def _evaluate_rl(args: argparse.Namespace) -> int:
    """``metafit evaluate RUN`` of a meta-RL run: the return after 0..steps adaptation
    steps on fixed tasks (:func:`metafit.runs.rl.evaluate_rl_run`)."""
    from metafit.runs.rl import evaluate_rl_run

    if args.classifier is not None or args.classifier_penalty is not None:
        raise ValueError(f"{args.run} is a meta-RL run: a test-time classifier applies to "
                         "classification runs only")
    result = evaluate_rl_run(args.run, split=args.split, episodes=args.episodes,
                             which=args.checkpoint, steps=args.steps)
    if args.json:
        from metafit.cli.results import emit

        emit("evaluate", {**result.to_dict(), "protocol": "rl", "run": str(args.run),
                          "split": args.split, "checkpoint": args.checkpoint})
        return 0
    curve = ", ".join(f"{s}: {v:.2f} +- {c:.2f}" for s, v, c in
                      zip(result.curve_steps, result.curve, result.curve_ci95, strict=True))
    sys.stdout.write(f"{args.run} [{args.split}, {args.checkpoint}]: {result.summary()}\n"
                     f"return after 0..{result.steps} adaptation steps: {curve}\n")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metafit.runs.report import report_runs

    files = report_runs(args.runs, out=args.out, episodes=args.episodes, split=args.split,
                        progress=show_progress(args))
    if args.json:
        import json

        from metafit.cli.results import emit

        out = files[-1].parent  # index.html, in the report directory
        emit("report", {"out": str(out), "files": [str(f) for f in files],
                        "results": json.loads((out / "report.json").read_text())})
        return 0
    for f in files:
        sys.stdout.write(f"wrote {f}\n")
    return 0


def add_evaluate_parser(sub: Any) -> None:
    """Add ``evaluate`` to the subparsers ``sub``."""
    p = add_verb(sub, "evaluate", "evaluate a run on fixed test episodes (mean, 95%% CI; a "
                 "meta-RL run: the return after 0..k adaptation steps on fixed test tasks), "
                 "or a model on your own labelled test set (--test)", _cmd_evaluate)
    add_threads_option(p)
    add_progress_option(p)
    p.add_argument("run", help="run directory written by `metafit train`, or a model "
                   "directory written by `metafit adapt` (with --test)")
    p.add_argument("--test", metavar="PATH", help="your labelled test set (a CSV for text, "
                   "a folder of class folders for images): accuracy with a 95%% interval, "
                   "macro-F1, per-class scores, confusion, calibration")
    p.add_argument("--versions", metavar="all|N,M", help="with a model directory and "
                   "--test: score these versions of it (`metafit adapt --update`), one row "
                   "each; rows of classes a version lacks count as its errors")
    p.add_argument("--support", metavar="PATH", help="with a run and --test: adapt the run "
                   "to these labelled examples first (as `metafit adapt` does), then score")
    add_reject_options(p)
    p.add_argument("--out", metavar="DIR", help="with --test: also write test_report.json "
                   "and the confusion and reliability figures into DIR")
    p.add_argument("--episodes", type=int, help="number of episodes, or tasks of a meta-RL "
                   "run (default: the recipe's test_episodes)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="whose classes the episodes draw from (default: test, the classes "
                   "meta-training never saw)")
    add_checkpoint_option(p)
    p.add_argument("--steps", type=int, help="inner steps at test time (default: recipe's)")
    add_json_option(p)
    p.add_argument("--no-feature-cache", action="store_true",
                   help="run the body in every episode instead of embedding each distinct "
                        "example once (same result, slower; see metafit.evaluation.feature_cache)")
    add_classifier_option(p, "classify with this head instead of the recipe's")
    p.add_argument("--episode-scheme", choices=["random", "within_alphabet"],
                   help="Omniglot runs: score on these episodes instead of the recipe's "
                   "(within_alphabet: Lake et al.'s one-shot task, one alphabet per "
                   "episode, support and queries from different drawers, no rotations)")
    p.add_argument("--batch-norm", default="deployed",
                   choices=["deployed", "transductive", "both"],
                   help="how queries are normalised by models with BatchNorm: deployed "
                   "(default: the support set's statistics, each query on its own, as the "
                   "model `metafit adapt` writes predicts), transductive (each query set "
                   "as one batch with its own statistics, the MAML papers' protocol), or "
                   "both (two evaluations, each labelled)")


def add_report_parser(sub: Any) -> None:
    """Add ``report`` to the subparsers ``sub``."""
    p = add_verb(sub, "report", "plot runs: training and validation curves, adaptation "
                 "curves, confusion matrices and an example test episode per run (or "
                 "sinusoid fits), in report.md and index.html", _cmd_report)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: "
                   "curves overlaid)")
    p.add_argument("--out", help="report directory (default RUN/report for one run)")
    p.add_argument("--episodes", type=int, default=100,
                   help="test episodes for the results, adaptation curves and confusion "
                   "matrices (default 100)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"],
                   help="the split whose evaluation the report plots (default: test)")
    add_threads_option(p)
    add_progress_option(p)
    add_json_option(p, "the files written and each run's evaluation")
