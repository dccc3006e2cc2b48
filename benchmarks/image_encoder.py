"""A pretrained image encoder against conv4 on the same Omniglot few-shot protocol, through
the path a downloaded Hugging Face checkpoint takes (``model: image_encoder``).

    python benchmarks/image_encoder.py --data-root ../shared/data/omniglot \
        --out /tmp/imgenc_bench --pretrain-seconds 150 --budget 90 --episodes 300

No pretrained image weights are available offline here, so the encoder is one that metafit
pretrains itself: a small ViT (``transformers.ViTModel``: 28x28 RGB input, patch 7, 4
layers, width 64), randomly initialised and saved, is meta-trained by metafit on the
built-in Glyphs training characters (``model: image_encoder``, ProtoNet, ``adapt full``,
20-way 5-shot episodes, ``--pretrain-seconds``), and the encoder of its best validation
checkpoint is saved with ``save_pretrained`` beside a ``ViTImageProcessor`` config. (A
1,697-way cross-entropy classifier of the same ViT stayed at chance loss for its first
minutes on this CPU; the episodes learned within one.) From there on it is
an ordinary local checkpoint: recipes name its directory (``image_model``), and metafit
loads it, meta-trains, adapts, saves a model directory, reloads it and exports it to ONNX
(parity checked) exactly as it would a DINOv2 or CLIP checkpoint on disk.

Rows (Omniglot's small sets, split by alphabet, rotations as classes, 28x28; every
meta-trained row has ``--budget`` seconds of meta-training steps, 20-way 5-shot training
episodes, the best validation checkpoint; tested on the same ``--episodes`` fixed 5-way
1-shot and 5-shot test episodes):

* ``conv4 protonet``: conv4-64 from scratch (Adam 1e-3), the library's Omniglot baseline;
* ``vit-glyphs linear_probe``: the pretrained encoder frozen, a logistic-regression head
  per episode (no meta-training);
* ``vit-glyphs protonet head/top/full``: ProtoNet meta-training the pretrained encoder's
  top 2 layers (``adapt top``) or all of it (``full``), Adam 1e-4;
* ``vit-random protonet full``: the same architecture, randomly initialised (saved and
  loaded the same way), Adam 1e-3: what the pretraining is worth.

Also timed (``--cache-iterations``): head-only MAML meta-training on the frozen
pretrained encoder, with the trainer's feature cache and without it (the same iterations,
the same results up to rounding), and evaluation of the linear-probe row cached and
uncached (``benchmarks/feature_cache.py``'s measurement).

Writes ``image_encoder.json`` (rows) to ``--results-dir`` and the table to ``--results``
between ``<!-- image_encoder:start/end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any, cast

import torch
from common import add_output_options, publish
from torch import nn

SIDE = 28


def _vit_config() -> Any:
    from transformers import ViTConfig

    return ViTConfig(hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=128, image_size=SIDE, patch_size=7, num_channels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _save(encoder: nn.Module, root: Path) -> Path:
    """``encoder`` and a ViT image processor config (28x28, mean/std 0.5) in ``root``."""
    from transformers import ViTImageProcessor

    cast(Any, encoder).save_pretrained(root)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(root)
    return root


def pretrain(args: argparse.Namespace, random_dir: Path, root: Path) -> dict[str, Any]:
    """Meta-train the random ViT of ``random_dir`` on the Glyphs training characters with
    metafit (ProtoNet, ``adapt full``, 20-way 5-shot episodes, ``--pretrain-seconds``), and
    save its encoder from the best validation checkpoint in ``root`` (skipped when it
    exists). Returns the pretraining record."""
    record_file = root / "pretraining.json"
    if record_file.is_file():
        return cast(dict[str, Any], json.loads(record_file.read_text()))
    from metafit.runs.trained import load_trained

    values = recipe_values(args, dataset="glyphs", model="image_encoder",
                           image_model=str(random_dir), algorithm="protonet", adapt="full",
                           time_budget=args.pretrain_seconds, val_every=100,
                           val_episodes=100, outer_lr=1e-3)
    for key in ("base", "data_root"):
        values.pop(key)
    values.update(image_size=SIDE, test_episodes=100, checkpoint_every=100)
    seconds = fit("glyphs_pretraining", values, root.parent)
    run = root.parent / "glyphs_pretraining"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"]
    _, algo = load_trained(run, "best")
    _save(cast(Any, algo.model).body.encoder, root)
    classes = len(cast(Any, load_split_of(values)).classes)
    record = {"classes": classes, "iterations": val[-1]["iteration"],
              "seconds": round(seconds, 1),
              "best_val_accuracy": max(r["accuracy"] for r in val)}
    record_file.write_text(json.dumps(record, indent=1))
    return record


def load_split_of(values: dict[str, Any]) -> Any:
    """The training split of the recipe ``values``."""
    from metafit.config.schema import make_recipe
    from metafit.data.splits import load_split

    return load_split(make_recipe({**values, "name": "split"}), "train")


def random_encoder(root: Path, seed: int = 0) -> Path:
    """The same ViT, randomly initialised, saved the same way."""
    from transformers import ViTModel

    if not (root / "config.json").is_file():
        torch.manual_seed(seed)
        _save(ViTModel(_vit_config(), add_pooling_layer=False), root)
    return root


def recipe_values(args: argparse.Namespace, **row: Any) -> dict[str, Any]:
    """The shared protocol: the library's Omniglot base, 20-way 5-shot training episodes,
    5-way test episodes, ``--budget`` seconds of meta-training."""
    values: dict[str, Any] = dict(
        base="_omniglot", data_root=args.data_root, ways=20, shots=5, queries=5, test_ways=5,
        test_shots=5, test_queries=15, meta_batch=1, inner_steps=0, iterations=100_000,
        time_budget=args.budget, val_every=args.val_every, val_episodes=args.val_episodes,
        checkpoint_every=args.val_every, log_every=10, threads=args.threads, seed=0)
    values.update(row)
    return values


def fit(name: str, values: dict[str, Any], out: Path) -> float:
    """Train the recipe ``values`` (written as ``out/name.yaml``, loaded as a file) into a
    fresh run ``out/name``; seconds."""
    from metafit.config.recipe import load_recipe
    from metafit.training.trainer import Trainer

    run = out / name
    shutil.rmtree(run, ignore_errors=True)
    recipe_file = out / f"{name}.yaml"
    recipe_file.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()
                                   if v is not None))
    t0 = time.perf_counter()
    Trainer(load_recipe(str(recipe_file)), run, progress=False).fit()
    return time.perf_counter() - t0


def train_row(name: str, values: dict[str, Any], out: Path) -> Path:
    """Meta-train (or, linear_probe, just write) the run ``out/name`` unless done."""
    run = out / name
    if not (run / "done").is_file():
        seconds = fit(name, values, out)
        (run / "done").write_text(f"{seconds:.1f}\n")
    return run


def evaluate_row(run: Path, shots: int, episodes: int, cache: bool = True
                 ) -> tuple[dict[str, Any], float]:
    """5-way ``shots``-shot test accuracy of ``run``'s best checkpoint, and seconds."""
    from metafit.evaluation.protocol import evaluate
    from metafit.runs.trained import load_trained, split_sampler

    recipe, algo = load_trained(run, "best")
    steps = int(cast(Any, algo).default_eval_steps)
    sampler = split_sampler(recipe, "test", shots=shots)
    t0 = time.perf_counter()
    result = evaluate(algo, sampler, episodes=episodes, steps=steps, points=[0, steps],
                      cache_features=cache)
    return {"mean": result.mean, "ci95": result.ci95,
            "per_episode": list(result.per_episode)}, time.perf_counter() - t0


def deploy_check(run: Path, out: Path) -> dict[str, Any]:
    """Adapt ``run`` to 5 Omniglot test characters (5 shots), save the model directory,
    reload it, compare logits, export to ONNX (parity) and time one prediction."""
    from metafit.data.splits import load_split
    from metafit.deploy import AdaptedModel, Adapter, onnx_export

    adapter = Adapter.from_run(run)
    data = cast(Any, load_split(adapter.recipe, "test"))
    x_all, y_all = data.data, data.targets  # uint8 as trained on (inverted), by class
    xs, ys, queries = [], [], []
    for c in range(5):
        idx = torch.nonzero(y_all == c * 4).squeeze(1)  # one rotation of 5 characters
        xs.append(x_all[idx[:5]].float() / 255)
        queries.append(x_all[idx[5:10]].float() / 255)
        ys += [c] * 5
    x, q = torch.cat(xs), torch.cat(queries)
    model = adapter.adapt_tensors(x, torch.tensor(ys), [f"char{c}" for c in range(5)])
    path = model.save(out / "adapted")
    loaded = AdaptedModel.load(path)
    diff = float((loaded.logits(q) - model.logits(q)).abs().max())
    accuracy = float((loaded.logits(q).argmax(1) == torch.arange(5).repeat_interleave(5))
                     .float().mean())
    report = onnx_export.export_onnx(loaded, out / "onnx")
    return {"reload_max_abs_diff": diff, "onnx_max_abs_diff": report.max_abs_diff,
            "adapted_query_accuracy": accuracy,
            "files": sorted(p.name for p in (path / "encoder").iterdir())}


def cache_training(args: argparse.Namespace, encoder: Path, out: Path) -> dict[str, Any]:
    """Seconds of ``--cache-iterations`` head-only FOMAML steps on the frozen encoder, with
    the trainer's feature cache and without it."""
    import metafit.training.trainer as trainer_module

    n = args.cache_iterations
    values = recipe_values(args, model="image_encoder", image_model=str(encoder),
                           algorithm="fomaml", adapt="head", ways=5, shots=1, queries=5,
                           meta_batch=4, inner_steps=5, inner_lr=0.5, iterations=n,
                           time_budget=None, val_every=n, val_episodes=10, test_episodes=10,
                           checkpoint_every=n)
    seconds = {}
    real = trainer_module.frozen_body_cache
    for cache in (True, False):
        if not cache:
            trainer_module.frozen_body_cache = lambda model: contextlib.nullcontext()
        try:
            seconds[cache] = fit(f"fomaml_head_cache_{cache}", values, out)
        finally:
            trainer_module.frozen_body_cache = real
    return {"iterations": n, "cached_s": seconds[True], "uncached_s": seconds[False]}


ROWS: list[tuple[str, str, dict[str, Any]]] = [
    ("conv4_protonet", "conv4", {"algorithm": "protonet", "model": "conv4"}),
    ("vit-glyphs_linear_probe", "glyphs", {"algorithm": "linear_probe", "adapt": "head",
                                           "inner_lr": 0.01, "inner_steps": 100,
                                           "iterations": 1, "time_budget": None}),
    ("vit-glyphs_protonet_top", "glyphs", {"algorithm": "protonet", "adapt": "top",
                                           "adapt_layers": 2, "outer_lr": 1e-4}),
    ("vit-glyphs_protonet_full", "glyphs", {"algorithm": "protonet", "adapt": "full",
                                            "outer_lr": 1e-4}),
    ("vit-random_protonet_full", "random", {"algorithm": "protonet", "adapt": "full"}),
]


def table(rows: list[dict[str, Any]], pre: dict[str, Any], extra: dict[str, Any],
          args: argparse.Namespace) -> str:
    lines = [
        f"Machine: {platform.machine()}, {args.threads} torch thread(s), torch "
        f"{torch.__version__}. Command: `python benchmarks/image_encoder.py --data-root "
        f"{args.data_root} --out {args.out} --pretrain-seconds {args.pretrain_seconds:g} "
        f"--budget {args.budget:g} --episodes {args.episodes} --cache-iterations "
        f"{args.cache_iterations} --threads {args.threads}`.", "",
        f"Encoder: ViT (4 layers, width 64, patch 7, 28x28 RGB), pretrained by metafit on "
        f"the {pre['classes']} Glyphs training characters (ProtoNet, 20-way 5-shot, "
        f"{pre['iterations']} iterations, {pre['seconds']:.0f} s; best Glyphs validation "
        f"5-way 5-shot {100 * pre['best_val_accuracy']:.1f}%), its encoder saved with "
        "`save_pretrained` and loaded back by directory (`model: image_encoder`, "
        "`image_model: DIR`): the path of a downloaded checkpoint.", "",
        "| row | meta-training s | 5-way 1-shot | 5-way 5-shot |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"{100 * r[f'{k}shot']['mean']:.2f} +- {100 * r[f'{k}shot']['ci95']:.2f}"
                 for k in (1, 5)]
        lines.append(f"| {r['row']} | {r['train_s']:.0f} | {cells[0]} | {cells[1]} |")
    d, c, e = extra["deploy"], extra["cache_training"], extra["cache_eval"]
    lines += [
        "",
        f"Deployment of `vit-glyphs_protonet_full` (5 test characters, 5 shots): model "
        f"directory reloaded, logits within {d['reload_max_abs_diff']:.1g}; ONNX parity "
        f"{d['onnx_max_abs_diff']:.1g}; `encoder/` holds {', '.join(d['files'])}.", "",
        "| feature cache (frozen pretrained ViT) | cached s | uncached s | speed-up |",
        "|---|---|---|---|",
        f"| head-only FOMAML, {c['iterations']} iterations of 4 tasks (5-way 1-shot, 5 "
        f"steps) | {c['cached_s']:.1f} | {c['uncached_s']:.1f} | "
        f"{c['uncached_s'] / c['cached_s']:.1f}x |",
        f"| linear probe, {args.episodes} test episodes 5-way 5-shot (largest per-episode "
        f"difference {e['max_episode_diff']:.2g}) | {e['cached_s']:.1f} | "
        f"{e['uncached_s']:.1f} | {e['uncached_s'] / e['cached_s']:.1f}x |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="the Omniglot folder")
    parser.add_argument("--out", default="/tmp/imgenc_bench")
    parser.add_argument("--pretrain-seconds", type=float, default=150)
    parser.add_argument("--budget", type=float, default=90,
                        help="seconds of meta-training steps per meta-trained row")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--val-every", type=int, default=50)
    parser.add_argument("--val-episodes", type=int, default=50)
    parser.add_argument("--cache-iterations", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    add_output_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoders = {"glyphs": out / "vit-glyphs", "random": random_encoder(out / "vit-random")}
    pre = pretrain(args, encoders["random"], encoders["glyphs"])
    print("pretraining:", json.dumps(pre), flush=True)
    rows = []
    for name, encoder, row in ROWS:
        values = recipe_values(args, **row)
        if encoder in encoders:
            values.update(model="image_encoder", image_model=str(encoders[encoder]))
        run = train_row(name, values, out)
        result: dict[str, Any] = {"row": name, "run": str(run),
                                  "train_s": float((run / "done").read_text())}
        for k in (1, 5):
            result[f"{k}shot"], result[f"{k}shot_eval_s"] = evaluate_row(run, k, args.episodes)
        print(json.dumps({k: v for k, v in result.items() if "shot" not in k or "_s" in k}
                         | {f"{k}shot": round(100 * result[f"{k}shot"]["mean"], 2)
                            for k in (1, 5)}), flush=True)
        rows.append(result)
    probe = out / "vit-glyphs_linear_probe"
    cached = rows[1]["5shot_eval_s"]
    uncached_result, uncached = evaluate_row(probe, 5, args.episodes, cache=False)
    diff = max(abs(a - b) for a, b in zip(rows[1]["5shot"]["per_episode"],
                                          uncached_result["per_episode"], strict=True))
    extra = {"deploy": deploy_check(out / "vit-glyphs_protonet_full", out / "deploy"),
             "cache_training": cache_training(args, encoders["glyphs"], out),
             "cache_eval": {"cached_s": cached, "uncached_s": uncached,
                            "max_episode_diff": diff}}
    print(json.dumps(extra), flush=True)
    block = table(rows, pre, extra, args)
    publish(args, "image_encoder", "A pretrained image encoder on Omniglot "
            "(`benchmarks/image_encoder.py`)", block,
            {"pretraining": pre, "rows": rows, **extra})
    print(block)


if __name__ == "__main__":
    main()
