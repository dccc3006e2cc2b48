"""BANKING77 protocol B: what else was tried to close the gap to CPFT at K = 10.

    python benchmarks/experiments/text_heads.py dev --data-root ../shared/data/banking77 \
        --tag base
    python benchmarks/experiments/text_heads.py test --data-root ../shared/data/banking77 \
        --runs /tmp/bench_text/B

``dev`` meta-trains ProtoNet (cosine, scale 20, whole encoder) on the K-shot pool of the
development seed (100, never scored by ``text.py B``) with one variant of the recipe's
schedule, and every ``--every`` steps scores 4,000 fixed sentences of ``train.csv``
outside the pool, 77-way, with two classifiers fitted on the pool's embeddings (and
``proto+logistic``, the mean of their probabilities, the prototypes' cosines scaled by 20
as in meta-training):

- ``proto``: cosine prototypes, each the normalised mean of an intent's unit-length
  embeddings. ``text.py B``'s ProtoNet averages the raw embeddings instead
  (``metafit.algorithms.protonet.class_prototypes``); the two are compared in
  ``benchmarks/RESULTS.md`` ("Other meta-training schedules"). The column keeps the
  helper that produced the recorded rows;
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
prototype-initialised linear head), ``--members N`` (N encoders meta-trained from
different episode streams, scored alone, as an ensemble of their heads' probabilities and
as one weight-averaged encoder), ``--adapt top --adapt-layers 6`` (every transformer layer,
the word-piece embeddings frozen), ``--layer-decay D`` (layer-wise decayed learning
rates), ``--meta-batch N`` (N episodes per step), ``--label-names`` (each intent's name
added to the pool as one more sentence; outside protocol B, whose published baselines do
not read the names). Extra columns: ``--pretrained-heads`` (the pretrained encoder's
logistic head averaged in, or its embeddings side by side with the meta-trained ones) and
``--more-heads`` (late interaction over word-pieces, the last two layers side by side,
the intents' names in the head's training set: ``more_heads``).

``test`` reads the finished runs of ``text.py B`` (``--runs``: its ``--out``/B), embeds each
run's pool and the 3,080 test sentences with the run's encoder, and scores the logistic
head against the run's recorded accuracy. Rows are JSON lines on stdout and in ``--log``
(default ``text_heads_MODE.jsonl`` in ``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional as F

from metafit.algorithms.heads import fit_logistic_head
from metafit.evaluation.test_set import predict
from metafit.io import atomic_write_text
from metafit.models.tokenizer import TokenMasker, tokenize, trim

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common
from common import development_set, k_shot_pool, results_dir  # noqa: E402

WAYS = 77


def prototypes(z: Tensor, y: Tensor) -> Tensor:
    """Unit-length mean of each intent's unit-length embeddings: ``[C, H]`` (not
    ProtoNet's ``class_prototypes``, the mean of the raw embeddings; module docstring)."""
    z = F.normalize(z, dim=-1)
    return F.normalize(torch.stack([z[y == c].mean(0) for c in range(WAYS)]), dim=-1)


def scores(body: torch.nn.Module, support: Any, query_x: Tensor, query_y: Tensor,
           weight_decay: float, reference: tuple[Tensor, Tensor] | None = None,
           names: Tensor | None = None) -> dict[str, float]:
    """Accuracy (%) of the prototype and the logistic head on ``query_x``; with
    ``reference`` (the pretrained encoder's support and query embeddings, ``[N, H]`` and
    ``[M, H]``) also of the mean of the logistic heads' probabilities on both encoders
    (``+pretrained``) and of one logistic head on both embeddings side by side
    (``concat``); with ``names`` (``[C, L]`` token ids of each intent's name, in label
    order) also of the logistic head fitted on the pool and the names as one more
    sentence each (``logistic+names``: class-name augmentation, which the published
    few-shot intent detectors do not use)."""
    pad = body.pad_id
    body.eval()
    with torch.no_grad():
        zs = predict(body, support.tokens, 256, pad)  # [N, H]
        zq = F.normalize(predict(body, query_x, 256, pad), dim=-1)  # [M, H]
    weight, bias = fit_logistic_head(zs, support.targets, WAYS, weight_decay)
    cosines = zq @ prototypes(zs, support.targets).T  # [M, C]
    logits = zq @ weight.T + bias  # [M, C]
    both = torch.softmax(20 * cosines, -1) + torch.softmax(logits, -1)  # [M, C]
    row = {"proto": _accuracy(cosines, query_y), "logistic": _accuracy(logits, query_y),
           "proto+logistic": _accuracy(both, query_y)}
    if names is not None:
        with torch.no_grad():
            zn = predict(body, names, 256, pad)  # [C, H]
        row["logistic+names"] = _accuracy(names_logits(zs, support.targets, zn, zq,
                                                       weight_decay), query_y)
    if reference is not None:
        ref_s, ref_q = reference
        w0, b0 = fit_logistic_head(ref_s, support.targets, WAYS, weight_decay)
        ref_logits = F.normalize(ref_q, dim=-1) @ w0.T + b0  # [M, C]
        mean = torch.softmax(logits, -1) + torch.softmax(ref_logits, -1)  # [M, C]
        side = torch.cat([F.normalize(zs, dim=-1), F.normalize(ref_s, dim=-1)], -1)  # [N, 2H]
        wc, bc = fit_logistic_head(side, support.targets, WAYS, weight_decay)
        side_q = torch.cat([zq, F.normalize(ref_q, dim=-1)], -1) / 2 ** 0.5  # [M, 2H]
        row |= {"+pretrained": _accuracy(mean, query_y),
                "concat": _accuracy(side_q @ wc.T + bc, query_y)}
    return row


def more_heads(body: Any, support: Any, query_x: Tensor, query_y: Tensor,
               weight_decay: float) -> dict[str, float]:
    """Accuracy (%) of more test-time heads on the encoder as it is (columns):

    - ``late``: token-level late interaction (ColBERT, Khattab & Zaharia 2020; FastFit,
      Yehudai & Bandel 2024): a query's score against a pool sentence is the mean over
      its word-pieces of the best cosine with any of the sentence's; an intent's score
      the mean over its sentences (``late_max``: the best); ``late+logistic``: its
      softmax at scale 10 averaged with the logistic head's probabilities;
    - ``layers5+6``: the logistic head on the mean-pooled outputs of the last two
      layers, each unit length, side by side."""
    body.eval()
    s_tok, s_mask, s_feat = _layer_outputs(body, support.tokens)
    q_tok, q_mask, q_feat = _layer_outputs(body, query_x)
    weight, bias = fit_logistic_head(s_feat[:, 1], support.targets, WAYS, weight_decay)
    logits = F.normalize(q_feat[:, 1], dim=-1) @ weight.T + bias  # [M, C]
    onehot = F.one_hot(support.targets, WAYS).to(s_tok.dtype)  # [N, C]
    late_mean, late_max = [], []
    for i in range(0, len(q_tok), 100):
        q, qm = q_tok[i:i + 100], q_mask[i:i + 100]  # [b, Lq, H], [b, Lq]
        sim = torch.einsum("bqh,nsh->bnqs", q, s_tok)  # [b, N, Lq, Ls]
        sim = sim.masked_fill(~s_mask[None, :, None, :], -2).amax(-1)  # [b, N, Lq]
        sim = (sim * qm[:, None]).sum(-1) / qm.sum(-1, keepdim=True)  # [b, N]
        late_mean.append(sim @ onehot / onehot.sum(0))  # [b, C]
        late_max.append(torch.stack([sim[:, support.targets == c].amax(-1)
                                     for c in range(WAYS)], -1))  # [b, C]
    late = torch.cat(late_mean)  # [M, C]
    two = s_feat.flatten(1)  # [N, 2H]
    w2, b2 = fit_logistic_head(two, support.targets, WAYS, weight_decay)
    mixed = torch.softmax(logits, -1) + torch.softmax(10 * late, -1)  # [M, C]
    return {"late": _accuracy(late, query_y), "late_max": _accuracy(torch.cat(late_max), query_y),
            "late+logistic": _accuracy(mixed, query_y),
            "layers5+6": _accuracy(F.normalize(q_feat.flatten(1), dim=-1) @ w2.T + b2, query_y)}


def label_name(label: str) -> str:
    """An intent's name as a sentence: "card_arrival" -> "card arrival"."""
    return label.replace("_", " ")


def name_tokens(classes: list[str], text_model: Any, max_length: int) -> Tensor:
    """Token ids ``[C, max_length]`` of each intent's name, in label order."""
    return tokenize([label_name(c) for c in classes], text_model, max_length)


def names_logits(zs: Tensor, ys: Tensor, zn: Tensor, zq: Tensor, weight_decay: float
                 ) -> Tensor:
    """Logits ``[M, C]`` for the queries ``zq [M, H]`` of the logistic head fitted on the
    support embeddings ``zs [N, H]`` (labels ``ys [N]``) and on each intent's name
    embedding ``zn [C, H]`` (row c: intent c) as one more sentence."""
    weight, bias = fit_logistic_head(torch.cat([zs, zn]), torch.cat([ys, torch.arange(WAYS)]),
                                     WAYS, weight_decay)
    return F.normalize(zq, dim=-1) @ weight.T + bias


def _layer_outputs(body: Any, ids: Tensor, batch: int = 256) -> tuple[Tensor, Tensor, Tensor]:
    """For ``ids [B, L]``: the unit-length last-layer word-piece embeddings ``[B, L', H]``
    with their mask ``[B, L']`` (bool), and the mean-pooled outputs of the last two layers
    ``[B, 2, H]`` (each unit length)."""
    tokens, masks, feats = [], [], []
    width = int(trim(ids, body.pad_id).shape[1])
    with torch.no_grad():
        for i in range(0, len(ids), batch):
            part = trim(ids[i:i + batch], body.pad_id)  # [b, l]
            mask = part != body.pad_id  # [b, l]
            states = body.encoder(input_ids=part, attention_mask=mask.long(),
                                  output_hidden_states=True).hidden_states
            m = mask.unsqueeze(-1).to(states[-1].dtype)  # [b, l, 1]
            feats.append(torch.stack([F.normalize((h * m).sum(1) / m.sum(1), dim=-1)
                                      for h in states[-2:]], 1))  # [b, 2, H]
            tokens.append(F.pad(F.normalize(states[-1], dim=-1),
                                (0, 0, 0, width - part.shape[1])))  # [b, L', H]
            masks.append(F.pad(mask, (0, width - part.shape[1])))  # [b, L']
    return torch.cat(tokens), torch.cat(masks), torch.cat(feats)


def episode_loss(algo: Any, sampler: Any, pool: Any, args: argparse.Namespace,
                 masker: TokenMasker | None = None) -> Tensor:
    """One meta-training loss: a ProtoNet episode (its texts masked by ``masker``), an
    episode scored by a ridge-regression head fitted on its support, or leave-one-out
    prototypes."""
    if args.loss in ("episode", "ridge"):
        episodes = sampler.sample(args.meta_batch)
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
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.config.recipe import load_recipe
    from metafit.data.sampler import EpisodeSampler
    from metafit.data.splits import load_split
    from metafit.data.text_csv import TextCSV

    torch.manual_seed(0)
    root, out = Path(args.data_root), Path(args.out)
    pool_csv = k_shot_pool(root / "train.csv", args.k, args.dev_seed, out / f"pool_k{args.k}.csv")
    dev_csv = development_set(root / "train.csv", pool_csv, out / f"dev_k{args.k}.csv")
    if args.label_names:
        pool_csv = with_label_names(pool_csv, out / f"pool_k{args.k}_names.csv")
    shots = args.shots or max(1, args.k // 2)
    if args.meta_batch > 1 and args.loss != "episode":
        raise SystemExit("--meta-batch is for --loss episode")
    if not 0 < shots < args.k:
        raise SystemExit(f"--shots must be between 1 and K - 1 = {args.k - 1}")
    recipe = load_recipe("banking77_kshot_protonet", {
        "data_root": str(pool_csv), "shots": shots, "queries": args.k - shots,
        "test_shots": shots, "test_queries": args.k - shots, "distance_scale": args.scale,
        "outer_lr": args.lr, "text_dropout": args.dropout, "adapt": args.adapt,
        "adapt_layers": args.adapt_layers})
    pool = load_split(recipe, "train")
    if args.more_heads:
        args.names = name_tokens(pool.classes, recipe.text_model, recipe.max_length)
    held = TextCSV(dev_csv, classes=pool.classes).tokenize(recipe.text_model, recipe.max_length)
    pick = torch.randperm(len(held.targets), generator=torch.Generator().manual_seed(7))
    pick = pick[:args.dev_sentences]
    query_x, query_y = held.tokens[pick], held.targets[pick]
    if args.pretrained_heads:
        body = build_algorithm(recipe).model.body.eval()
        with torch.no_grad():
            args.reference = (predict(body, pool.tokens, 256, body.pad_id),
                              predict(body, query_x, 256, body.pad_id))
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


def with_label_names(pool_csv: Path, out: Path) -> Path:
    """``pool_csv`` and one more sentence per intent, its name with spaces for the
    underscores ("card_arrival": "card arrival"), written as ``out``: class-name
    augmentation (as in FastFit, Yehudai & Bandel 2024). The published few-shot intent
    detectors that protocol B compares with do not read the intents' names."""
    with pool_csv.open(encoding="utf-8", newline="") as f:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(f)]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "category"])
    writer.writerows(rows)
    writer.writerows((label_name(label), label) for label in sorted({c for _, c in rows}))
    atomic_write_text(out, buffer.getvalue())
    return out


def train(algo: Any, sampler: Any, pool: Any, query_x: Tensor, query_y: Tensor,
          args: argparse.Namespace, masker: TokenMasker | None, report: bool) -> None:
    """``args.steps`` meta-training steps (and ``--finetune``), scoring every ``--every``
    steps when ``report``."""
    optimizer = torch.optim.Adam(param_groups(algo, args.lr, args.layer_decay))

    def emit(step: int | str) -> None:
        if report:
            row = {"tag": args.tag, "k": args.k, "step": step,
                   **scores(algo.model.body, pool, query_x, query_y, args.weight_decay,
                            args.reference, args.names)}
            if args.more_heads:
                row |= more_heads(algo.model.body, pool, query_x, query_y, args.weight_decay)
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


def param_groups(algo: Any, lr: float, decay: float) -> list[dict[str, Any]]:
    """Adam's parameter groups: every trainable parameter at ``lr``, or with ``decay`` <
    1 layer-wise decayed rates (Howard & Ruder 2018, ULMFiT; Clark et al. 2020, ELECTRA):
    the top transformer layer at ``lr``, each layer below at ``decay`` times the one
    above, the embeddings below the bottom layer."""
    named = [(n, p) for n, p in algo.named_parameters() if p.requires_grad]
    if decay >= 1:
        return [{"params": [p for _, p in named], "lr": lr}]

    def level(name: str) -> int | None:  # embeddings 0, layer i: i + 1, above: None
        if ".layer." in name:
            return 1 + int(name.split(".layer.")[1].split(".")[0])
        return 0 if ".embeddings." in name else None

    levels = [level(n) for n, _ in named]
    depth = max(lvl for lvl in levels if lvl is not None)  # the top layer's level
    groups: dict[int, list[torch.nn.Parameter]] = {}
    for lvl, (_, p) in zip(levels, named, strict=True):
        groups.setdefault(depth if lvl is None else lvl, []).append(p)
    return [{"params": ps, "lr": lr * decay ** (depth - lvl)} for lvl, ps in groups.items()]


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
    from metafit.runs.trained import load_trained

    runs = Path(args.runs)
    for k in args.ks:
        for seed in args.seeds:
            for name in args.rows:
                run = runs / f"{name}_k{k}_seed{seed}"
                recorded = {  # benchmark.json: text.py's own head; _logistic: --classifier
                    f"recorded{f.stem[len('benchmark'):]}":
                        100 * json.loads(f.read_text())["accuracy"]
                    for f in sorted(run.glob("benchmark*.json"))}
                if not recorded:
                    raise SystemExit(f"{run} has no benchmark*.json: run text.py B first")
                recipe, algo = load_trained(run)
                pool = TextCSV(runs / f"pool_k{k}_seed{seed}.csv").tokenize(
                    recipe.text_model, recipe.max_length)
                test_set = TextCSV(Path(args.data_root) / "test.csv",
                                   classes=pool.classes).tokenize(recipe.text_model,
                                                                  recipe.max_length)
                t0 = time.perf_counter()
                names = (name_tokens(pool.classes, recipe.text_model, recipe.max_length)
                         if args.label_names else None)
                row = scores(algo.model.body, pool, test_set.tokens, test_set.targets,
                             args.weight_decay, names=names)
                extra = {key: row[key] for key in ("logistic+names",) if key in row}
                _emit({"run": name, "k": k, "seed": seed, **recorded,
                       "logistic": row["logistic"], **extra,
                       "seconds": round(time.perf_counter() - t0, 1)}, args.log)


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
    parser.add_argument("--log", default=None, help="also append the rows to this file "
                        "(default: benchmarks/results/<today>/text_heads_MODE.jsonl)")
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
    dev_args.add_argument("--adapt-layers", type=int, default=2,
                          help="--adapt top: how many top layers (6: every transformer "
                               "layer, the word-piece embeddings frozen)")
    dev_args.add_argument("--layer-decay", type=float, default=1.0,
                          help="layer-wise learning-rate decay (1: one rate for all)")
    dev_args.add_argument("--pretrained-heads", action="store_true",
                          help="also score the logistic heads of the meta-trained and the "
                               "pretrained encoder together (+pretrained, concat)")
    dev_args.add_argument("--meta-batch", type=int, default=1,
                          help="episodes per meta-training step (their mean loss)")
    dev_args.add_argument("--more-heads", action="store_true",
                          help="also score the late-interaction, two-layer and "
                               "label-name heads (more_heads)")
    dev_args.add_argument("--label-names", action="store_true",
                          help="dev: add each intent's name to the pool as one more sentence; "
                               "test: also score the logistic head fitted on the pool "
                               "and the names")
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
    args.reference = args.names = None
    if args.log is None:
        args.log = str(results_dir() / f"text_heads_{args.mode}.jsonl")
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    (dev if args.mode == "dev" else test)(args)


if __name__ == "__main__":
    main()
