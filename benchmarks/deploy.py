"""Deployment figures of trained runs: accuracy, size and latency of the adapted model
before and after compression, and its ONNX export.

    python benchmarks/deploy.py runs/omniglot_maml runs/banking_probe --episodes 300 100

For each run, on its fixed test episodes (``split_sampler(recipe, "test")``, the episodes
``metafit evaluate`` scores), each episode is adapted once with the run's recipe and the
adapted model is materialised (BatchNorm statistics frozen on the support set, as
``metafit adapt`` writes it), then compressed: int8 dynamic quantization of the linear
layers (text: also with the token table), and global magnitude pruning at each
``--sparsity``. Every variant scores the episode's query set; accuracies are means with
95% CIs over the episodes, and the change against the float model is the mean of the
per-episode differences (paired) with its CI. For models with BatchNorm the algorithm's
own transductive scoring (batch statistics of the query set) is reported too.

Size (bytes of the saved state dict, and gzipped) and latency (median of ``--repeats``
forward passes of the query set's first 1 or 32 rows, cycled, one thread) are measured on
the last episode's models, after the accuracy loop (``--retime`` measures them again for
finished runs, e.g. on a quiet machine). Its float model is exported to ONNX, as is and
quantized to int8 by onnxruntime: the largest logit difference from PyTorch's float model,
the file size and onnxruntime's latency (one intra-op thread) are reported (no accuracy
over episodes for ONNX: one export per episode would cost more than the whole run).
Results: ``--out``/NAME.json (read back by a later run), every run's row in ``deploy.json``
in ``--results-dir`` (default ``benchmarks/results/<today>/``) and the ``deploy`` block of
``--results``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import add_output_options, machine, results_dir, write_block, write_rows

from metafit.config.recipe import Recipe
from metafit.deploy import Adapter
from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.compress import batch_of, measure, median_latency, prune, quantize
from metafit.deploy.episodes import Variant, episode_accuracies, summarise
from metafit.deploy.onnx_export import export_onnx, onnx_feeds, onnx_session
from metafit.episodes import Episode
from metafit.runs.directory import RunDir
from metafit.runs.trained import split_sampler


def variants(model_kind: str, sparsities: list[float]) -> dict[str, Variant]:
    """The compressions compared, by name."""
    out: dict[str, Variant] = {"int8": quantize}
    if model_kind == "text":
        out["int8+emb"] = partial(quantize, embeddings=True)
    for s in sparsities:
        out[f"pruned {s:.0%}"] = partial(prune, amount=s)
    return out


def onnx_figures(model: AdaptedModel, x: torch.Tensor, repeats: int,
                 quantize: str | None = None) -> dict[str, Any]:
    """Parity, size and onnxruntime latency (one thread) of ``model``'s ONNX export (with
    ``quantize="int8"``: onnxruntime's int8 quantization of it)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = export_onnx(model, Path(tmp) / "onnx", quantize=quantize)
        path = Path(tmp) / "onnx" / "model.onnx"
        session = onnx_session(path, threads=1)
        pad = int(model.preprocessor.spec().get("pad_id", 0))

        def run(batch: torch.Tensor) -> Any:
            return session.run(["logits"], onnx_feeds(model.kind, batch, pad))

        diff = report.quantized_max_abs_diff if quantize else report.max_abs_diff
        prob = report.quantized_max_prob_diff if quantize else report.max_prob_diff
        return {"max_abs_diff": diff, "max_prob_diff": prob,
                "export_seconds": report.export_seconds, "bytes": path.stat().st_size,
                "ms_batch1": round(1e3 * median_latency(run, batch_of(x, 1), repeats), 3),
                "ms_batch32": round(1e3 * median_latency(run, batch_of(x, 32), repeats), 3)}


def with_data_root(recipe: Recipe, data_root: str | None) -> Recipe:
    """``recipe`` reading its data from ``data_root/<name of its data_root>`` (or
    ``data_root`` itself) when its own path does not exist here."""
    if data_root is None or recipe.data_root is None or Path(recipe.data_root).exists():
        return recipe
    nested = Path(data_root) / Path(recipe.data_root).name
    return recipe.model_copy(update={"data_root": str(nested if nested.exists() else data_root)})


def timings(adapter: Adapter, task: Episode, sparsities: list[float], repeats: int
            ) -> dict[str, Any]:
    """Size and latency of each variant adapted to ``task``, and its ONNX export."""
    names = [str(i) for i in range(int(task.support_y.max()) + 1)]
    model = adapter.adapt_tensors(task.support_x, task.support_y, names)
    models = {"float": model, **{n: make(model)
                                 for n, make in variants(model.kind, sparsities).items()}}
    return {"variants": {n: measure(m, task.query_x, repeats) for n, m in models.items()},
            "onnx": onnx_figures(model, task.query_x, repeats),
            "onnx_int8": onnx_figures(model, task.query_x, repeats, quantize="int8")}


def bench_run(run: str, episodes: int, sparsities: list[float], repeats: int,
              data_root: str | None = None) -> dict[str, Any]:
    adapter = Adapter.from_run(run)
    recipe = with_data_root(adapter.recipe, data_root)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no Linear layer" on ProtoNet's conv4
        scores = episode_accuracies(adapter, variants(adapter.kind, sparsities), episodes,
                                    recipe)
    seconds = time.perf_counter() - start
    status = RunDir(run).status()
    result = {"run": run, "algorithm": recipe.algorithm, "model": recipe.model,
              "adapt": recipe.adapt, "ways": recipe.eval_ways, "shots": recipe.eval_shots,
              "queries": recipe.eval_queries, "episodes": episodes,
              "iterations": status.get("iteration"), "best_val": status.get("best_score"),
              "train_seconds": status.get("train_seconds"), "seconds": round(seconds, 1),
              "variants": summarise(scores)}
    task = split_sampler(recipe, "test").sample(episodes)[-1]
    return retime(result, adapter, task, sparsities, repeats)


def retime(result: dict[str, Any], adapter: Adapter, task: Episode, sparsities: list[float],
           repeats: int) -> dict[str, Any]:
    """``result`` with the sizes and latencies of :func:`timings` (measured apart from the
    accuracy loop, so that they can be redone alone on a quiet machine)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figures = timings(adapter, task, sparsities, repeats)
    for name, row in result["variants"].items():
        row.update(figures["variants"].get(name, {}))
    result["onnx"], result["onnx_int8"] = figures["onnx"], figures["onnx_int8"]
    return result


def table(results: list[dict[str, Any]], command: str) -> str:
    lines = [f"Machine: {machine()} (benchmark run with 1 thread). Command: `{command}`.", ""]
    lines += ["| run | episodes | variant | accuracy (95% CI) | change vs float (paired) | "
              "size | gzip | ms, batch 1 | ms, batch 32 |", "|---" * 9 + "|"]
    for r in results:
        label = (f"{r['algorithm']} {r['model']}" + (f" ({r['adapt']})" if r["model"] == "text"
                 else "") + f", {r['ways']}w{r['shots']}s")
        for name, v in r["variants"].items():
            size = (f"{v['bytes'] / 1e6:.2f} MB | {v['gzip_bytes'] / 1e6:.2f} MB | "
                    f"{v['ms_batch1']:.2f} | {v['ms_batch32']:.1f}") if "bytes" in v else \
                "- | - | - | -"
            lines.append(f"| {label} | {r['episodes']} | {name} | {100 * v['accuracy']:.2f} ± "
                         f"{100 * v['ci95']:.2f} | {100 * v['delta']:+.2f} ± "
                         f"{100 * v['delta_ci95']:.2f} | {size} |")
        for key, name in (("onnx", "ONNX float"), ("onnx_int8", "ONNX int8")):
            o = r[key]
            lines.append(f"| {label} | - | {name} (onnxruntime) | max abs logit diff from "
                         f"PyTorch float {o['max_abs_diff']:.2g} (probabilities "
                         f"{o['max_prob_diff']:.2g}) | - | {o['bytes'] / 1e6:.2f} MB | - | "
                         f"{o['ms_batch1']:.2f} | {o['ms_batch32']:.1f} |")
    lines += ["", "Runs (trained with `metafit train`, best-validation checkpoint):"]
    for r in results:
        lines.append(f"- `{r['run']}`: {r['algorithm']}, {r['iterations']} iterations, best "
                     f"validation accuracy {r['best_val']:.3f}, {r['train_seconds']} s of "
                     f"training; this benchmark: {r['seconds']} s for {r['episodes']} episodes")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument("--data-root", help="where the runs' data are when their recorded "
                        "data_root does not exist here (DIR/omniglot, DIR/banking77, or DIR)")
    parser.add_argument("--episodes", type=int, nargs="+", default=[300],
                        help="test episodes per run (one value, or one per run)")
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--repeats", type=int, default=20, help="latency repeats")
    parser.add_argument("--out", default="runs/bench_deploy")
    add_output_options(parser)
    parser.add_argument("--no-results", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument("--retime", action="store_true", help="measure sizes and latencies "
                        "again for runs whose accuracies are stored in --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    episodes = args.episodes * len(args.runs) if len(args.episodes) == 1 else args.episodes
    results = []
    for run, n in zip(args.runs, episodes, strict=True):
        file = Path(args.out) / f"{Path(run).name}.json"
        if file.is_file():  # finished earlier: read back (and time again if asked)
            result = json.loads(file.read_text())
            if args.retime:
                adapter = Adapter.from_run(run)
                task = split_sampler(with_data_root(adapter.recipe, args.data_root),
                                     "test").sample(result["episodes"])[-1]
                result = retime(result, adapter, task, args.sparsity, args.repeats)
                file.write_text(json.dumps(result, indent=1))
            results.append(result)
            continue
        result = bench_run(run, n, args.sparsity, args.repeats, args.data_root)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(result, indent=1))
        results.append(result)
        print(f"{run}: done in {result['seconds']} s", file=sys.stderr)
    command = "python benchmarks/deploy.py " + " ".join(sys.argv[1:] if argv is None else argv)
    write_rows(results_dir(args.results_dir), "deploy.json", results)
    text = table(results, command)
    print(text)
    if not args.no_results:
        write_block(Path(args.results), "deploy", "Deployment: compression and ONNX export "
                    "(`benchmarks/deploy.py`)", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
