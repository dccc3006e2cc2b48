"""BANKING77 protocol B: what else was tried to close the gap to CPFT at K = 10.

    python benchmarks/text_heads.py dev --data-root ../shared/data/banking77 --tag base
    python benchmarks/text_heads.py test --data-root ../shared/data/banking77 \
        --runs /tmp/bench_text/B

``dev`` meta-trains ProtoNet (cosine, scale 20, whole encoder) on the K-shot pool of the
development seed (100, never scored by ``text.py B``) with one variant of the recipe's
schedule, and every ``--every`` steps scores 4,000 fixed sentences of ``train.csv``
outside the pool, 77-way, with two classifiers fitted on the pool's embeddings (and
``proto+logistic``, the mean of their probabilities, the prototypes' cosines scaled by 20
as in meta-training):

- ``proto``: cosine prototypes, each the normalised mean of an intent's unit-length
  embeddings. ``text.py B``'s ProtoNet averages the raw embeddings instead
  (``metafit.algorithms.protonet.class_prototypes``). On the development set at steps 0
  / 15 of the recipe that scores 79.46 / 83.66 against this column's 79.75 / 83.68; the
  column keeps the helper that produced the recorded rows;
- ``logistic``: multinomial logistic regression on the L2-normalised embeddings,
  L2 penalty ``--weight-decay`` on the weights, fitted to convergence by L-BFGS (Tian et
  al. 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
  Need?": a logistic-regression head on a meta-trained embedding). The library ships this
  head as ``classifier: logistic`` (``metafit.algorithms.heads``); ``text.py B
  --classifier logistic`` scores the test rows through it.

Variants: ``--ways`` (episodes of that many intents), ``--shots`` (support sentences per
intent in an episode, the rest of the K its queries), ``--steps``, ``--adapt`` (top
layers or LoRA adapters instead of the whole encoder), ``--mask`` (each word-piece of an
episode replaced by ``[MASK]`` with that probability: augmentation), ``--dropout`` (encoder
dropout while meta-training), ``--loss ridge`` (an episode's queries scored by a
ridge-regression head fitted in closed form on its support, R2D2), ``--loss loo`` (each
pool sentence a query against leave-one-out prototypes of all 77 intents, instead of an
episode's support / query split)
``--finetune N`` (then N steps of cross-entropy fine-tuning of the encoder with a
prototype-initialised linear head) and ``--members N`` (N encoders meta-trained from
different episode streams, scored alone, as an ensemble of their heads' probabilities and
as one weight-averaged encoder).

``test`` reads the finished runs of ``text.py B`` (``--runs``: its ``--out``/B), embeds each
run's pool and the 3,080 test sentences with the run's encoder, and scores the logistic
head against the run's recorded accuracy. Rows are JSON lines on stdout and in ``--log``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from text import k_shot_pool  # benchmarks/ (the script's directory)
from text_dev import development_set
from torch import Tensor
from torch.nn import functional as F

from metafit.adaptation import predict
from metafit.algorithms.heads import fit_logistic_head
from metafit.text import TokenMasker

WAYS = 77


def prototypes(z: Tensor, y: Tensor) -> Tensor:
    """Unit-length mean of each intent's unit-length embeddings: ``[C, H]`` (not
    ProtoNet's ``class_prototypes``, the mean of the raw embeddings; module docstring)."""
    z = F.normalize(z, dim=-1)
    return F.normalize(torch.stack([z[y == c].mean(0) for c in range(WAYS)]), dim=-1)


def scores(body: torch.nn.Module, support: Any, query_x: Tensor, query_y: Tensor,
           weight_decay: float) -> dict[str, float]:
    """Accuracy (%) of the prototype and the logistic head on ``query_x``."""
    pad = body.pad_id
    body.eval()
    with torch.no_grad():
        zs = predict(body, support.tokens, 256, pad)  # [N, H]
        zq = F.normalize(predict(body, query_x, 256, pad), dim=-1)  # [M, H]
    weight, bias = fit_logistic_head(zs, support.targets, WAYS, weight_decay)
    cosines = zq @ prototypes(zs, support.targets).T  # [M, C]
    logits = zq @ weight.T + bias  # [M, C]
    both = torch.softmax(20 * cosines, -1) + torch.softmax(logits, -1)  # [M, C]
    return {"proto": _accuracy(cosines, query_y), "logistic": _accuracy(logits, query_y),
            "proto+logistic": _accuracy(both, query_y)}


def episode_loss(algo: Any, sampler: Any, pool: Any, args: argparse.Namespace,
                 masker: TokenMasker | None = None) -> Tensor:
    """One meta-training loss: a ProtoNet episode (its texts masked by ``masker``), an
    episode scored by a ridge-regression head fitted on its support, or leave-one-out
    prototypes."""
    if args.loss in ("episode", "ridge"):
        episodes = sampler.sample(1)
        if masker is not None:  # on torch's global random stream
            episodes = masker.episodes(episodes)
        if args.loss == "episode":
            return algo.meta_loss(episodes)[0]
        return ridge_loss(algo.model.body, episodes, args.ridge_lambda, args.scale)
    y = pool.targets  # [N]
    z = F.normalize(algo.model.body(pool.tokens), dim=-1)  # [N, H]
    onehot = F.one_hot(y, WAYS).to(z.dtype)  # [N, C]
    sums, counts = onehot.T @ z, onehot.sum(0)  # [C, H], [C]
    logits = (z @ F.normalize(sums / counts[:, None], dim=-1).T).clone()  # [N, C]
    own = (sums[y] - z) / (counts[y] - 1)[:, None]  # [N, H] without the sentence itself
    logits[torch.arange(len(y)), y] = (F.normalize(own, dim=-1) * z).sum(-1)
    return F.cross_entropy(args.scale * logits, y)


def ridge_loss(body: torch.nn.Module, episodes: Any, lam: float, scale: float) -> Tensor:
    """Query cross-entropy of the closed-form ridge-regression head fitted on the support
    (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers",
    R2D2): ``W = Zs^T (Zs Zs^T + lam I)^-1 Y`` on unit-length support embeddings ``Zs [n,
    H]`` and one-hot labels ``Y [n, C]``; logits ``scale * Zq W``. Differentiable through
    the solve, so the encoder learns for a linear head, as the logistic head it is scored
    with at test time."""
    task = episodes[0]
    zs = F.normalize(body(task.support_x), dim=-1)  # [n, H]
    zq = F.normalize(body(task.query_x), dim=-1)  # [m, H]
    onehot = F.one_hot(task.support_y, int(task.support_y.max()) + 1).to(zs.dtype)  # [n, C]
    gram = zs @ zs.T + lam * torch.eye(len(zs), dtype=zs.dtype)  # [n, n]
    weight = zs.T @ torch.linalg.solve(gram, onehot)  # [H, C]
    return F.cross_entropy(scale * zq @ weight, task.query_y)

def dev(args: argparse.Namespace) -> None:
    from metafit.config import load_recipe
    from metafit.data.text_csv import TextCSV
    from metafit.datasets import load_split
    from metafit.factory import build_algorithm
    from metafit.sampler import EpisodeSampler

    torch.manual_seed(0)
    root, out = Path(args.data_root), Path(args.out)
    pool_csv = k_shot_pool(root / "train.csv", args.k, args.dev_seed, out / f"pool_k{args.k}.csv")
    dev_csv = development_set(root / "train.csv", pool_csv, out / f"dev_k{args.k}.csv")
    shots = args.shots or max(1, args.k // 2)
    if not 0 < shots < args.k:
        raise SystemExit(f"--shots must be between 1 and K - 1 = {args.k - 1}")
    recipe = load_recipe("banking77_kshot_protonet", {
        "data_root": str(pool_csv), "shots": shots, "queries": args.k - shots,
        "test_shots": shots, "test_queries": args.k - shots, "distance_scale": args.scale,
        "outer_lr": args.lr, "text_dropout": args.dropout, "adapt": args.adapt})
    pool = load_split(recipe, "train")
    held = TextCSV(dev_csv, classes=pool.classes).tokenize(recipe.text_model, recipe.max_length)
    pick = torch.randperm(len(held.targets), generator=torch.Generator().manual_seed(7))
    pick = pick[:args.dev_sentences]
    query_x, query_y = held.tokens[pick], held.targets[pick]
    masker = TokenMasker(recipe.text_model, args.mask) if args.mask else None
    bodies = []
    for member in range(args.members):
        torch.manual_seed(member)  # member 0: the single run's streams
        algo = build_algorithm(recipe)
        sampler = EpisodeSampler(pool, ways=args.ways, shots=shots, queries=args.k - shots,
                                 seed=recipe.seed + member)
        train(algo, sampler, pool, query_x, query_y, args, masker,
              report=args.members == 1)
        bodies.append(algo.model.body)
    if args.members > 1:
        ensemble(bodies, pool, query_x, query_y, args)


def train(algo: Any, sampler: Any, pool: Any, query_x: Tensor, query_y: Tensor,
          args: argparse.Namespace, masker: TokenMasker | None, report: bool) -> None:
    """``args.steps`` meta-training steps (and ``--finetune``), scoring every ``--every``
    steps when ``report``."""
    optimizer = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad],
                                 lr=args.lr)

    def emit(step: int | str) -> None:
        if report:
            row = {"tag": args.tag, "k": args.k, "step": step,
                   **scores(algo.model.body, pool, query_x, query_y, args.weight_decay)}
            _emit(row, args.log)

    for step in range(args.steps + 1):
        if step % args.every == 0:
            emit(step)
        if step == args.steps:
            break
        algo.train()
        loss = episode_loss(algo, sampler, pool, args, masker)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if args.finetune:
        body = algo.model.body
        head = torch.nn.Linear(algo.model.feature_dim, WAYS)
        with torch.no_grad():
            body.eval()
            head.weight.copy_(args.scale * prototypes(predict(body, pool.tokens, 256,
                                                              body.pad_id), pool.targets))
            head.bias.zero_()
        tune = torch.optim.Adam([{"params": [p for p in body.parameters() if p.requires_grad],
                                  "lr": args.finetune_lr},
                                 {"params": head.parameters(), "lr": 1e-3}])
        for s in range(1, args.finetune + 1):
            body.train()
            loss = F.cross_entropy(head(F.normalize(body(pool.tokens), dim=-1)), pool.targets)
            tune.zero_grad()
            loss.backward()
            tune.step()
            if s % args.every == 0:
                emit(f"finetune {s}")


def ensemble(bodies: list[torch.nn.Module], pool: Any, query_x: Tensor, query_y: Tensor,
             args: argparse.Namespace) -> None:
    """Rows for each member, for the ensemble (mean of the members' logistic-head
    probabilities; mean of their prototype cosines) and for the weight average of the
    members' encoders (a "model soup", Wortsman et al. 2022: one encoder, no extra cost)."""
    probs, cosines = [], []
    for m, body in enumerate(bodies):
        body.eval()
        with torch.no_grad():
            zs = predict(body, pool.tokens, 256, body.pad_id)  # [N, H]
            zq = F.normalize(predict(body, query_x, 256, body.pad_id), dim=-1)  # [M, H]
        weight, bias = fit_logistic_head(zs, pool.targets, WAYS, args.weight_decay)
        probs.append(torch.softmax(zq @ weight.T + bias, dim=-1))  # [M, C]
        cosines.append(zq @ prototypes(zs, pool.targets).T)  # [M, C]
        _emit({"tag": args.tag, "k": args.k, "step": args.steps, "member": m,
               "proto": _accuracy(cosines[-1], query_y),
               "logistic": _accuracy(probs[-1], query_y)}, args.log)
    _emit({"tag": args.tag, "k": args.k, "step": args.steps,
           "ensemble": len(bodies), "proto": _accuracy(torch.stack(cosines).mean(0), query_y),
           "logistic": _accuracy(torch.stack(probs).mean(0), query_y)}, args.log)
    soup = bodies[0]
    states = [b.state_dict() for b in bodies]
    soup.load_state_dict({n: (torch.stack([s[n] for s in states]).mean(0)
                              if states[0][n].is_floating_point() else states[0][n])
                          for n in states[0]})
    _emit({"tag": args.tag, "k": args.k, "step": args.steps, "soup": len(bodies),
           **scores(soup, pool, query_x, query_y, args.weight_decay)}, args.log)


def _accuracy(scores_: Tensor, y: Tensor) -> float:
    return 100 * float((scores_.argmax(-1) == y).float().mean())


def test(args: argparse.Namespace) -> None:
    from metafit.data.text_csv import TextCSV
    from metafit.runs import load_trained

    runs = Path(args.runs)
    for k in args.ks:
        for seed in args.seeds:
            for name in args.rows:
                run = runs / f"{name}_k{k}_seed{seed}"
                recorded = json.loads((run / "benchmark.json").read_text())["accuracy"]
                recipe, algo = load_trained(run)
                pool = TextCSV(runs / f"pool_k{k}_seed{seed}.csv").tokenize(
                    recipe.text_model, recipe.max_length)
                test_set = TextCSV(Path(args.data_root) / "test.csv",
                                   classes=pool.classes).tokenize(recipe.text_model,
                                                                  recipe.max_length)
                t0 = time.perf_counter()
                row = scores(algo.model.body, pool, test_set.tokens, test_set.targets,
                             args.weight_decay)
                _emit({"run": name, "k": k, "seed": seed, "recorded": 100 * recorded,
                       "logistic": row["logistic"], "seconds": round(time.perf_counter() - t0, 1)},
                      args.log)


def _emit(row: dict[str, Any], log: str | None) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["dev", "test"])
    parser.add_argument("--data-root", required=True, help="directory with train.csv, test.csv")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log", default=None, help="also append the rows to this file")
    dev_args = parser.add_argument_group("dev")
    dev_args.add_argument("--k", type=int, default=10)
    dev_args.add_argument("--dev-seed", type=int, default=100)
    dev_args.add_argument("--dev-sentences", type=int, default=4000)
    dev_args.add_argument("--ways", type=int, default=WAYS)
    dev_args.add_argument("--shots", type=int, default=None,
                          help="support sentences per intent in an episode (default K // 2; "
                               "the rest of the K are its queries)")
    dev_args.add_argument("--steps", type=int, default=15)
    dev_args.add_argument("--every", type=int, default=15)
    dev_args.add_argument("--lr", type=float, default=3e-5)
    dev_args.add_argument("--dropout", type=float, default=0.0)
    dev_args.add_argument("--loss", choices=["episode", "ridge", "loo"], default="episode")
    dev_args.add_argument("--ridge-lambda", type=float, default=1.0,
                          help="--loss ridge: the ridge penalty")
    dev_args.add_argument("--adapt", choices=["full", "top", "lora"], default="full",
                          help="what meta-training adapts (the recipe's adapt scope)")
    dev_args.add_argument("--mask", type=float, default=0.0,
                          help="mask each word-piece of an episode with this probability")
    dev_args.add_argument("--finetune", type=int, default=0)
    dev_args.add_argument("--finetune-lr", type=float, default=2e-5)
    dev_args.add_argument("--members", type=int, default=1,
                          help="meta-train this many encoders (seeds 0..N-1 for the "
                               "initial stream and the episode sampler) and also score "
                               "their ensemble and their weight average")
    dev_args.add_argument("--tag", default="run")
    dev_args.add_argument("--out", default="runs/bench_text_heads")
    test_args = parser.add_argument_group("test")
    test_args.add_argument("--runs", default="runs/bench_text/B")
    test_args.add_argument("--rows", nargs="+",
                           default=["protonet-cos20_full", "linear_probe_head"])
    test_args.add_argument("--ks", nargs="+", type=int, default=[10, 5])
    test_args.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (dev if args.mode == "dev" else test)(args)


if __name__ == "__main__":
    main()
