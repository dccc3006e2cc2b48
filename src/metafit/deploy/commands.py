"""The deployment verbs of the ``metafit`` command: ``adapt``, ``predict``, ``compress``
and ``export`` (parsers and thin functions; the work is in :mod:`metafit.deploy`)."""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metafit.algorithms.heads import CLASSIFIERS

__all__ = ["add_classifier_option", "add_parsers"]

_TABLE_CLASSES = 3  # most probable classes shown per row of the table


def add_classifier_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--classifier`` and ``--classifier-penalty``: the test-time head of ProtoNet,
    FineTune and linear_probe runs and its penalty instead of the recipe's
    (:mod:`metafit.algorithms.heads`); ``what``: what the command does with the head."""
    p.add_argument("--classifier", choices=list(CLASSIFIERS),
                   help=f"protonet, finetune, linear_probe runs: {what} (logistic: L-BFGS "
                        "logistic regression on normalised features)")
    p.add_argument("--classifier-penalty", type=float, metavar="PENALTY",
                   help="the logistic head's L2 penalty on its weights instead of the "
                        "recipe's classifier_penalty (default 1e-4)")


def _write(text: str) -> None:
    sys.stdout.write(text + "\n")


def _cmd_adapt(args: argparse.Namespace) -> int:
    from metafit.deploy.adapter import adapt_run

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    model = adapt_run(args.run, args.support, args.out, steps=args.steps,
                      which=args.checkpoint, classes=classes, batch_norm=args.batch_norm,
                      classifier=args.classifier, penalty=args.classifier_penalty)
    assert model.support is not None
    fit = (model.logits(model.support[0]).argmax(-1) == model.support[1]).float().mean()
    summary = {"out": str(args.out), "kind": model.kind, "labels": model.label_names,
               **{k: model.info[k] for k in ("algorithm", "steps", "support_size")},
               "support_accuracy": round(float(fit), 4)}
    if args.json:
        _write(json.dumps(summary))
        return 0
    _write(f"adapted {args.run} ({summary['algorithm']}, {summary['steps']} steps) to "
           f"{len(model.label_names)} classes from {summary['support_size']} examples; "
           f"support-set accuracy {100 * float(fit):.1f}%\nmodel directory: {args.out}")
    return 0


def _read_lines(from_file: str) -> list[str]:
    """The lines of ``from_file`` (UTF-8; ``\\n``, ``\\r\\n`` or ``\\r`` ends a line): one
    input per line, so that output ``i`` is line ``i + 1``. A final line end and blank
    lines at the very end are not inputs; any other blank line is an error.

    Raises:
        ValueError: a missing or unreadable file, bytes that are not UTF-8, or a blank
            line before the last input, naming the file and the line.
    """
    path = Path(from_file)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{from_file}: no such file (--from-file)") from None
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
    width = min(max(len(n) for n in names), 60)
    lines = [f"{'input':<{width}}  label  (probability; next classes)"]
    for name, row in zip(names, rows, strict=True):
        ranked = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])
        others = ", ".join(f"{k} {v:.3f}" for k, v in ranked[1:_TABLE_CLASSES])
        shown = name if len(name) <= width else name[:width - 3] + "..."
        lines.append(f"{shown:<{width}}  {row['label']}  ({ranked[0][1]:.3f}; {others})")
    return "\n".join(lines)


def _cmd_predict(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel

    model = AdaptedModel.load(args.model)
    inputs = _inputs(model.kind, args.inputs, args.from_file)
    rows = model.predict(inputs)
    names = [str(i) for i in inputs]
    if args.json:
        _write(json.dumps([{"input": n, **r} for n, r in zip(names, rows, strict=True)]))
    else:
        _write(_table(names, rows))
    return 0


def _compression(args: argparse.Namespace) -> Callable[[Any], Any]:
    """The compression the flags ask for: prune (if asked), then quantize (if asked)."""
    from metafit.deploy.compress import prune, quantize

    def apply(model: Any) -> Any:
        if args.prune is not None:
            model = prune(model, args.prune, args.prune_scope)
        if args.quantize:
            model = quantize(model, embeddings=args.quantize_embeddings)
        return model

    return apply


def _episode_figures(args: argparse.Namespace, model: Any, compress: Callable[[Any], Any]
                     ) -> dict[str, Any]:
    """Accuracy before and after on ``args.episodes`` test episodes of the source run."""
    import warnings

    from metafit.deploy.adapter import Adapter
    from metafit.deploy.episodes import episode_accuracies, summarise

    run = args.run or model.info.get("source", {}).get("run")
    if not run:
        raise ValueError("--episodes needs the run the model was adapted from: give --run")
    source = model.info.get("source", {})
    adapter = Adapter.from_run(run, source.get("checkpoint", "best"), source.get("classifier"),
                               source.get("classifier_penalty"))
    recipe = adapter.recipe
    if args.data_root:
        recipe = recipe.model_copy(update={"data_root": args.data_root})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-linear-layer warning, once per episode
        scores = episode_accuracies(adapter, {"compressed": compress}, args.episodes, recipe,
                                    transductive=False)
    rows = summarise(scores)
    return {"run": str(run), "episodes": args.episodes, **rows}


def _cmd_compress(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel
    from metafit.deploy.compress import compare
    from metafit.deploy.episodes import describe
    from metafit.runs.trained import check_count

    check_count("--episodes", args.episodes, default="no accuracy measurement")
    if not args.quantize and args.prune is None:
        raise ValueError("nothing to do: give --quantize int8 and/or --prune SPARSITY")
    model = AdaptedModel.load(args.model)
    compress = _compression(args)
    compressed = compress(model)
    compressed.save(args.out)
    figures = compare(model, compressed)
    if args.episodes is not None:
        figures["test_episodes"] = _episode_figures(args, model, compress)
    if args.json:
        _write(json.dumps({"out": str(args.out), **figures}))
        return 0
    _write(f"wrote {args.out} ({compressed.compression})")
    for key, value in figures.items():
        if key != "test_episodes":
            _write(f"  {key}: {value}")
    if args.episodes is not None:
        test = figures["test_episodes"]
        _write(f"  accuracy on {test['episodes']} test episodes of {test['run']} (each adapted, "
               f"then compressed the same way): float {describe(test['float'])}; "
               f"compressed {describe(test['compressed'])}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel

    model = AdaptedModel.load(args.model)
    out = args.out or str(Path(args.model).with_name(Path(args.model).name + "-onnx"))
    try:  # onnx, onnxscript and onnxruntime are imported at module or call time
        from metafit.deploy.onnx_export import export_onnx

        report = export_onnx(model, out, tolerance=args.tolerance, quantize=args.quantize)
    except ImportError as e:
        raise ValueError(f"ONNX export needs the export extra: pip install 'metafit[export]' "
                         f"({e})") from e
    if args.json:
        _write(json.dumps(report.to_dict()))
        return 0
    _write(f"exported {args.model} to {out}/model.onnx; onnxruntime parity on "
           f"{len(report.batches)} batches {report.batches}: max abs logit difference "
           f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g}), probabilities "
           f"{report.max_prob_diff:.3g}")
    if report.quantized:
        _write(f"written: onnxruntime's {report.quantized} quantization of it; its logits "
               f"differ from PyTorch's float ones by up to {report.quantized_max_abs_diff:.3g} "
               f"(probabilities {report.quantized_max_prob_diff:.3g}; not gated)")
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a sparsity in [0, 1), got {text}")
    return value


def add_parsers(sub: Any) -> None:
    """Add ``adapt``, ``predict``, ``compress`` and ``export`` to the subparsers ``sub``."""
    p = sub.add_parser("adapt", help="fine-tune a trained run on your own labelled examples "
                       "and write an adapted model directory")
    p.add_argument("run", help="run directory written by `metafit train`")
    p.add_argument("--support", required=True, help="labelled examples: a CSV (text runs; "
                   "the recipe's text and label columns) or a folder of class folders "
                   "(image runs: SUPPORT/<label>/<image>)")
    p.add_argument("--out", required=True, help="model directory to write (atomically; an "
                   "existing model directory there is replaced)")
    p.add_argument("--steps", type=int, help="inner steps (default: the recipe's evaluation "
                   "steps; more steps fit the support set more closely)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--classes", help="comma-separated class names, in order (default: the "
                   "sorted labels); a label outside them is an error")
    p.add_argument("--batch-norm", default="support", choices=["support", "batch"],
                   help="support: freeze the support set's BatchNorm statistics (a "
                   "prediction depends on its input only; default); batch: the algorithm's "
                   "per-batch statistics, as in evaluation")
    add_classifier_option(p, "fit this head instead of the recipe's")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser("predict", help="labels and probabilities of texts or images from an "
                       "adapted model directory")
    p.add_argument("model", help="model directory written by `metafit adapt`")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="texts (text models) or image "
                   "files / folders of images (image models)")
    p.add_argument("--from-file", metavar="FILE", help="also read inputs from this UTF-8 "
                   "file, one per line (after any INPUTs), so that outputs line up with its "
                   "lines: a blank line is an error, except at the end of the file")
    p.add_argument("--json", action="store_true", help="print JSON: a list of {input, "
                   "label, probabilities}")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("compress", help="int8 quantization and/or magnitude pruning of an "
                       "adapted model (size, latency and agreement reported)")
    p.add_argument("model", help="model directory written by `metafit adapt`")
    p.add_argument("--out", required=True, help="the compressed model directory")
    p.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantization of the "
                   "linear layers")
    p.add_argument("--quantize-embeddings", action="store_true", help="with --quantize: the "
                   "embedding tables too (8-bit rows)")
    p.add_argument("--prune", type=_fraction, metavar="SPARSITY", help="zero this fraction "
                   "of the conv/linear weights of smallest magnitude (before quantizing)")
    p.add_argument("--prune-scope", default="global", choices=["global", "layer"])
    p.add_argument("--episodes", type=int, help="also measure the accuracy change on this "
                   "many test episodes of the source run (each adapted, then compressed)")
    p.add_argument("--run", help="with --episodes: the run (default: the one the model was "
                   "adapted from)")
    p.add_argument("--data-root", help="with --episodes: the run's data, where it moved")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd_compress)

    p = sub.add_parser("export", help="export an adapted model to ONNX, verified against "
                       "PyTorch in onnxruntime")
    p.add_argument("model", help="model directory written by `metafit adapt`")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", help="output directory (default MODEL-onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed absolute "
                   "logit difference in the parity check (default 1e-4)")
    p.add_argument("--quantize", choices=["int8"], help="write onnxruntime's dynamic int8 "
                   "quantization of the checked float export (its difference is reported)")
    p.add_argument("--json", action="store_true", help="print the parity report as JSON")
    p.set_defaults(func=_cmd_export)
