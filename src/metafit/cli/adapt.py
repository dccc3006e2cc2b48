"""The verbs that fit a run to a user's examples and use the result: ``adapt`` (writes a
model directory, or with ``--update`` a new version of one), ``predict`` and ``versions``
(the work is in :mod:`metafit.deploy`)."""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Any

from metafit.cli.options import (
    add_checkpoint_option,
    add_classifier_option,
    add_json_option,
    add_model_verb,
    add_threads_option,
    add_verb,
    one_line,
)
from metafit.cli.options import write_line as _write

__all__ = ["add_adapt_parser", "add_predict_parser", "add_versions_parser",
           "add_reject_options", "reject_request"]

_TABLE_CLASSES = 3  # most probable classes shown per row of the table
#: Largest ``predict --from-file`` read (one input a line).
MAX_FROM_FILE_BYTES = 64 * 2**20


def reject_request(args: argparse.Namespace) -> Any:
    """The ``--reject`` options as a :class:`~metafit.deploy.reject.RejectRequest`, or None.

    Raises:
        ValueError: ``--reject-recall``, ``--reject-threshold`` or ``--reject-label``
            without ``--reject``, or values out of bounds.
    """
    from metafit.deploy.reject import DEFAULT_REJECT_SCORE, DEFAULT_UNKNOWN_LABEL, RejectRequest

    if args.reject is None:
        given = [f"--reject-{n}" for n in ("recall", "threshold", "label")
                 if getattr(args, f"reject_{n}") is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need(s) --reject [SCORE]")
        return None
    return RejectRequest(args.reject or DEFAULT_REJECT_SCORE, args.reject_recall,
                         args.reject_threshold,
                         DEFAULT_UNKNOWN_LABEL if args.reject_label is None else args.reject_label)


#: ``adapt`` options an update does not take: it keeps what the current version has.
_NOT_WITH_UPDATE = ("out", "classes", "classifier", "classifier_penalty", "calibrate",
                    "reject", "mlflow", "mlflow_uri")


def _cmd_update(args: argparse.Namespace) -> int:
    """``metafit adapt [RUN] --update MODEL --support NEW``: a new version of MODEL adapted
    on its support set plus NEW (:func:`metafit.deploy.update.update_from_file`)."""
    from metafit.deploy.update import update_from_file

    given = [f"--{n.replace('_', '-')}" for n in _NOT_WITH_UPDATE
             if getattr(args, n) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)}: not with --update, which writes a new version "
                         "into MODEL and keeps its classes' order, classifier, calibration "
                         "and reject setting (refitted on the new support set)")
    number, model = update_from_file(args.update, args.support, run=args.run,
                                     steps=args.steps,
                                     absolute_image_paths=args.absolute_image_paths)
    update = model.info["update"]
    summary = {**_summary(model, args.update), "version": number, "parent": update["parent"]}
    new = update["new_classes"]
    return _report(args, model, summary, (
        f"{args.update}: version {number} (from version {update['parent']} + "
        f"{update['added']} examples{f'; new classes {new}' if new else ''}): "
        f"{len(model.label_names)} classes from {summary['support_size']} examples; "
        f"support-set accuracy {100 * summary['support_accuracy']:.1f}%"))


def _report(args: argparse.Namespace, model: Any, summary: dict[str, Any], text: str
            ) -> int:
    """Print ``adapt``'s ``summary`` as JSON (``--json``), or ``text`` and the reject and
    MLflow lines."""
    if args.json:
        from metafit.cli.results import emit

        emit("adapt", summary)
        return 0
    _write(text)
    if model.reject is not None:
        _write(_reject_line(model.reject))
    if "mlflow_model" in summary:
        _write(f"MLflow model: {summary['mlflow_model']} (mlflow.pyfunc.load_model)")
    return 0


def _summary(model: Any, out: str) -> dict[str, Any]:
    """What ``adapt`` reports of an adapted ``model`` written to ``out``."""
    assert model.support is not None
    fit = (model.logits(model.support[0]).argmax(-1) == model.support[1]).float().mean()
    return {"out": str(out), "kind": model.kind, "labels": model.label_names,
            **{k: model.info[k] for k in ("algorithm", "steps", "support_size")},
            "support_accuracy": round(float(fit), 4), "temperature": model.temperature,
            "reject": None if model.reject is None else model.reject.to_dict()}


def _cmd_adapt(args: argparse.Namespace) -> int:
    from metafit.deploy.adapter import adapt_run

    if args.update:
        return _cmd_update(args)
    if args.run is None or args.out is None:
        raise ValueError("give the run directory and --out MODEL_DIR (or --update MODEL to "
                         "add examples to an adapted model)")
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    model = adapt_run(args.run, args.support, args.out, steps=args.steps,
                      which=args.checkpoint, classes=classes, batch_norm=args.batch_norm,
                      classifier=args.classifier, penalty=args.classifier_penalty,
                      calibrate=args.calibrate,
                      absolute_image_paths=args.absolute_image_paths,
                      reject=reject_request(args))
    summary = _summary(model, args.out)
    if args.mlflow or args.mlflow_uri:
        from metafit.deploy.mlflow_model import log_adapted_model

        summary["mlflow_model"] = log_adapted_model(args.out, args.run,
                                                    tracking_uri=args.mlflow_uri)
    steps = f"{summary['steps']} steps" if summary["steps"] else "no inner steps"
    return _report(args, model, summary, (
        f"adapted {args.run} ({summary['algorithm']}, {steps}) to "
        f"{len(model.label_names)} classes from {summary['support_size']} examples; "
        f"support-set accuracy {100 * summary['support_accuracy']:.1f}%\n"
        f"model directory: {args.out}"))


def _reject_line(reject: Any) -> str:
    """One line saying what gets the unknown label."""
    if reject.threshold is None:
        return (f"none of these: {reject.score} scores are reported but no threshold was "
                f"fitted ({reject.fitted.get('reason', 'none given')}); nothing is "
                f"labelled {reject.label!r}")
    how = reject.fitted.get("how", "")
    if "held_out" in reject.fitted:
        how += (f": {reject.fitted['held_out']} examples, recall "
                f"{100 * reject.fitted.get('held_out_recall', 0):.1f}%")
    return (f"none of these: {reject.score} below {reject.threshold:.4g} is labelled "
            f"{reject.label!r} ({how})")


def _read_lines(from_file: str) -> list[str]:
    """The lines of ``from_file`` (UTF-8; ``\\n``, ``\\r\\n`` or ``\\r`` ends a line): one
    input per line, so that output ``i`` is line ``i + 1``. A final line end and blank
    lines at the very end are not inputs; any other blank line is an error.

    Raises:
        ValueError: a missing or unreadable file, bytes that are not UTF-8, or a blank
            line before the last input, naming the file and the line.
    """
    from metafit.io import read_bounded  # here: building the parser imports no torch

    path = Path(from_file)
    try:
        raw = read_bounded(path, MAX_FROM_FILE_BYTES, follow_links=True)
    except FileNotFoundError:
        raise ValueError(f"{from_file}: no such file (--from-file)") from None
    except ValueError as e:  # not a regular file, or too large
        raise ValueError(f"{e} (--from-file)") from None
    except OSError as e:
        raise ValueError(f"{from_file}: cannot read it (--from-file): {e.strerror or e}"
                         ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        head = raw[: e.start]
        line = head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
        raise ValueError(f"{from_file}, line {line}: not valid UTF-8 (byte "
                         f"{raw[e.start]:#04x}); --from-file reads UTF-8 text") from None
    lines = io.StringIO(text, newline=None).read().split("\n")  # universal line ends
    while lines and not lines[-1].strip():  # the final line end, blank lines at the end
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:
        shown = ", ".join(str(n) for n in blank[:10])
        more = f", ... ({len(blank)} in all)" if len(blank) > 10 else ""
        raise ValueError(f"{from_file}: line(s) {shown}{more} blank: --from-file takes one "
                         "input per line, so that outputs line up with lines; remove the "
                         "blank lines")
    return lines


def _inputs(model_kind: str, items: list[str], from_file: str | None) -> list[Any]:
    """Texts as given (and one per line of ``from_file``, :func:`_read_lines`); image
    paths, a folder giving its image files."""
    from metafit.data.image_folder import IMAGE_EXTENSIONS

    out: list[Any] = list(items)
    if from_file:
        out += _read_lines(from_file)
    if model_kind == "image":
        expanded: list[Any] = []
        for item in out:
            p = Path(item)
            if p.is_dir():
                expanded += sorted(f for f in p.iterdir()
                                   if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            else:
                expanded.append(p)
        out = expanded
    if not out:
        raise ValueError("no inputs: give texts or image files (or --from-file)")
    return out


def _table(names: list[str], rows: list[dict[str, Any]]) -> str:
    """One line per input: the label, the top probability and the next classes; with a
    reject setting, the reject score, and for an unknown answer the closest class."""
    names = [one_line(n) for n in names]  # file names and labels: one cell each
    width = min(max(len(n) for n in names), 60)
    scored = bool(rows) and "score" in rows[0]
    head = "label  [reject score]  " if scored else "label  "
    lines = [f"{'input':<{width}}  {head}(probability; next classes)"]
    for name, row in zip(names, rows, strict=True):
        ranked = sorted(((one_line(k), v) for k, v in row["probabilities"].items()),
                        key=lambda kv: -kv[1])
        others = ", ".join(f"{k} {v:.3f}" for k, v in ranked[1:_TABLE_CLASSES])
        shown = name if len(name) <= width else name[:width - 3] + "..."
        label = one_line(row["label"])
        if scored:
            label += f"  [{row['score']:.4g}]"
        top = f"{ranked[0][0]} {ranked[0][1]:.3f}" if row.get("rejected") else \
            f"{ranked[0][1]:.3f}"
        lines.append(f"{shown:<{width}}  {label}  ({top}; {others})")
    return "\n".join(lines)


def _cmd_predict(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel

    model = AdaptedModel.load(args.model)
    inputs = _inputs(model.kind, args.inputs, args.from_file)
    rows = model.predict(inputs)
    names = [str(i) for i in inputs]
    if args.json:
        from metafit.cli.results import emit

        emit("predict", [{"input": n, **r} for n, r in zip(names, rows, strict=True)])
    else:
        _write(_table(names, rows))
    return 0



def add_adapt_parser(sub: Any) -> None:
    """Add ``adapt`` to the subparsers ``sub``."""
    p = add_verb(sub, "adapt", "fine-tune a trained run on your own labelled examples and "
                 "write an adapted model directory", _cmd_adapt)
    add_threads_option(p)
    p.add_argument("run", nargs="?", help="run directory written by `metafit train` (with "
                   "--update: only if it has moved since MODEL was adapted)")
    p.add_argument("--update", metavar="MODEL", help="add the --support examples (existing "
                   "or new classes) to the adapted model MODEL: adapt again on its support "
                   "set plus them and write a new version of MODEL, which becomes current "
                   "(`metafit versions MODEL` lists them; docs/deploy.md)")
    p.add_argument("--support", required=True, help="labelled examples: a table (.csv, "
                   ".jsonl, .parquet or a datasets directory) with the recipe's text or "
                   "image column and label column, or, for image runs, a folder of class "
                   "folders (SUPPORT/<label>/<image>); docs/data.md")
    p.add_argument("--absolute-image-paths", action="store_true", help="let the support "
                   "table's image paths be absolute or lead out of its folder (only for a "
                   "table you trust)")
    p.add_argument("--out", help="model directory to write (atomically; an existing model "
                   "directory there is replaced, versions and all); required without --update")
    p.add_argument("--steps", type=int, help="inner steps (default: the recipe's evaluation "
                   "steps; more steps fit the support set more closely)")
    add_checkpoint_option(p)
    p.add_argument("--classes", help="comma-separated class names, in order (default: the "
                   "sorted labels); a label outside them is an error")
    p.add_argument("--batch-norm", default="support", choices=["support", "batch"],
                   help="support: freeze the support set's BatchNorm statistics (a "
                   "prediction depends on its input only; default, chosen by "
                   "benchmarks/batchnorm.py); batch: the algorithm's per-batch statistics, "
                   "as in transductive evaluation (`metafit evaluate --batch-norm "
                   "transductive`)")
    add_classifier_option(p, "fit this head instead of the recipe's")
    p.add_argument("--calibrate", action="store_true", help="fit a temperature for the "
                   "probabilities on held-out folds of the support set (needs a class with "
                   "two examples; costs up to 10 extra adaptations); labels do not change")
    add_reject_options(p)
    p.add_argument("--mlflow", action="store_true", help="also log the model directory to "
                   "MLflow as a pyfunc model (track extra), in the training run's MLflow run "
                   "when it was trained with mlflow=true, else in a new run")
    p.add_argument("--mlflow-uri", metavar="URI", help="the tracking URI to log to (implies "
                   "--mlflow; default: the training run's store, MLFLOW_TRACKING_URI, or "
                   "sqlite:///<parent of OUT>/mlflow.db)")
    add_json_option(p, "a summary (labels, support-set accuracy; with --update the version)")


def add_reject_options(p: argparse.ArgumentParser) -> None:
    """``--reject [SCORE]`` and its threshold options (``adapt``). The score names and
    defaults are written out here because building the parser imports no torch;
    tests/test_reject.py keeps them equal to :mod:`metafit.deploy.reject`'s."""
    p.add_argument("--reject", nargs="?", const="", metavar="SCORE", help="'none of "
                   "these': label inputs whose reject score is below a threshold as unknown; "
                   "SCORE: max_prob, max_logit, energy, prototype or nearest (default: the "
                   "shipped default, docs/deploy.md)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reject-recall", type=float, metavar="R", help="with --reject: fit "
                       "the threshold that keeps this fraction of held-out support examples "
                       "(default 0.95; needs a class with two examples; shares --calibrate's "
                       "extra adaptations)")
    group.add_argument("--reject-threshold", type=float, metavar="X", help="with --reject: "
                       "this threshold instead of a fitted one")
    p.add_argument("--reject-label", metavar="NAME", help="with --reject: the unknown "
                   "label (default 'unknown'; not a class name)")


def add_predict_parser(sub: Any) -> None:
    """Add ``predict`` to the subparsers ``sub``."""
    p = add_model_verb(sub, "predict", "labels and probabilities of texts or images from an "
                       "adapted model directory", _cmd_predict)
    add_threads_option(p)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="texts (text models) or image "
                   "files / folders of images (image models)")
    p.add_argument("--from-file", metavar="FILE", help="also read inputs from this UTF-8 "
                   "file, one per line (after any INPUTs), so that outputs line up with its "
                   "lines: a blank line is an error, except at the end of the file")
    add_json_option(p, "a list of {input, label, probabilities, score, rejected}")


def _cmd_versions(args: argparse.Namespace) -> int:
    from metafit.deploy.versions import delete_version, list_versions, set_current

    if args.use is not None:
        set_current(args.model, args.use)
    for n in args.delete or []:
        delete_version(args.model, n)
    rows = list_versions(args.model)
    current = next((r.version for r in rows if r.current), None)
    if args.json:
        from metafit.cli.results import emit

        emit("versions", {"model": str(args.model), "current": current,
                          "versions": [r.to_dict() for r in rows]})
        return 0
    if args.use is not None:
        _write(f"{args.model}: version {args.use} is now current")
    for n in args.delete or []:
        _write(f"{args.model}: version {n} deleted")
    _write(f"{'':2}{'version':>7}  {'created':<25}  {'parent':>6}  {'added':>5}  "
           f"{'support':>7}  classes")
    for r in rows:
        names = ", ".join(map(one_line, r.classes[:6])) + (f", ... ({len(r.classes)})"
                                            if len(r.classes) > 6 else "")
        _write(f"{'*' if r.current else '':2}{r.version:>7}  {r.created:<25}  "
               f"{'' if r.parent is None else r.parent:>6}  "
               f"{'' if r.added is None else r.added:>5}  "
               f"{'' if r.support_size is None else r.support_size:>7}  {names}")
    return 0


def add_versions_parser(sub: Any) -> None:
    """Add ``versions`` to the subparsers ``sub``."""
    p = add_model_verb(sub, "versions", "list the versions of an adapted model (written by "
                       "`metafit adapt --update`), or choose the one it serves (--use: "
                       "rollback)", _cmd_versions)
    p.add_argument("--use", type=int, metavar="N", help="serve version N from now on "
                   "(rollback, or forward again): predict, evaluate, serve and export then "
                   "load it; servers sharing the directory follow on their next request")
    p.add_argument("--delete", type=int, nargs="+", metavar="N", help="delete these versions "
                   "for good (not version 1, the directory itself, nor the current one; "
                   "after --use); their numbers are never given again")
    add_json_option(p, "{model, current, versions: [{version, created, classes, "
                    "support_size, parent, added, current}]}")
