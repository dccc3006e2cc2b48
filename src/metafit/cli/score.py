"""``metafit evaluate MODEL_DIR --test T`` and ``metafit evaluate RUN --support S --test T``:
the user's own labelled test set (the work is in :mod:`metafit.deploy.scoring`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from metafit.cli.options import one_line, show_progress, write_line

__all__ = ["score_test_set"]


def _model(args: argparse.Namespace) -> Any:
    """The model to score: the model directory, or the run adapted on ``--support``."""
    from metafit.cli.adapt import reject_request
    from metafit.deploy.adapted import AdaptedModel
    from metafit.deploy.adapter import adapt_run

    path = Path(args.run)
    reject = reject_request(args)
    if (path / "manifest.json").is_file():
        if args.support or reject is not None:
            raise ValueError(f"{path} is a model directory, already adapted: --support and "
                             "--reject are for a run directory (the model directory keeps "
                             "the reject setting it was adapted with)")
        return AdaptedModel.load(path)
    if not args.support:
        raise ValueError(f"{path} is a run directory: give --support PATH (your labelled "
                         "examples) to adapt it before scoring --test, or score a model "
                         "directory written by `metafit adapt`")
    return adapt_run(path, args.support, None, steps=args.steps, which=args.checkpoint,
                     classifier=args.classifier, penalty=args.classifier_penalty,
                     reject=reject)


def score_test_set(args: argparse.Namespace) -> int:
    """Score the model (:func:`_model`) on ``--test``; print the summary, or ``--json``."""
    from metafit.deploy.scoring import score_model

    if not args.test:
        raise ValueError(f"{args.run} is a model directory: give --test PATH, your labelled "
                         "test set, to score it")
    if args.versions:
        return _score_versions(args)
    model = _model(args)
    report = score_model(model, args.test, progress=show_progress(args))
    files: list[str] = []
    if args.out:
        from metafit.io import atomic_write_text, written_together

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from metafit.runs.test_set_plots import plot_test_set

        with written_together():  # an interrupted re-score leaves the previous set whole
            atomic_write_text(out / "test_report.json",
                              json.dumps(report.to_dict(), indent=1))
            files.append(str(out / "test_report.json"))
            files += [str(p) for p in plot_test_set(report, out, title=Path(args.test).name)]
    payload = {"protocol": "test_set", "model": str(args.run), "test": str(args.test),
               **report.to_dict(), "files": files}
    if args.json:
        from metafit.cli.results import emit

        emit("evaluate", payload)
        return 0
    write_line(f"{args.run} on {args.test}: {report.summary()}")
    if report.open_set is not None:
        from metafit.evaluation.openset import OpenSetReport

        write_line(OpenSetReport(**report.open_set).summary())
    width = max(len(c.name) for c in report.per_class)
    write_line(f"{'class':<{width}}  precision  recall  f1     support")
    for c in report.per_class:
        write_line(f"{one_line(c.name):<{width}}  {c.precision:9.3f}  {c.recall:6.3f}  {c.f1:.3f}  "
                   f"{c.support:7d}")
    if report.confused_pairs:
        write_line("most confused: " + ", ".join(
            f"{one_line(p['true'])} -> {one_line(p['predicted'])} ({p['count']})"
            for p in report.confused_pairs[:5]))
    for f in files:
        write_line(f"wrote {f}")
    return 0


def parse_versions(text: str) -> list[int] | None:
    """``--versions``: ``all`` (None) or comma-separated version numbers.

    Raises:
        ValueError: anything else.
    """
    if text.strip() == "all":
        return None
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"--versions takes 'all' or version numbers like 1,3; got "
                         f"{text!r}") from None
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"--versions names a version twice: {text!r}")
    return numbers


def _score_versions(args: argparse.Namespace) -> int:
    """``metafit evaluate MODEL --test T --versions all|N,M``: one row per version
    (:func:`metafit.deploy.scoring.score_versions`)."""
    from metafit.deploy.scoring import score_versions

    if not (Path(args.run) / "manifest.json").is_file():
        raise ValueError(f"{args.run} is not a model directory: --versions compares the "
                         "versions of one written by `metafit adapt`")
    if args.support or args.out or args.reject is not None:
        raise ValueError("--versions takes no --support, --reject or --out: it scores the "
                         "model directory's own versions")
    rows = score_versions(args.run, args.test, parse_versions(args.versions),
                          progress=show_progress(args))
    if args.json:
        from metafit.cli.results import emit

        emit("evaluate", {"protocol": "versions", "model": str(args.run),
                          "test": str(args.test), "rows": rows})
        return 0
    write_line(f"{args.run} on {args.test} ({rows[0]['examples']} examples; rows of "
               "classes a version lacks count as errors):")
    write_line(f"{'':2}{'version':>7}  {'classes':>7}  {'support':>7}  {'known':>5}  "
               f"{'accuracy (95% CI)':<22}  {'known acc':>9}  {'macro-F1':>8}  {'ECE':>5}")
    for r in rows:
        ci = (f"{100 * r['accuracy']:.2f}% ({100 * r['accuracy_low']:.1f}-"
              f"{100 * r['accuracy_high']:.1f})")
        write_line(f"{'*' if r['current'] else '':2}{r['version']:>7}  "
                   f"{len(r['classes']):>7}  {r['support_size'] or '':>7}  {r['known']:>5}  "
                   f"{ci:<22}  {100 * r['known_accuracy']:>8.2f}%  {r['macro_f1']:>8.3f}  "
                   f"{r['ece']:>5.3f}")
    return 0
