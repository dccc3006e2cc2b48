"""The verbs that shrink or convert an adapted model directory: ``compress`` (int8
quantization, pruning) and ``export`` (ONNX); the work is in :mod:`metafit.deploy`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metafit.cli.compress_table import describe_compression, figures_lines
from metafit.cli.options import (
    add_json_option,
    add_model_verb,
    add_progress_option,
    add_threads_option,
    show_progress,
)
from metafit.cli.options import write_line as _write

__all__ = ["add_compress_parser", "add_export_parser"]


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
                                    transductive=False, progress=show_progress(args))
    rows = summarise(scores)
    return {"run": str(run), "episodes": args.episodes, **rows}


def _distilled(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, Any]]:
    """``model`` distilled as ``--distill`` asks (inputs and output checked first)."""
    from metafit.deploy.distill import DistillSettings, distill, parse_student, read_unlabelled
    from metafit.deploy.modeldir import check_replaceable

    if args.episodes is not None:
        raise ValueError("--episodes re-adapts the source run per episode; with --distill "
                         "it would distil once per episode: measure the student on a test "
                         "set instead (metafit evaluate MODEL_DIR --test T)")
    if args.distill_steps < 1:
        raise ValueError(f"--distill-steps must be >= 1, got {args.distill_steps} (0 would "
                         "write the untrained student)")
    student = parse_student(args.distill, model)
    if not args.unlabelled:
        raise ValueError("--distill needs --unlabelled PATH: a table with a text column, "
                         "or a folder of images")
    settings = DistillSettings(steps=args.distill_steps, batch_size=args.distill_batch,
                               lr=args.distill_lr, temperature=args.distill_temperature,
                               support_weight=args.support_weight, seed=args.seed,
                               max_inputs=args.max_unlabelled)
    inputs = read_unlabelled(args.unlabelled, model.kind, args.text_column,
                             settings.max_inputs)
    check_replaceable(args.out)
    return distill(model, student, inputs, settings)


def _trimmed(args: argparse.Namespace, model: Any) -> tuple[Any, dict[str, Any]]:
    """``model`` with its token table cut to the tokens of ``--unlabelled`` texts."""
    from metafit.deploy.distill import read_unlabelled
    from metafit.deploy.modeldir import check_replaceable
    from metafit.deploy.vocabulary import trim_vocabulary

    if model.kind != "text":
        raise ValueError("--trim-vocabulary is for text models; this one takes images")
    texts = read_unlabelled(args.unlabelled, "text", args.text_column, args.max_unlabelled)
    check_replaceable(args.out)
    return trim_vocabulary(model, texts, seed=args.seed)


def _cmd_compress(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel
    from metafit.deploy.compress import compare
    from metafit.deploy.episodes import describe
    from metafit.deploy.modeldir import check_not_source
    from metafit.runs.trained import check_count

    check_count("--episodes", args.episodes, default="no accuracy measurement")
    check_not_source(args.model, args.out)
    if (not args.quantize and args.prune is None and not args.distill
            and not args.trim_vocabulary):
        raise ValueError("nothing to do: give --distill STUDENT, --trim-vocabulary, "
                         "--quantize int8 and/or --prune SPARSITY")
    if args.unlabelled and not (args.distill or args.trim_vocabulary):
        raise ValueError("--unlabelled is for --distill STUDENT and --trim-vocabulary")
    if args.trim_vocabulary and not args.unlabelled:
        raise ValueError("--trim-vocabulary needs --unlabelled PATH: a table of the texts "
                         "whose tokens to keep")
    if args.trim_vocabulary and args.episodes is not None:
        raise ValueError("--episodes re-adapts the source run per episode; with "
                         "--trim-vocabulary measure on a test set instead (metafit evaluate "
                         "MODEL_DIR --test T)")
    model = AdaptedModel.load(args.model)
    compress = _compression(args)
    report = trimmed = None
    student = model
    if args.distill:
        student, report = _distilled(args, model)
    if args.trim_vocabulary:
        student, trimmed = _trimmed(args, student)
    compressed = compress(student)
    compressed.save(args.out)
    figures = compare(model, compressed)
    if report is not None:
        figures["distill"] = report
    if trimmed is not None:
        figures["vocabulary"] = trimmed
    if args.episodes is not None:
        figures["test_episodes"] = _episode_figures(args, model, compress)
    if args.json:
        from metafit.cli.results import emit

        emit("compress", {"out": str(args.out), "compression": compressed.compression,
                          **figures})
        return 0
    _write(f"wrote {args.out} ({describe_compression(compressed.compression)})")
    for line in figures_lines(figures):
        _write(line)
    if args.episodes is not None:
        test = figures["test_episodes"]
        _write(f"  accuracy on {test['episodes']} test episodes of {test['run']} (each adapted, "
               f"then compressed the same way):")
        for name in ("float", "compressed"):
            _write(f"    {name:<10}  {describe(test[name])}")
    return 0


def _with_export_extra(export: Callable[[], Any]) -> Any:
    """``export()``; an ImportError (onnx, onnxscript and onnxruntime are imported at module
    or call time) becomes a message naming the extra to install."""
    try:
        return export()
    except ImportError as e:
        raise ValueError(f"ONNX export needs the export extra: pip install 'metafit[export]' "
                         f"({e})") from e


def _cmd_export_policy(args: argparse.Namespace, out: str) -> int:
    """``metafit export RUN``: a meta-RL run's meta-learned policy to ONNX."""
    if args.quantize:
        raise ValueError("--quantize is for classifiers; a policy is exported in float32")
    def export() -> Any:
        from metafit.deploy.policy_onnx import export_run_policy

        return export_run_policy(args.model, out, which=args.checkpoint,
                                 tolerance=args.tolerance)

    report = _with_export_extra(export)
    if args.json:
        from metafit.cli.results import emit

        emit("export", report.to_dict())
        return 0
    _write(f"exported the {args.checkpoint} policy of {args.model} to {out}/model.onnx "
           "(observations -> action, distribution); onnxruntime parity on "
           f"{len(report.batches)} batches {report.batches}: max abs difference "
           f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from metafit.deploy.adapted import AdaptedModel
    from metafit.deploy.modeldir import check_not_source
    from metafit.runs.rl import is_rl_run

    out = args.out or str(Path(args.model).with_name(Path(args.model).name + "-onnx"))
    check_not_source(args.model, out)
    if is_rl_run(args.model):
        return _cmd_export_policy(args, out)
    model = AdaptedModel.load(args.model)
    def export() -> Any:
        from metafit.deploy.onnx_export import export_onnx

        return export_onnx(model, out, tolerance=args.tolerance, quantize=args.quantize,
                           progress=show_progress(args))

    report = _with_export_extra(export)
    if args.json:
        from metafit.cli.results import emit

        emit("export", report.to_dict())
        return 0
    _write(f"exported {args.model} to {out}/model.onnx; onnxruntime parity on "
           f"{len(report.batches)} batches {report.batches}: max abs logit difference "
           f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:g}), probabilities "
           f"{report.max_prob_diff:.3g}")
    if report.quantized:
        _write(f"written: onnxruntime's {report.quantized} quantization of it; its logits "
               f"differ from PyTorch's float ones by up to {report.quantized_max_abs_diff:.3g} "
               f"(probabilities {report.quantized_max_prob_diff:.3g}"
               + ("" if report.quantized_max_score_diff is None else
                  f", reject scores {report.quantized_max_score_diff:.3g}") + "; not gated)")
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"a sparsity in [0, 1), got {text}")
    return value



def add_compress_parser(sub: Any) -> None:
    """Add ``compress`` to the subparsers ``sub``."""
    p = add_model_verb(sub, "compress", "distillation into a smaller student, int8 "
                       "quantization and/or magnitude pruning of an adapted model (size, "
                       "latency and agreement reported)", _cmd_compress)
    add_threads_option(p)
    p.add_argument("-o", "--out", required=True, help="the compressed model directory")
    p.add_argument("--distill", metavar="STUDENT", help="train a smaller student on the "
                   "model's soft labels of --unlabelled inputs (Hinton et al. 2015). Text: "
                   "layers:N (the first N layers of the model's encoder), layers:0,2,4 (those "
                   "layers) or a local Hugging Face encoder directory; images: "
                   "NAME[:HIDDEN[:DEPTH]] (conv4:32, mlp:256). Then --prune/--quantize, if "
                   "given, apply to the student")
    p.add_argument("--trim-vocabulary", action="store_true", help="text models: keep only "
                   "the rows of the token table that the --unlabelled texts and the support "
                   "set use (other tokens read as [UNK]); after --distill, before "
                   "--prune/--quantize")
    p.add_argument("--unlabelled", metavar="PATH", help="with --distill or --trim-vocabulary: "
                   "unlabelled inputs, a table (.csv, .jsonl, .parquet, datasets directory) "
                   "with a text column, or a folder of images")
    p.add_argument("--text-column", default="text", help="with --distill or "
                   "--trim-vocabulary: the texts' column of --unlabelled (default text)")
    p.add_argument("--distill-steps", type=int, default=300, help="with --distill: training "
                   "steps (default 300)")
    p.add_argument("--distill-batch", type=int, default=32, help="with --distill: inputs per "
                   "step (default 32)")
    p.add_argument("--distill-lr", type=float, default=None, help="with --distill: peak "
                   "learning rate (default 1e-4 text, 1e-3 images)")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="with --distill: "
                   "the distillation temperature T (default 2)")
    p.add_argument("--support-weight", type=float, default=0.0, help="with --distill: weight "
                   "of the cross entropy on the stored support set's labels (default 0)")
    p.add_argument("--max-unlabelled", type=int, default=50_000, help="with --distill: most "
                   "unlabelled inputs accepted (default 50000)")
    p.add_argument("--seed", type=int, default=0, help="with --distill: seed of the "
                   "student's fresh weights and of the batches (default 0)")
    p.add_argument("--quantize", choices=["int8"], help="int8 dynamic quantization of the "
                   "linear layers")
    p.add_argument("--quantize-embeddings", action="store_true", help="with --quantize: the "
                   "embedding tables too (8-bit rows)")
    p.add_argument("--prune", type=_fraction, metavar="SPARSITY", help="zero this fraction "
                   "of the conv/linear weights of smallest magnitude (before quantizing)")
    scopes = "global (default): the smallest weights over all layers at once; layer: the " \
        "same fraction in each layer"
    p.add_argument("--prune-scope", default="global", choices=["global", "layer"], help=scopes)
    p.add_argument("--episodes", type=int, help="also measure the accuracy change on this "
                   "many test episodes of the source run (each adapted, then compressed)")
    p.add_argument("--run", help="with --episodes: the run (default: the one the model was "
                   "adapted from)")
    p.add_argument("--data-root", help="with --episodes: the run's data, where it moved")
    add_progress_option(p)
    add_json_option(p, "the figures")


def add_export_parser(sub: Any) -> None:
    """Add ``export`` to the subparsers ``sub``."""
    p = add_model_verb(sub, "export", "export an adapted model, or a meta-RL run's policy, to "
                       "ONNX, verified against PyTorch in onnxruntime", _cmd_export)
    add_threads_option(p)
    p.add_argument("--format", default="onnx", choices=["onnx"],
                   help="the export format (ONNX, checked for parity in onnxruntime)")
    p.add_argument("--out", help="output directory (default MODEL-onnx)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed absolute "
                   "logit difference in the parity check (default 1e-4)")
    p.add_argument("--quantize", choices=["int8"], help="write onnxruntime's dynamic int8 "
                   "quantization of the checked float export (its difference is reported)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="a meta-RL run's checkpoint to export (default best)")
    add_progress_option(p)
    add_json_option(p, "the parity report")
