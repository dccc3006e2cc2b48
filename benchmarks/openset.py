"""Open-set ("none of these") benchmark: reject scores on two protocols (issue 27).

    python benchmarks/openset.py banking77 --data-root ../shared/data/banking77 --k 5 --seeds 0 1 2
    python benchmarks/openset.py omniglot --data-root ../shared/data/omniglot --budget 150

**BANKING77.** For each seed ``s``, ``random.Random(s)`` holds out 25 of the 77 intents
(a third, rounded down) as out-of-scope traffic; the other 52 are in scope. K sentences of
each in-scope intent are drawn from ``train.csv`` (``common.k_shot_pool`` with seed ``s``), and only
these ``52 * K`` sentences are used for meta-training and adaptation (the held-out
intents are never seen). Two encoders per seed:

* ``recipe``: ``banking77_kshot_protonet`` (cosine ProtoNet on the whole all-MiniLM-L6-v2
  encoder, 15 steps of 52-way episodes, then the logistic head on the pool), trained by
  the library's ``Trainer``;
* ``oe``: the same encoder meta-trained with outlier exposure on episodes containing
  out-of-scope queries: each step draws ``--oe-ways`` of the 52 pool intents as the
  episode's classes (K // 2 shots, the rest queries) and K // 2 + 1 sentences of every
  other pool intent as out-of-scope queries, and minimises the query cross-entropy plus
  ``--oe-weight`` times the cross-entropy of the out-of-scope queries' prototype logits to
  the uniform distribution (Hendrycks et al. 2019, "Deep Anomaly Detection with Outlier
  Exposure"; in episodes as in PEELER, Liu et al. 2020); same steps, rate and head.

In-scope traffic: the test.csv rows of the 52 intents; out-of-scope: the rows of the 25
held-out intents. Means and 95% CIs (Student t) over seeds.

**Omniglot.** A conv4 ProtoNet (``omniglot_5w5s_protonet``, 60-way episodes, one thread)
is meta-trained for ``--budget`` seconds on the training alphabets (``alphabet`` split
scheme), and an outlier-exposure twin (60-way episodes plus 5 queries from each of 20
other training characters) for the same budget. Test: ``--episodes`` fixed 5-way 5-shot
episodes of test-alphabet characters (15 queries each) plus 75 out-of-scope queries, 15
drawings of each of 5 characters of the unseen (test and validation) alphabets that are
not among the episode's characters (no rotation of an episode's character either).
Means and 95% CIs (1.96 s / sqrt(n)) over episodes.

**Metrics**, for every reject score (:mod:`metafit.evaluation.openset`, and the
candidates below): in-scope accuracy (closed set), AUROC, false accepts at 95% in-scope
recall (the threshold set on the test traffic: an oracle), and out-of-scope recall /
in-scope recall at the threshold a deployment would fit without test data: each
cross-validation fold of the support set (``evaluation.calibration.support_folds``) is
held out, the head is fitted on the rest and the held-out examples are scored; the
threshold keeps 95% of these held-out in-scope scores. The calibrated temperature of
``max_prob`` / ``energy`` is fitted on the same held-out logits
(``evaluation.calibration.fit_temperature``), as ``metafit adapt`` does.

Rows are appended to ``openset_banking77.jsonl`` / ``openset_omniglot.jsonl`` (one line
per seed or per episode batch) in ``--results-dir``; the tables go to ``--results``
between ``<!-- openset_banking77:start/end -->`` and ``<!-- openset_omniglot:start/end -->``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from common import add_output_options, cpu_only, k_shot_pool, results_dir, write_block
from torch import Tensor

from metafit.algorithms.heads import fit_logistic_head, logistic_logits
from metafit.algorithms.protonet import class_prototypes, prototype_logits
from metafit.evaluation.calibration import fit_temperature, support_folds
from metafit.evaluation.openset import (
    auroc,
    false_accepts_at_recall,
    reject_scores,
    threshold_for_recall,
)
from metafit.io import atomic_write_text

RECALL = 0.95
#: BANKING77 encoders: the recipe's meta-trained one, its outlier-exposure twin, and the
#: pretrained all-MiniLM-L6-v2 (not meta-trained)
ENCODERS = ("recipe", "oe", "pretrained")
#: (row name, method, temperature: "1" or "cal"); methods of evaluation.openset
SCORES: list[tuple[str, str, str]] = [
    ("max_prob T=1", "max_prob", "1"), ("max_prob calibrated", "max_prob", "cal"),
    ("max_logit", "max_logit", "1"), ("energy T=1", "energy", "1"),
    ("energy calibrated", "energy", "cal"), ("prototype", "prototype", "1"),
    ("nearest", "nearest", "1")]
# Student t quantiles (97.5%) by degrees of freedom, for CIs over a few seeds
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}

Head = Callable[[Tensor, Tensor], Callable[[Tensor], Tensor]]


# -- candidate scores not (yet) in the library ----------------------------------------------
def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.double(), dim=-1)


def knn_score(features: Tensor, support: Tensor, k: int) -> Tensor:
    """Mean cosine to the ``k`` nearest support examples ``[M]``."""
    sims = _unit(features) @ _unit(support).T  # [M, S]
    return sims.topk(min(k, sims.shape[1]), dim=-1).values.mean(-1)


def _shrunk(cov: Tensor, shrink: float) -> Tensor:
    """A covariance ``[F, F]`` shrunk towards ``tr/F * I`` by ``shrink``."""
    dim = cov.shape[0]
    return (1 - shrink) * cov + shrink * torch.trace(cov) / dim * torch.eye(dim, dtype=cov.dtype)


def mahalanobis_score(features: Tensor, support: Tensor, labels: Tensor, shrink: float,
                      relative: bool = False) -> Tensor:
    """Minus the smallest Mahalanobis distance ``[M]`` to a class mean of the normalised
    support features, shared covariance shrunk towards ``tr/F * I`` (Lee et al. 2018; the
    relative form subtracts the distance to one Gaussian of all support, Ren et al. 2021)."""
    f, s = _unit(features), _unit(support)
    n = int(labels.max()) + 1
    means = class_prototypes(s, labels.long(), n)  # [N, F]
    centred = s - means[labels.long()]
    prec = torch.linalg.inv(_shrunk(centred.T @ centred / max(1, len(s) - n), shrink))
    diff = f[:, None, :] - means[None]  # [M, N, F]
    d = torch.einsum("mnf,fg,mng->mn", diff, prec, diff).amin(-1)  # [M]
    if relative:
        mu = s.mean(0)
        c0 = _shrunk((s - mu).T @ (s - mu) / max(1, len(s) - 1), shrink)
        g = f - mu
        d = d - torch.einsum("mf,fg,mg->m", g, torch.linalg.inv(c0), g)
    return -d


def all_scores(logits: Tensor, temperature: float, features: Tensor, support: Tensor,
               labels: Tensor) -> dict[str, Tensor]:
    """Every score's values ``[M]`` for inputs with ``logits [M, N]``, ``features [M, F]``
    against the support set ``support [S, F]``, ``labels [S]``."""
    out = {}
    for name, method, temp in SCORES:
        out[name] = reject_scores(method, logits, temperature if temp == "cal" else 1.0,
                                  features, support, labels)
    shots = max(1, len(labels) // (int(labels.max()) + 1))
    out["knn (k = shots)"] = knn_score(features, support, shots)
    out["mahalanobis"] = mahalanobis_score(features, support, labels, 0.5)
    out["relative mahalanobis"] = mahalanobis_score(features, support, labels, 0.5, True)
    p = torch.softmax(logits.double() / temperature, -1).amax(-1)
    out["max_prob calibrated x prototype"] = p * reject_scores(
        "prototype", logits, 1.0, features, support, labels).double().clamp_min(0)
    return out


# -- one task: support features, in-scope and out-of-scope test features ----------------------
def logistic_head(support: Tensor, labels: Tensor) -> Callable[[Tensor], Tensor]:
    """The recipe's classifier: logistic regression on normalised features (penalty 1e-4)."""
    w, b = fit_logistic_head(support.float(), labels.long(), int(labels.max()) + 1, 1e-4)
    return lambda f: logistic_logits(f.float(), w, b)


def prototype_head(distance: str, scale: float) -> Head:
    def fit(support: Tensor, labels: Tensor) -> Callable[[Tensor], Tensor]:
        protos = class_prototypes(support.float(), labels.long(), int(labels.max()) + 1)
        return lambda f: prototype_logits(f.float(), protos, distance, scale)
    return fit


def evaluate_task(head: Head, support: Tensor, labels: Tensor, in_f: Tensor, in_y: Tensor,
                  out_f: Tensor) -> dict[str, dict[str, float]]:
    """Every score's metrics on one task: ``support [S, F]``, ``labels [S]``, in-scope test
    ``in_f [P, F]`` with labels ``in_y [P]`` and out-of-scope ``out_f [Q, F]``."""
    folds = support_folds(labels, 10)
    held_logits, held_labels, held_scores = [], [], []
    fold_parts = []
    for fold in folds:
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[fold] = False
        classify = head(support[keep], labels[keep])
        fold_parts.append((classify(support[fold]), support[fold], support[keep], labels[keep]))
        held_logits.append(fold_parts[-1][0])
        held_labels.append(labels[fold])
    temperature = fit_temperature(torch.cat(held_logits).double(), torch.cat(held_labels))
    for logits, f, s, y in fold_parts:
        held_scores.append(all_scores(logits, temperature, f, s, y))
    classify = head(support, labels)
    in_logits, out_logits = classify(in_f), classify(out_f)
    accuracy = float((in_logits.argmax(-1) == in_y).double().mean())
    s_in = all_scores(in_logits, temperature, in_f, support, labels)
    s_out = all_scores(out_logits, temperature, out_f, support, labels)
    result = {}
    for name in s_in:
        fitted = threshold_for_recall(torch.cat([h[name] for h in held_scores]), RECALL)
        result[name] = {
            "accuracy": accuracy, "auroc": auroc(s_in[name], s_out[name]),
            "fa95": false_accepts_at_recall(s_in[name], s_out[name], RECALL),
            "oos_recall": float((s_out[name].double() < fitted).double().mean()),
            "in_recall": float((s_in[name].double() >= fitted).double().mean()),
            "temperature": temperature}
    return result


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` as the JSON lines of ``path`` (replaced; the folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# -- BANKING77 ----------------------------------------------------------------------------
def held_out_intents(train_csv: Path, seed: int) -> tuple[list[str], list[str]]:
    """(in-scope, held-out) intents: a third held out, ``random.Random(seed)``."""
    with train_csv.open(encoding="utf-8") as f:
        labels = sorted({r["category"] for r in csv.DictReader(f)})
    held = sorted(random.Random(seed).sample(labels, len(labels) // 3))
    return [c for c in labels if c not in held], held


def filtered_csv(source: Path, keep: set[str], out: Path) -> Path:
    """The rows of ``source`` whose category is in ``keep``, written as ``out``."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "category"])
    with source.open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if r["category"] in keep:
                writer.writerow([r["text"], r["category"]])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())
    return out


def oe_meta_train(body: torch.nn.Module, tokens: Tensor, targets: Tensor, ways: int,
                  shots: int, queries: int, oos_classes: int, oos_per_class: int,
                  weight: float, steps: int, lr: float, scale: float, distance: str,
                  seed: int, batch: int = 1) -> list[float]:
    """Meta-train ``body`` on episodes with out-of-scope queries and the outlier-exposure
    term; returns the losses. ``tokens [S, *x]``, ``targets [S]`` the pool."""
    g = torch.Generator().manual_seed(seed)
    classes = int(targets.max()) + 1
    by_class = [torch.nonzero(targets == c).flatten() for c in range(classes)]
    opt = torch.optim.Adam(body.parameters(), lr=lr)
    body.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        for _ in range(batch):
            perm = torch.randperm(classes, generator=g)
            inside, outside = perm[:ways], perm[ways:ways + oos_classes]
            s_idx, q_idx, o_idx, s_y, q_y = [], [], [], [], []
            for j, c in enumerate(inside.tolist()):
                ex = by_class[c][torch.randperm(len(by_class[c]), generator=g)]
                s_idx.append(ex[:shots])
                q_idx.append(ex[shots:shots + queries])
                s_y += [j] * shots
                q_y += [j] * len(q_idx[-1])
            for c in outside.tolist():
                ex = by_class[c][torch.randperm(len(by_class[c]), generator=g)]
                o_idx.append(ex[:oos_per_class])
            fs = body(tokens[torch.cat(s_idx)]).flatten(1)
            fq = body(tokens[torch.cat(q_idx + o_idx)]).flatten(1)
            protos = class_prototypes(fs, torch.tensor(s_y), ways)
            logits = prototype_logits(fq, protos, distance, scale)
            n_in = len(q_y)
            loss = F.cross_entropy(logits[:n_in], torch.tensor(q_y))
            if n_in < len(logits) and weight > 0:
                oos = logits[n_in:]
                loss = loss + weight * (torch.logsumexp(oos, -1) - oos.mean(-1)).mean()
            (loss / batch).backward()
            losses.append(float(loss.detach()))
        opt.step()
    body.eval()
    return losses


def _body(algo: torch.nn.Module) -> torch.nn.Module:
    """An algorithm's embedding, ``algo.model.body``."""
    return cast(torch.nn.Module, algo.model.body)  # type: ignore[union-attr]


def _embed(body: torch.nn.Module, tokens: Tensor) -> Tensor:
    """``[M, F]`` embeddings of ``tokens [M, L]`` (batches sorted by length)."""
    from metafit.evaluation.test_set import predict

    body.eval()
    return predict(cast(Any, body), tokens, 128, getattr(body, "pad_id", None)).double()


@dataclass
class Seed:
    """One BANKING77 seed's split: the recipe run trained on the K-shot pool of the
    in-scope intents, and the tokenised pool and test traffic."""

    recipe: Any
    algo: torch.nn.Module
    support: Any
    test_in: Any
    test_out: Any
    train_seconds: float
    inside: list[str]


def banking77_seed(root: Path, work: Path, k: int, seed: int, threads: int) -> Seed:
    """Hold out a third of the intents (``seed``), draw the K-shot pool of the others,
    train ``banking77_kshot_protonet`` on it in ``work/recipe`` (kept: a finished run is
    reused) and tokenise the pool and the in-scope / out-of-scope test traffic."""
    from metafit.config.recipe import load_recipe
    from metafit.data.text_csv import TextCSV
    from metafit.runs.trained import load_trained
    from metafit.training.trainer import Trainer

    inside, held = held_out_intents(root / "train.csv", seed)
    train_in = filtered_csv(root / "train.csv", set(inside), work / "train_in.csv")
    pool = k_shot_pool(train_in, k, seed, work / "pool.csv")
    shots = max(1, k // 2)
    overrides = {"data_root": str(pool), "ways": len(inside), "test_ways": len(inside),
                 "shots": shots, "queries": k - shots, "test_shots": shots,
                 "test_queries": k - shots, "threads": threads, "seed": 0}
    run = work / "recipe"
    if not (run / "checkpoints" / "best.pt").is_file():
        Trainer(load_recipe("banking77_kshot_protonet", overrides), run, progress=False).fit()
    records = (run / "metrics.jsonl").read_text().splitlines()
    seconds = float(json.loads(records[-1]).get("seconds", 0.0))
    recipe, algo = load_trained(run)
    support = TextCSV(pool).tokenize(recipe.text_model, recipe.max_length)
    test_in = TextCSV(filtered_csv(root / "test.csv", set(inside), work / "test_in.csv"),
                      classes=support.classes).tokenize(recipe.text_model, recipe.max_length)
    test_out = TextCSV(filtered_csv(root / "test.csv", set(held), work / "test_out.csv")
                       ).tokenize(recipe.text_model, recipe.max_length)
    assert support.tokens is not None and test_in.tokens is not None
    assert test_out.tokens is not None
    return Seed(recipe, algo, support, test_in, test_out, seconds, inside)


def banking77(args: argparse.Namespace) -> list[dict[str, Any]]:
    from metafit.algorithms.from_recipe import build_algorithm

    torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    out_rows = results_dir(args.results_dir) / "openset_banking77.jsonl"
    rows: list[dict[str, Any]] = []
    for k in args.k:
        for seed in args.seeds:
            work = Path(args.out) / "banking77" / f"k{k}_seed{seed}"
            done = work / "openset.json"
            seed_rows = json.loads(done.read_text()) if done.is_file() else []
            missing = [e for e in ENCODERS if e not in {r["encoder"] for r in seed_rows}]
            if not missing:
                rows += seed_rows
                continue
            data = banking77_seed(root, work, k, seed, args.threads)
            recipe, algo, support = data.recipe, data.algo, data.support
            test_in, test_out, inside = data.test_in, data.test_out, data.inside
            shots = recipe.shots  # banking77_seed's K // 2: the run's recipe holds it
            train_s = {"recipe": data.train_seconds}
            encoders: dict[str, torch.nn.Module] = {"recipe": _body(algo)}
            # the pretrained encoder, not meta-trained (the recipe run's initial encoder)
            encoders["pretrained"] = _body(build_algorithm(recipe))
            train_s["pretrained"] = 0.0
            losses = [float("nan")]
            if "oe" in missing:  # the outlier-exposure twin, from the same initial encoder
                oe_algo = build_algorithm(recipe)
                t0 = time.perf_counter()
                losses = oe_meta_train(_body(oe_algo), support.tokens, support.targets,
                                       args.oe_ways, shots, recipe.queries, len(inside),
                                       shots + 1, args.oe_weight, recipe.iterations,
                                       recipe.outer_lr, recipe.distance_scale,
                                       recipe.distance, seed)
                train_s["oe"] = time.perf_counter() - t0
                encoders["oe"] = _body(oe_algo)
            for name in missing:
                body = encoders[name]
                with torch.no_grad():
                    fs = _embed(body, support.tokens)
                    fi = _embed(body, test_in.tokens)
                    fo = _embed(body, test_out.tokens)
                metrics = evaluate_task(logistic_head, fs, support.targets, fi,
                                        test_in.targets, fo)
                for score, m in metrics.items():
                    row = {"protocol": "banking77", "k": k, "seed": seed, "encoder": name,
                           "score": score, **m, "in_scope": len(fi), "out_of_scope": len(fo),
                           "train_seconds": round(train_s[name], 1)}
                    if name == "oe":
                        row.update(oe_weight=args.oe_weight, oe_ways=args.oe_ways,
                                   oe_last_loss=losses[-1])
                    seed_rows.append(row)
                print(json.dumps({"k": k, "seed": seed, "encoder": name, **{
                    s: round(m["fa95"], 4) for s, m in metrics.items()}}), flush=True)
            done.write_text(json.dumps(seed_rows, indent=1))
            rows += seed_rows
    write_jsonl(out_rows, rows)
    return rows


# -- Omniglot -----------------------------------------------------------------------------
def _base(name: str) -> str:
    return "/".join(name.split("/")[:2])


def omniglot(args: argparse.Namespace) -> list[dict[str, Any]]:
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.config.recipe import load_recipe
    from metafit.data.omniglot import Omniglot
    from metafit.runs.trained import load_trained
    from metafit.training.trainer import Trainer

    torch.set_num_threads(args.threads)
    work = Path(args.out) / "omniglot"
    out_rows = results_dir(args.results_dir) / "openset_omniglot.jsonl"
    overrides = {"data_root": args.data_root, "threads": 1, "seed": 0, "time_budget":
                 args.budget, "iterations": 100000, "val_every": 200, "val_episodes": 100}
    done = work / f"openset_{args.episodes}ep_seed{args.episode_seed}.json"
    if done.is_file():
        return list(json.loads(done.read_text()))
    run = work / "recipe"
    if not (run / "checkpoints" / "best.pt").is_file():
        Trainer(load_recipe("omniglot_5w5s_protonet", overrides), run, progress=False).fit()
    recipe, algo = load_trained(run)
    bodies: dict[str, torch.nn.Module] = {"recipe": _body(algo)}
    oe_path = work / "oe_body.pt"
    oe_algo = build_algorithm(recipe)  # seeded: the recipe run's initial encoder
    if oe_path.is_file():
        _body(oe_algo).load_state_dict(torch.load(oe_path))
    else:
        train = Omniglot(args.data_root, split="train")
        x = train.gather(torch.arange(len(train)))
        y = torch.repeat_interleave(torch.arange(len(train.classes)), train.counts)
        t0 = time.perf_counter()
        steps, step_s = 0, 0.0
        while time.perf_counter() - t0 + step_s < args.budget:
            s0 = time.perf_counter()
            oe_meta_train(_body(oe_algo), x, y, recipe.ways, recipe.shots, recipe.queries,
                          20, recipe.queries, args.oe_weight, 10, recipe.outer_lr, 1.0,
                          recipe.distance, 1000 + steps)
            steps += 10
            step_s = time.perf_counter() - s0
        torch.save(_body(oe_algo).state_dict(), oe_path)
        print(f"omniglot OE: {steps} steps", flush=True)
    bodies["oe"] = _body(oe_algo)
    test = Omniglot(args.data_root, split="test")
    val = Omniglot(args.data_root, split="val")
    pools = [(test, c) for c in range(len(test.classes))] + [
        (val, c) for c in range(len(val.classes))]
    g = torch.Generator().manual_seed(args.episode_seed)
    ways, shots, queries = 5, 5, 15
    sums: dict[tuple[str, str], dict[str, list[float]]] = {}
    head = prototype_head(recipe.distance, recipe.distance_scale)
    for _ in range(args.episodes):
        chosen = torch.randperm(len(test.classes), generator=g)[:ways].tolist()
        bases = {_base(test.classes[c]) for c in chosen}
        others = [p for p in pools if _base(p[0].classes[p[1]]) not in bases]
        oos = [others[i] for i in torch.randperm(len(others), generator=g)[:ways].tolist()]

        def draw(ds: Any, c: int, n: int) -> Tensor:
            idx = int(ds.offsets[c]) + torch.randperm(int(ds.counts[c]), generator=g)[:n]
            return ds.gather(idx)
        sx, qx, sy, qy = [], [], [], []
        for j, c in enumerate(chosen):
            ex = draw(test, c, shots + queries)
            sx.append(ex[:shots])
            qx.append(ex[shots:])
            sy += [j] * shots
            qy += [j] * queries
        ox = torch.cat([draw(ds, c, queries) for ds, c in oos])
        for name, body in bodies.items():
            with torch.no_grad():
                fs = body(torch.cat(sx)).flatten(1).double()
                fq = body(torch.cat(qx + [ox])).flatten(1).double()
            n_in = len(qy)
            metrics = evaluate_task(head, fs, torch.tensor(sy), fq[:n_in], torch.tensor(qy),
                                    fq[n_in:])
            for score, m in metrics.items():
                bucket = sums.setdefault((name, score), {})
                for key, v in m.items():
                    bucket.setdefault(key, []).append(v)
    rows = []
    for (name, score), bucket in sums.items():
        row: dict[str, Any] = {"protocol": "omniglot", "encoder": name, "score": score,
                               "episodes": args.episodes, "budget": args.budget}
        for key, values in bucket.items():
            t = torch.tensor(values, dtype=torch.float64)
            row[key] = float(t.mean())
            row[key + "_ci95"] = float(1.96 * t.std() / math.sqrt(len(t)))
        rows.append(row)
    write_jsonl(out_rows, rows)
    done.write_text(json.dumps(rows, indent=1))
    return rows


# -- tables -------------------------------------------------------------------------------
def _pct(mean: float, ci: float) -> str:
    return f"{100 * mean:.1f} ± {100 * ci:.1f}"


def _seed_stats(values: list[float]) -> tuple[float, float]:
    mean = statistics.mean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(
        len(values))


KEYS = ("accuracy", "auroc", "fa95", "oos_recall", "in_recall")
HEADER = ("| encoder | score | in-scope accuracy | AUROC | false accepts @95% recall | "
          "OOS recall (support-fitted t) | in-scope recall (support-fitted t) |\n"
          "|---|---|---|---|---|---|---|")


def table_banking77(rows: list[dict[str, Any]]) -> str:
    """One table per K: mean ± 95% CI over seeds, and the paired difference of false
    accepts from the baseline (the recipe encoder's ``max_prob T=1``) seed by seed."""
    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["k"], r["encoder"], r["score"]), []).append(r)
    lines = [f"Machine: {cpu_only()}. Command: `python benchmarks/openset.py "
             f"{' '.join(sys.argv[1:])}`. Mean ± 95% CI (Student t) over seeds (held-out "
             "intent split and K-shot pool); the split moves every score together, so the "
             "last column pairs each seed with the baseline (recipe encoder, max_prob T=1)."]
    for k in sorted({key[0] for key in groups}):
        base = {r["seed"]: r["fa95"] for r in groups[(k, "recipe", "max_prob T=1")]}
        lines += ["", f"K = {k} sentences per in-scope intent (52 in scope, 25 held out):", "",
                  HEADER.replace(" |\n|---", " | false accepts - baseline (paired) |\n|---|---")]
        for (kk, enc, score), rs in groups.items():
            if kk != k:
                continue
            cells = [_pct(*_seed_stats([r[key] for r in rs])) for key in KEYS]
            cells.append(_pct(*_seed_stats([r["fa95"] - base[r["seed"]] for r in rs])))
            lines.append(f"| {enc} | {score} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_omniglot(rows: list[dict[str, Any]]) -> str:
    lines = [f"Machine: {cpu_only()}. Command: `python benchmarks/openset.py "
             f"{' '.join(sys.argv[1:])}`. Mean ± 95% CI over episodes.", "", HEADER]
    for r in rows:
        cells = [_pct(r[key], r[key + "_ci95"]) for key in KEYS]
        lines.append(f"| {r['encoder']} | {r['score']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("protocol", choices=["banking77", "omniglot"])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", default="runs/openset", help="run directories")
    parser.add_argument("--k", nargs="+", type=int, default=[5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--oe-weight", type=float, default=0.5,
                        help="weight of the outlier-exposure term")
    parser.add_argument("--oe-ways", type=int, default=34,
                        help="BANKING77: in-scope classes of an OE episode (the other pool "
                             "intents give its out-of-scope queries)")
    parser.add_argument("--budget", type=float, default=150.0,
                        help="Omniglot: seconds of meta-training per encoder")
    parser.add_argument("--episodes", type=int, default=300, help="Omniglot test episodes")
    parser.add_argument("--episode-seed", type=int, default=0)
    add_output_options(parser)
    args = parser.parse_args()
    if args.protocol == "banking77":
        rows = banking77(args)
        write_block(Path(args.results), "openset_banking77", "None of these (open set)",
                    table_banking77(rows))
    else:
        rows = omniglot(args)
        write_block(Path(args.results), "openset_omniglot", "None of these (open set)",
                    table_omniglot(rows))


if __name__ == "__main__":
    main()
