"""``metafit quickstart``: the first job of a fresh install, with no data to download.

It meta-trains on the built-in :class:`~metafit.data.Glyphs` characters (train classes),
then compares on *unseen* test classes, on the same fixed 5-way episodes:

- MAML (second order) and ProtoNet, meta-trained for a short budget;
- FineTune: one network pretrained on all training classes jointly, a new head fit on
  each support set;
- Scratch: a network trained on the support set alone.

Results (mean accuracy +- 95% CI) are printed as a table and written to
``OUT/report/results.md`` and ``results.json``; each method's run directory is kept under
``OUT/runs`` so ``metafit evaluate`` works on it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafit.config import Recipe, make_recipe
from metafit.datasets import load_split
from metafit.evaluation import EvalResult, evaluate, scratch_baseline
from metafit.factory import build_model
from metafit.io import atomic_write_text
from metafit.runs import SPLIT_SEED_OFFSET, load_trained
from metafit.sampler import EpisodeSampler
from metafit.trainer import Trainer

__all__ = ["QuickstartSize", "quickstart", "SIZES"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartSize:
    """How much work quickstart does (``default`` fits in ~3 minutes on 2 CPU cores)."""

    image_size: int
    hidden: int
    maml_iterations: int
    protonet_iterations: int
    finetune_iterations: int
    test_episodes: int
    scratch_episodes: int
    val_episodes: int


SIZES = {
    "default": QuickstartSize(28, 32, 300, 300, 300, 200, 60, 50),
    "tiny": QuickstartSize(16, 8, 4, 4, 4, 10, 4, 4),
}


def _recipes(size: QuickstartSize) -> dict[str, Recipe]:
    common: dict[str, Any] = dict(
        dataset="glyphs", image_size=size.image_size, model="conv4", hidden=size.hidden,
        ways=5, shots=1, queries=5, test_ways=5, test_shots=1, test_queries=15,
        val_episodes=size.val_episodes, test_episodes=size.test_episodes, log_every=10,
        checkpoint_every=100, seed=0,
    )
    every = lambda n: max(1, n // 3)  # noqa: E731 - validate three times per run
    return {
        "maml": make_recipe(dict(common, name="quickstart_maml", algorithm="maml",
                                 inner_lr=0.4, inner_steps=1, eval_inner_steps=3,
                                 meta_batch=8, iterations=size.maml_iterations,
                                 val_every=every(size.maml_iterations))),
        "protonet": make_recipe(dict(common, name="quickstart_protonet",
                                     algorithm="protonet", ways=20, inner_steps=0,
                                     meta_batch=1, iterations=size.protonet_iterations,
                                     val_every=every(size.protonet_iterations))),
        "finetune": make_recipe(dict(common, name="quickstart_finetune",
                                     algorithm="finetune", inner_lr=0.01, inner_steps=0,
                                     eval_inner_steps=100, meta_batch=8,
                                     iterations=size.finetune_iterations,
                                     val_every=every(size.finetune_iterations))),
    }


def _table(rows: list[tuple[str, str, EvalResult]]) -> str:
    lines = ["| method | task | accuracy (%) | 95% CI | episodes |",
             "|---|---|---|---|---|"]
    for method, task, r in rows:
        lines.append(f"| {method} | {task} | {100 * r.mean:.2f} | +- {100 * r.ci95:.2f} | "
                     f"{r.episodes} |")
    return "\n".join(lines)


def quickstart(out: str | Path = "runs/quickstart", size: str = "default",
               progress: bool = True) -> dict[str, Any]:
    """Run the quickstart into ``out``; returns the results as a dict (also saved)."""
    if size not in SIZES:
        raise ValueError(f"unknown quickstart size '{size}'; choose {', '.join(SIZES)}")
    sz, out = SIZES[size], Path(out)
    t0 = time.perf_counter()
    recipes = _recipes(sz)
    rows: list[tuple[str, str, EvalResult]] = []
    test_ds = load_split(recipes["maml"], "test")
    seconds: dict[str, float] = {}
    for name, recipe in recipes.items():
        t = time.perf_counter()
        Trainer(recipe, out / "runs" / name, progress=progress).fit()
        seconds[name] = round(time.perf_counter() - t, 1)
    trained = {name: load_trained(out / "runs" / name)[1] for name in recipes}
    for shots in (1, 5):
        task = f"5-way {shots}-shot"
        sampler = EpisodeSampler(test_ds, 5, shots, 15,
                                 seed=recipes["maml"].seed + SPLIT_SEED_OFFSET["test"])
        for name, algo in trained.items():
            rows.append((name, task, evaluate(algo, sampler, episodes=sz.test_episodes)))
        scratch = scratch_baseline(lambda: build_model(recipes["maml"]), sampler,
                                   episodes=sz.scratch_episodes, steps=50, lr=0.01)
        rows.append(("scratch", task, scratch))
    total = round(time.perf_counter() - t0, 1)
    table = _table(rows)
    results = {
        "rows": [{"method": m, "task": t, **r.to_dict()} for m, t, r in rows],
        "train_seconds": seconds, "total_seconds": total, "size": size,
    }
    report = out / "report"
    atomic_write_text(report / "results.json", json.dumps(results, indent=1))
    atomic_write_text(report / "results.md", (
        "# metafit quickstart\n\nBuilt-in Glyphs characters; test classes unseen in "
        f"training; fixed test episodes, 15 queries per class.\nTraining seconds: {seconds}; "
        f"total {total} s.\n\n{table}\n"))
    results["table"] = table
    return results
