"""``metafit quickstart``: the first job of a fresh install, with no data to download.

It meta-trains on the built-in :class:`~metafit.data.Glyphs` characters (train classes),
then compares on *unseen* test classes, on the same fixed 5-way episodes:

- MAML (second order) and ProtoNet, meta-trained for a short budget;
- FineTune: one network pretrained on all training classes jointly, a new head fit on
  each support set;
- Scratch: a network trained on the support set alone.

Results (mean accuracy +- 95% CI) are printed as a table and written to
``OUT/report/results.md`` and ``results.json`` with PNG plots (``results.png``: the table
as bars; ``training.png``: meta-training and validation curves; ``adaptation_5w1s.png`` /
``adaptation_5w5s.png``: accuracy after 0..S inner steps; ``episode.png``: one test
episode with MAML's predictions). Each method's run directory is kept under ``OUT/runs``
so ``metafit evaluate`` and ``metafit report`` work on it.

The same comparison runs on real images: ``quickstart(data_root=DIR)`` on a directory of
Omniglot zips, or ``quickstart(recipe=NAME_OR_YAML, data_root=DIR)`` to take the dataset
keys (dataset, image size, channels, rotations, split) from a recipe.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafit.algorithms.from_recipe import build_model
from metafit.config.recipe import load_recipe
from metafit.config.schema import IMAGE_DATASETS, Recipe, make_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.data.splits import load_split
from metafit.evaluation.protocol import EvalResult, evaluate, scratch_baseline
from metafit.io import atomic_write_text
from metafit.runs.caveats import short_run_caveats
from metafit.runs.directory import RunDir
from metafit.runs.trained import load_trained, split_sampler
from metafit.training.trainer import Trainer

__all__ = ["QuickstartSize", "quickstart", "SIZES"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuickstartSize:
    """How much work quickstart does (``default``: minutes on a CPU; ``tiny``: seconds)."""

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


#: Recipe keys that say which data the quickstart runs on (taken from a user's recipe).
DATA_KEYS = ("dataset", "data_root", "image_size", "channels", "image_crop", "rotations",
             "split_scheme", "holdout_fraction", "image_column", "label_column",
             "absolute_image_paths")
#: One row of the results table: (method, task, result).
Row = tuple[str, str, EvalResult]


def data_keys(size: QuickstartSize, recipe: str | None = None,
              data_root: str | None = None) -> dict[str, Any]:
    """The data part of the quickstart recipes: built-in Glyphs by default; a recipe's
    data keys; or Omniglot when ``data_root`` alone holds Omniglot zips or folders."""
    if recipe is None and data_root is None:
        return {"dataset": "glyphs", "image_size": size.image_size}
    if recipe is None:
        from metafit.data.omniglot import OMNIGLOT_SETS

        assert data_root is not None
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data-root {root} is not a directory")
        if not any((root / f"{n}.zip").is_file() or (root / n).is_dir()
                   for n in OMNIGLOT_SETS):
            raise ValueError(f"{root} holds no Omniglot zips; for other images give a "
                             "recipe too (e.g. a YAML with dataset: image_folder)")
        recipe = "omniglot_5w1s_protonet"
    base = load_recipe(recipe, [f"data_root={data_root}"] if data_root else [])
    if base.dataset not in IMAGE_DATASETS:
        raise ValueError(f"quickstart compares image classifiers; recipe {recipe!r} uses "
                         f"dataset {base.dataset!r} (use one of {', '.join(IMAGE_DATASETS)})")
    dumped = base.model_dump()
    return {k: dumped[k] for k in DATA_KEYS if k in dumped}


def _recipes(size: QuickstartSize, data: dict[str, Any] | None = None) -> dict[str, Recipe]:
    common: dict[str, Any] = dict(
        dataset="glyphs", image_size=size.image_size, model="conv4", hidden=size.hidden,
        ways=5, shots=1, queries=5, test_ways=5, test_shots=1, test_queries=15,
        val_episodes=size.val_episodes, test_episodes=size.test_episodes, log_every=10,
        checkpoint_every=100, seed=0,
    )
    common.update(data or {})
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


def _table(rows: list[Row]) -> str:
    lines = ["| method | task | accuracy (%) | 95% CI | episodes |",
             "|---|---|---|---|---|"]
    for method, task, r in rows:
        lines.append(f"| {method} | {task} | {100 * r.mean:.2f} | +- {100 * r.ci95:.2f} | "
                     f"{r.episodes} |")
    return "\n".join(lines)


def quickstart(out: str | Path = "runs/quickstart", size: str = "default",
               progress: bool = True, recipe: str | None = None,
               data_root: str | None = None) -> dict[str, Any]:
    """Run the quickstart into ``out``; returns the results as a dict (also saved).

    Args:
        out: output directory (``runs/`` and ``report/`` inside).
        size: ``"default"`` (a few minutes on a CPU) or ``"tiny"`` (seconds).
        progress: progress bars (training, evaluation) on stderr.
        recipe, data_root: run on real data instead of Glyphs (see the module docstring).
    """
    if size not in SIZES:
        raise ValueError(f"unknown quickstart size '{size}'; choose {', '.join(SIZES)}")
    sz, out = SIZES[size], Path(out)
    t0 = time.perf_counter()
    recipes = _recipes(sz, data_keys(sz, recipe, data_root))
    test_ds = load_split(recipes["maml"], "test")  # fail on bad data before any training
    seconds = _train(recipes, out, progress)
    trained = {name: load_trained(out / "runs" / name)[1] for name in recipes}
    maml_steps = _steps_on_validation(trained["maml"], recipes["maml"], sz)
    rows, samplers = _test(recipes, trained, maml_steps, test_ds, sz, progress)
    total = round(time.perf_counter() - t0, 1)
    table = _table(rows)
    report = out / "report"
    runs = {n: RunDir(out / "runs" / n) for n in recipes}
    warnings = short_run_caveats(runs, min(r.episodes for _, _, r in rows))
    plots = _plots(report, rows, runs, trained, samplers[1],
                   list(getattr(test_ds, "classes", [])), warnings)
    results = {
        "rows": [{"method": m, "task": t, **r.to_dict()} for m, t, r in rows],
        "train_seconds": seconds, "total_seconds": total, "size": size,
        "dataset": recipes["maml"].dataset, "plots": [p.name for p in plots],
        "maml_test_steps": {f"{k}-shot": v for k, v in maml_steps.items()},
    }
    atomic_write_text(report / "results.json", json.dumps(results, indent=1))
    _write_markdown(report / "results.md", recipes["maml"], table, plots, seconds, total,
                    maml_steps, warnings)
    results["table"] = table
    return results


def _train(recipes: dict[str, Recipe], out: Path, progress: bool) -> dict[str, float]:
    """Meta-train each recipe into ``out/runs/NAME``; returns the seconds each took."""
    stages = len(recipes) + 2
    seconds: dict[str, float] = {}
    for i, (name, r) in enumerate(recipes.items(), 1):
        log.info("[%d/%d] meta-training %s on %s (%d iterations)", i, stages, name,
                 r.dataset, r.iterations)
        t = time.perf_counter()
        Trainer(r, out / "runs" / name, progress=progress).fit()
        seconds[name] = round(time.perf_counter() - t, 1)
    return seconds


def _test(recipes: dict[str, Recipe], trained: dict[str, Any], maml_steps: dict[int, int],
          test_ds: Any, size: QuickstartSize, progress: bool
          ) -> tuple[list[Row], dict[int, EpisodeSampler]]:
    """Every trained method and the scratch baseline on the same fixed 5-way 1-shot and
    5-shot test episodes: the table's rows, and the sampler of each shot count."""
    stages = len(recipes) + 2
    rows: list[Row] = []
    samplers: dict[int, EpisodeSampler] = {}
    for j, shots in enumerate((1, 5)):
        task = f"5-way {shots}-shot"
        log.info("[%d/%d] testing on %s episodes of unseen classes (%s)", len(recipes) + 1 + j,
                 stages, size.test_episodes, task)
        samplers[shots] = sampler = split_sampler(recipes["maml"], "test", test_ds, shots)
        for name, algo in trained.items():
            steps = maml_steps[shots] if name == "maml" else None
            rows.append((name, task, evaluate(algo, sampler, episodes=size.test_episodes,
                                              steps=steps, progress=progress,
                                              desc=f"{name} {task}")))
        scratch = scratch_baseline(lambda: build_model(recipes["maml"]), sampler,
                                   episodes=size.scratch_episodes, steps=50, lr=0.01,
                                   progress=progress)
        rows.append(("scratch", task, scratch))
    return rows, samplers


def _write_markdown(path: Path, maml: Recipe, table: str, plots: list[Path],
                    seconds: dict[str, float], total: float, maml_steps: dict[int, int],
                    warnings: list[str]) -> None:
    """``results.md``: the warnings, what ran on which data, the table, the plots."""
    where = ("built-in Glyphs characters" if maml.dataset == "glyphs"
             else f"{maml.dataset} data in {maml.data_root}")
    images = "\n".join(f"![{p.stem}]({p.name})" for p in plots)
    warned = "".join(f"> **Warning:** {w}\n\n" for w in warnings)
    trained = ", ".join(f"{name} {s:g} s" for name, s in seconds.items())
    atomic_write_text(path, (
        f"# metafit quickstart\n\n{warned}{where}; test classes unseen in training; the "
        f"same fixed test episodes for every method, 15 queries per class.\nMeta-training "
        f"time: {trained}; {total:g} s in all.\nMAML's test-time inner steps, chosen on "
        f"validation episodes: {maml_steps[1]} (1-shot), {maml_steps[5]} (5-shot).\n\n"
        f"{table}\n\n{images}\n"))


def _steps_on_validation(algo: Any, recipe: Recipe, size: QuickstartSize) -> dict[int, int]:
    """MAML's test-time inner steps for 1 and 5 shots: the step count (1..eval_inner_steps)
    with the best accuracy on the fixed *validation* episodes. Meta-trained at 1 shot, a
    step size that suits 1-shot support sets can overshoot on 5-shot ones."""
    val_ds = load_split(recipe, "val")
    chosen = {}
    for shots in (1, 5):
        result = evaluate(algo, split_sampler(recipe, "val", val_ds, shots),
                          episodes=size.val_episodes,
                          steps=recipe.eval_inner_steps)
        curve = result.curve[1:]  # after 1..S steps
        chosen[shots] = 1 + max(range(len(curve)), key=lambda i: curve[i])
        log.info("MAML %d-shot: %d inner steps at test (validation accuracy after 1..%d "
                 "steps: %s)", shots, chosen[shots], len(curve),
                 ", ".join(f"{100 * c:.1f}" for c in curve))
    return chosen


def _plots(report: Path, rows: list[Row], runs: dict[str, RunDir], trained: dict[str, Any],
           sampler: EpisodeSampler, class_names: list[str], warnings: list[str]) -> list[Path]:
    """The figures, each with ``warnings`` as a banner; methods without inner steps and the
    scratch baseline are levels on the adaptation plots."""
    from metafit.runs.episode_plots import plot_episode
    from metafit.runs.plots import plot_adaptation, plot_results, plot_training

    levels = {name: "no inner steps" for name, algo in trained.items()
              if not type(algo).capabilities()["adapts_with_steps"]}
    levels["scratch"] = "a network trained on the support set alone"
    plots = [plot_results(rows, report / "results.png", banner=warnings,
                          title="Unseen test classes: accuracy (95% CI)"),
             plot_training(runs, report / "training.png", banner=warnings)]
    for task in dict.fromkeys(t for _, t, _ in rows):
        tag = task.replace("5-way ", "5w").replace("-shot", "s")
        plots.append(plot_adaptation({m: r for m, t, r in rows if t == task},
                                     report / f"adaptation_{tag}.png", levels=levels,
                                     title=f"Adaptation on unseen classes, {task}",
                                     banner=warnings))
    plots.append(plot_episode(trained["maml"], sampler.fixed(1)[0], class_names,
                              report / "episode.png", title="MAML, 5-way 1-shot",
                              banner=warnings))
    return plots
