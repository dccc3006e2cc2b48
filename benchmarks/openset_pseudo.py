"""Reject scores learned from the support set alone: pseudo-outliers (issue 27).

    python benchmarks/openset_pseudo.py --data-root ../shared/data/banking77 --seeds 0 1 2 3 4 5

The split, K = 5 pool and test traffic are ``openset.py banking77``'s (52 intents in
scope, 25 held out as out-of-scope traffic); the encoder is all-MiniLM-L6-v2 as shipped
(``pretrained``: no training, so a seed takes seconds) and the classifier the recipe's
logistic head. Every score below sees one input and the support set only; they make
out-of-scope examples from the support set instead of waiting for traffic:

* ``max_prob T=1``: the baseline (the top softmax probability of the logistic head).
* ``mixup outliers (M, lo-hi)``: M synthetic out-of-scope features, each the normalised
  convex combination ``lam * u_i + (1 - lam) * u_j`` of two unit support features of
  *different* intents, ``lam ~ U(lo, hi)``, given to the head as a 53rd class; the score is
  minus that class's probability and the prediction the arg-max over the 52 intents
  (between-class pseudo outliers, Zhan et al. 2021, "Out-of-Scope Intent Detection with
  Self-Supervision and Discriminative Training", ACL).
* ``leave-classes-out stacking``: ``--rounds`` times, ``--drop`` intents are removed and
  one sentence of every other intent held out; a head fitted on the rest scores the held
  out sentences (pseudo in-scope) and the removed intents' sentences (pseudo out-of-scope,
  the same kind as the protocol's: neighbouring intents never seen). A logistic regression
  on seven per-input statistics (max probability, top-2 margin, max logit, cosine to the
  nearest prototype and to the nearest support sentence, negative entropy, cosine to the
  second prototype), standardised, learns to tell them apart and is applied to the test
  traffic with the head fitted on the whole support set (stacked generalisation,
  Wolpert 1992).

Metrics as in ``openset.py``: in-scope accuracy, AUROC, false accepts at 95% in-scope
recall (the threshold set on the test traffic), mean ± 95% CI (Student t) over seeds and
the paired change from ``max_prob T=1``. Rows go to ``openset_pseudo.jsonl`` in
``--results-dir``; the table to ``--results`` between ``<!-- openset_pseudo:start/end -->``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import add_output_options, cpu_only, k_shot_pool, results_dir, write_block
from openset import _body, _embed, _pct, _seed_stats, filtered_csv, held_out_intents, write_jsonl
from torch import Tensor

from metafit.algorithms.heads import fit_logistic_head, logistic_logits
from metafit.evaluation.openset import auroc, false_accepts_at_recall

RECALL = 0.95
Classifier = Callable[[Tensor], Tensor]


def _unit(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def head(features: Tensor, labels: Tensor, ways: int) -> Classifier:
    """The recipe's logistic head (penalty 1e-4) on ``features [S, F]``; logits ``[M, ways]``."""
    w, b = fit_logistic_head(features.float(), labels.long(), ways, 1e-4)
    return lambda x: logistic_logits(x.float(), w, b)


def mixup_outliers(support: Tensor, labels: Tensor, m: int, lo: float, hi: float,
                   gen: torch.Generator) -> Tensor:
    """``[m, F]`` unit convex combinations of two unit support features of different
    classes, weight ``U(lo, hi)``."""
    i = torch.randint(len(labels), (8 * m,), generator=gen)
    j = torch.randint(len(labels), (8 * m,), generator=gen)
    keep = labels[i] != labels[j]
    i, j = i[keep][:m], j[keep][:m]
    lam = lo + (hi - lo) * torch.rand(len(i), 1, generator=gen)
    return _unit(lam * _unit(support[i]) + (1 - lam) * _unit(support[j]))


def statistics_of(logits: Tensor, x: Tensor, support: Tensor, labels: Tensor,
                  ways: int) -> Tensor:
    """Seven per-input statistics ``[M, 7]`` of inputs ``x [M, F]`` with ``logits [M, ways]``
    against ``support [S, F]``, ``labels [S]`` (module docstring)."""
    p = logits.softmax(-1)
    top2 = p.topk(2, -1).values
    protos = _unit(torch.stack([_unit(support[labels == c]).mean(0) for c in range(ways)]))
    cos = _unit(x) @ protos.T  # [M, ways]
    return torch.stack([p.amax(-1), top2[:, 0] - top2[:, 1], logits.amax(-1), cos.amax(-1),
                        (_unit(x) @ _unit(support).T).amax(-1),
                        (p * p.clamp_min(1e-12).log()).sum(-1),
                        cos.topk(2, -1).values[:, 1]], -1)


def leave_classes_out(support: Tensor, labels: Tensor, ways: int, drop: int, rounds: int,
                      gen: torch.Generator) -> Callable[[Tensor, Tensor], Tensor]:
    """A stacked reject score ``score(logits [M, ways], x [M, F]) -> [M]`` learned from
    leave-classes-out rounds of the support set (module docstring)."""
    xs, ts = [], []
    for _ in range(rounds):
        out = set(torch.randperm(ways, generator=gen)[:drop].tolist())
        inside = [c for c in range(ways) if c not in out]
        remap = torch.full((ways,), -1, dtype=torch.long)
        remap[torch.tensor(inside)] = torch.arange(len(inside))
        held = torch.zeros(len(labels), dtype=torch.bool)
        for c in inside:
            idx = torch.nonzero(labels == c).flatten()
            held[idx[torch.randint(len(idx), (1,), generator=gen)]] = True
        fit = (remap[labels] >= 0) & ~held
        classify = head(support[fit], remap[labels[fit]], len(inside))
        for mask, target in ((held, 1.0), (remap[labels] < 0, 0.0)):
            x = support[mask]
            xs.append(statistics_of(classify(x), x, support[fit], remap[labels[fit]],
                                    len(inside)))
            ts.append(torch.full((len(x),), target))
    x, t = torch.cat(xs), torch.cat(ts)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    solver = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        solver.zero_grad()
        loss = F.binary_cross_entropy_with_logits((x - mu) / sd @ w + b, t)
        loss = loss + 1e-3 * w.square().sum()
        loss.backward()
        return loss

    solver.step(closure)  # type: ignore[arg-type]
    w_, mu_, sd_ = w.detach(), mu, sd
    return lambda logits, f: (statistics_of(logits, f, support, labels, ways) - mu_) / sd_ @ w_


def features(root: Path, work: Path, k: int, seed: int) -> dict[str, Tensor]:
    """The pretrained encoder's features of the K-shot pool and the test traffic."""
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.config.recipe import load_recipe
    from metafit.data.text_csv import TextCSV

    inside, held = held_out_intents(root / "train.csv", seed)
    pool = k_shot_pool(filtered_csv(root / "train.csv", set(inside), work / "train_in.csv"),
                       k, seed, work / "pool.csv")
    recipe = load_recipe("banking77_kshot_protonet", {"data_root": str(pool)})
    body = _body(build_algorithm(recipe))
    support = TextCSV(pool).tokenize(recipe.text_model, recipe.max_length)
    test_in = TextCSV(filtered_csv(root / "test.csv", set(inside), work / "test_in.csv"),
                      classes=support.classes).tokenize(recipe.text_model, recipe.max_length)
    test_out = TextCSV(filtered_csv(root / "test.csv", set(held), work / "test_out.csv")
                       ).tokenize(recipe.text_model, recipe.max_length)
    with torch.no_grad():
        return {"support": _embed(body, support.tokens).float(), "labels": support.targets,
                "in": _embed(body, test_in.tokens).float(), "in_y": test_in.targets,
                "out": _embed(body, test_out.tokens).float()}


def seed_rows(d: dict[str, Tensor], seed: int, mixups: list[tuple[int, float, float]],
              drop: int, rounds: int) -> list[dict[str, Any]]:
    """Every score's metrics on one seed's features ``d``."""
    s, y, fi, yi, fo = d["support"], d["labels"].long(), d["in"], d["in_y"].long(), d["out"]
    ways = int(y.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    classify = head(s, y, ways)
    li, lo_ = classify(fi), classify(fo)
    accuracy = float((li.argmax(-1) == yi).float().mean())
    scores: dict[str, tuple[Tensor, Tensor, float]] = {
        "max_prob T=1": (li.softmax(-1).amax(-1), lo_.softmax(-1).amax(-1), accuracy)}
    for m, lo, hi in mixups:
        fake = mixup_outliers(s, y, m, lo, hi, gen)
        extended = head(torch.cat([s, fake]), torch.cat([y, torch.full((m,), ways)]), ways + 1)
        a, b = extended(fi), extended(fo)
        scores[f"mixup outliers ({m}, {lo}-{hi})"] = (
            -a.softmax(-1)[:, ways], -b.softmax(-1)[:, ways],
            float((a[:, :ways].argmax(-1) == yi).float().mean()))
    stacked = leave_classes_out(s, y, ways, drop, rounds, gen)
    scores[f"leave-classes-out stacking ({drop} x {rounds})"] = (
        stacked(li, fi).detach(), stacked(lo_, fo).detach(), accuracy)
    return [{"protocol": "banking77", "seed": seed, "encoder": "pretrained", "score": name,
             "accuracy": acc, "auroc": auroc(a, b), "fa95": false_accepts_at_recall(a, b, RECALL)}
            for name, (a, b, acc) in scores.items()]


def table(rows: list[dict[str, Any]]) -> str:
    base = {r["seed"]: r["fa95"] for r in rows if r["score"] == "max_prob T=1"}
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["score"], []).append(r)
    lines = [f"Machine: {cpu_only()}. Command: `python benchmarks/openset_pseudo.py "
             f"{' '.join(sys.argv[1:])}`. Pretrained encoder, logistic head, K = 5; mean ± "
             "95% CI (Student t) over seeds; the last column pairs each seed with max_prob T=1.",
             "", "| score | in-scope accuracy | AUROC | false accepts @95% recall | "
             "false accepts - baseline (paired) |", "|---|---|---|---|---|"]
    for name, rs in groups.items():
        cells = [_pct(*_seed_stats([r[k] for r in rs])) for k in ("accuracy", "auroc", "fa95")]
        cells.append(_pct(*_seed_stats([r["fa95"] - base[r["seed"]] for r in rs])))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", default="runs/openset_pseudo", help="working folder")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--drop", type=int, default=8, help="intents removed per round")
    parser.add_argument("--rounds", type=int, default=6, help="leave-classes-out rounds")
    add_output_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mixups = [(260, 0.3, 0.7), (1040, 0.3, 0.7), (1040, 0.1, 0.9)]
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        d = features(Path(args.data_root), Path(args.out) / f"k{args.k}_seed{seed}", args.k, seed)
        rows += seed_rows(d, seed, mixups, args.drop, args.rounds)
        print({r["score"]: round(r["fa95"], 3) for r in rows if r["seed"] == seed}, flush=True)
    write_jsonl(results_dir(args.results_dir) / "openset_pseudo.jsonl", rows)
    write_block(Path(args.results), "openset_pseudo", "None of these (open set)", table(rows))


if __name__ == "__main__":
    main()
