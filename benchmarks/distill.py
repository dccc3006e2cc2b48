"""Distillation against the adapted teacher, int8 and pruning, on BANKING77's test set
(the deploy table's distillation rows).

    python benchmarks/distill.py --data-root ../shared/data/banking77 \\
        --students layers:3 layers:0,2,4 layers:2 --steps 400 --shots 10

The teacher is the packaged all-MiniLM-L6-v2 (6 layers) with the recipe
``banking77_probe``'s logistic probe, adapted (``Adapter.adapt``, as ``metafit adapt``) to
``--shots`` sentences per intent of train.csv for all 77 intents (``common.k_shot_pool``,
seed ``--seed``). The unlabelled inputs are the other train.csv sentences of those intents
(``common.development_set``; never test.csv); their teacher logits are computed once and
every student is distilled on them (:func:`metafit.deploy.distill.distill`, the code of
``metafit compress --distill``). Every model scores all of test.csv: accuracy with a 95%
CI over the sentences, the paired change against the teacher (mean of the per-sentence
differences, with its CI), and agreement with the teacher's predictions. int8 (the
deploy table's quantization) and 30% magnitude pruning of the teacher, and int8 with the
token table of every student, are scored the same way. The teacher's soft labels are
cached in ``--work`` (a second run with other student settings reuses them).

Size is the saved state dict; latency is measured *side by side* after everything else:
``--repeats`` rounds, each timing one forward pass of every model in turn at batch 1 and
batch 32 (test sentences, cycled; one thread), so a loaded machine slows all models alike;
the medians are reported, and the ratio to the teacher's.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    add_output_options,
    development_set,
    k_shot_pool,
    load_average,
    machine,
    publish,
)

from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import load_recipe
from metafit.deploy import AdaptedModel, Adapter
from metafit.deploy.compress import batch_of, prune, quantize, state_size
from metafit.deploy.distill import DistillSettings, distill
from metafit.deploy.vocabulary import trim_vocabulary, unseen_share
from metafit.models.base import count_parameters


def read_rows(path: Path) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def scores(model: AdaptedModel, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor,
                                                                                torch.Tensor]:
    """Predictions ``[M]`` and per-sentence correctness ``[M]`` (float)."""
    predicted = model.logits(x, batch=64).argmax(-1)
    return predicted, (predicted == labels).double()


def mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and 95% CI half-width (normal approximation) of ``values [M]``."""
    return float(values.mean()), 1.96 * float(values.std()) / math.sqrt(len(values))


def side_by_side(models: dict[str, AdaptedModel], x: torch.Tensor, repeats: int
                 ) -> dict[str, dict[str, float]]:
    """Median milliseconds of one forward pass of each model at batch 1 and 32, the models
    timed in turn within every round."""
    batches = {"ms_batch1": batch_of(x, 1), "ms_batch32": batch_of(x, 32)}
    times: dict[str, dict[str, list[float]]] = {n: {k: [] for k in batches} for n in models}
    with torch.no_grad():
        for model in models.values():  # warm-up
            for b in batches.values():
                model.logits(b)
        for _ in range(repeats):
            for name, model in models.items():
                for key, b in batches.items():
                    start = time.perf_counter()
                    model.logits(b)
                    times[name][key].append(time.perf_counter() - start)
    return {n: {k: round(1e3 * statistics.median(v), 3) for k, v in t.items()}
            for n, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder with train.csv, test.csv")
    parser.add_argument("--students", nargs="+", default=["layers:3", "layers:0,2,4",
                                                          "layers:2"])
    parser.add_argument("--shots", type=int, default=10, help="support sentences per intent")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--support-weight", type=float, default=0.0)
    parser.add_argument("--max-unlabelled", type=int, default=None,
                        help="use only the first N unlabelled sentences (default: all)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="score only the first N test sentences (a smoke run)")
    parser.add_argument("--students-only", action="store_true", help="no int8 and pruned "
                        "teacher rows (a second run with other student settings)")
    parser.add_argument("--trim-vocabulary", action="store_true", help="also every student "
                        "and the teacher with the token table trimmed to the unlabelled "
                        "sentences' tokens (metafit.deploy.vocabulary), float and int8")
    parser.add_argument("--repeats", type=int, default=15, help="latency rounds")
    parser.add_argument("--work", default="/tmp/bench_distill", help="scratch folder")
    parser.add_argument("--name", default="distill", help="the RESULTS.md block and the "
                        "rows file (NAME.json)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    start_all = time.perf_counter()
    load_before = load_average()
    root, work = Path(args.data_root), Path(args.work)
    pool = k_shot_pool(root / "train.csv", args.shots, args.seed, work / "support.csv")
    unlabelled = development_set(root / "train.csv", pool, work / "unlabelled.csv")
    support_texts, support_labels = read_rows(pool)
    texts = read_rows(unlabelled)[0][:args.max_unlabelled]
    test_texts, test_labels = read_rows(root / "test.csv")
    test_texts, test_labels = test_texts[:args.max_test], test_labels[:args.max_test]

    recipe = load_recipe("banking77_probe")
    teacher = Adapter(recipe, build_algorithm(recipe)).adapt(support_texts, support_labels)
    names = teacher.label_names
    y = torch.tensor([names.index(label) for label in test_labels])
    x_test = teacher.preprocess(test_texts)
    t0 = time.perf_counter()
    cache = work / f"teacher_logits_k{args.shots}_s{args.seed}_n{len(texts)}.pt"
    if cache.is_file():  # an earlier run's soft labels of the same sentences
        teacher_logits = torch.load(cache, weights_only=True)
    else:
        teacher_logits = teacher.logits(teacher.preprocess(texts), batch=64)
        torch.save(teacher_logits, cache)
    label_seconds = time.perf_counter() - t0
    print(f"teacher: {len(names)} intents, {len(support_texts)} support sentences; soft "
          f"labels of {len(texts)} unlabelled sentences in {label_seconds:.0f} s",
          file=sys.stderr)

    models: dict[str, AdaptedModel] = {"teacher (float)": teacher}
    if not args.students_only:
        models.update({"teacher int8": quantize(teacher),
                       "teacher pruned 30%": prune(teacher, 0.3)})
    reports: dict[str, dict[str, Any]] = {}
    for spec in args.students:
        settings = DistillSettings(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   temperature=args.temperature,
                                   support_weight=args.support_weight, seed=args.seed,
                                   max_inputs=max(len(texts), 10))
        student, report = distill(teacher, spec, texts, settings,
                                  teacher_logits=teacher_logits)
        models[f"student {spec}"] = student
        reports[f"student {spec}"] = report
        print(f"{spec}: {report['seconds']} s, held-out agreement {report['agreement']:.3f}",
              file=sys.stderr)
    floats = {name: model for name, model in models.items()}  # row -> its float model
    floats["teacher int8"] = teacher
    vocabulary: dict[str, dict[str, Any]] = {}
    for spec in args.students:
        name = f"student {spec}"
        models[f"{name} + int8+emb"] = quantize(models[name], embeddings=True)
        floats[f"{name} + int8+emb"] = models[name]
        if args.trim_vocabulary:
            trimmed, vocabulary[name] = trim_vocabulary(models[name], texts, seed=args.seed)
            models[f"{name} + trimmed"] = floats[f"{name} + trimmed"] = trimmed
            models[f"{name} + trimmed + int8+emb"] = quantize(trimmed, embeddings=True)
            floats[f"{name} + trimmed + int8+emb"] = trimmed
    if args.trim_vocabulary:
        trimmed, vocabulary["teacher"] = trim_vocabulary(teacher, texts, seed=args.seed)
        models["teacher + trimmed"] = floats["teacher + trimmed"] = trimmed
        report = vocabulary["teacher"]
        token_map = trimmed.module.body.token_map  # [V]
        unk = teacher.preprocessor.load().unk_token_id
        kept = torch.nonzero(token_map != token_map[unk]).flatten()  # tokenizer ids kept
        special = torch.tensor(teacher.preprocessor.load().all_special_ids)
        (report["test_unseen_token_share"],
         report["test_texts_with_unseen"]) = unseen_share(x_test, kept, special)
        print(f"trimmed token table: {report['kept']} of {report['tokenizer']} tokens; "
              f"{100 * report['test_unseen_token_share']:.2f}% of test.csv's tokens unseen "
              f"(in {100 * report['test_texts_with_unseen']:.1f}% of its sentences)",
              file=sys.stderr)

    base_pred, base_correct = scores(teacher, x_test, y)
    rows = []
    for name, model in models.items():
        pred, correct = scores(model, x_test, y)
        acc, ci = mean_ci(correct)
        delta, delta_ci = mean_ci(correct - base_correct)
        rows.append({"variant": name, "accuracy": acc, "ci95": ci, "delta": delta,
                     "delta_ci95": delta_ci,
                     "agreement": float((pred == base_pred).double().mean()),
                     "parameters": count_parameters(floats[name].module)[1],
                     "bytes": state_size(model.module)[0],
                     "distill": reports.get(name)})
    latency = side_by_side(models, x_test, args.repeats)
    for row in rows:
        row.update(latency[row["variant"]])
    result = {"shots": args.shots, "seed": args.seed, "intents": len(names),
              "unlabelled": len(texts), "test": len(test_texts), "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "temperature": args.temperature,
              "support_weight": args.support_weight, "label_seconds": round(label_seconds, 1),
              "seconds": round(time.perf_counter() - start_all, 1),
              "load_before": load_before, "load_after": load_average(), "rows": rows,
              "vocabulary": vocabulary.get("teacher")}
    command = "python benchmarks/distill.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(result, command)
    print(text)
    publish(args, args.name, "Deployment: distillation (`benchmarks/distill.py`)", text, result)
    return 0


def vocabulary_note(r: dict[str, Any]) -> str:
    """A sentence on the trimmed token table (empty without ``--trim-vocabulary``)."""
    v = r.get("vocabulary")
    if not v:
        return ""
    return (f" Trimmed rows: the token table cut to the {v['kept']:,} of {v['tokenizer']:,} "
            f"tokens used by the unlabelled sentences and the support set; "
            f"{100 * v['test_unseen_token_share']:.2f}% of test.csv's tokens (in "
            f"{100 * v['test_texts_with_unseen']:.1f}% of its sentences) are not among them "
            f"and read as [UNK] (estimated beforehand from a held-out tenth of the unlabelled "
            f"sentences: {100 * v['unseen_token_share']:.2f}% / "
            f"{100 * v['texts_with_unseen']:.1f}%).")


def table(r: dict[str, Any], command: str) -> str:
    teacher = r["rows"][0]
    lines = [f"Machine: {machine()}, shared with other jobs (load average {r['load_before']} "
             f"before, {r['load_after']} after; benchmark run with 1 thread). Command: "
             f"`{command}`. {r['intents']} intents, {r['shots']} support sentences each "
             f"(seed {r['seed']}); {r['unlabelled']} unlabelled train.csv sentences; "
             f"{r['test']} test.csv sentences; students: {r['steps']} steps of "
             f"{r['batch_size']}, lr {r['lr']:g}, T = {r['temperature']:g}, support weight "
             f"{r['support_weight']:g}. {r['seconds']:.0f} s in all.{vocabulary_note(r)}",
             "",
             "| variant | accuracy (95% CI) | change vs teacher (paired) | agrees with teacher "
             "| parameters | size | smaller | ms, batch 1 | ms, batch 32 | "
             "speed-up, batch 1 / 32 | distillation s |", "|---" * 11 + "|"]
    for v in r["rows"]:
        d = v.get("distill") or {}
        seconds = f"{d['seconds']:.0f}" if d else "-"
        lines.append(
            f"| {v['variant']} | {100 * v['accuracy']:.2f} ± {100 * v['ci95']:.2f} | "
            f"{100 * v['delta']:+.2f} ± {100 * v['delta_ci95']:.2f} | "
            f"{100 * v['agreement']:.1f}% | {v['parameters'] / 1e6:.1f} M | "
            f"{v['bytes'] / 1e6:.1f} MB | {teacher['bytes'] / v['bytes']:.1f}x | "
            f"{v['ms_batch1']:.1f} | {v['ms_batch32']:.0f} | "
            f"{teacher['ms_batch1'] / v['ms_batch1']:.2f}x / "
            f"{teacher['ms_batch32'] / v['ms_batch32']:.2f}x | {seconds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
