"""What a warm-started run forgot: accuracy on the previous run's test tasks before and after.

A recipe with ``init_from: RUN`` starts from ``RUN``'s best checkpoint and meta-trains on
its own tasks (continual re-meta-training). :func:`measure_forgetting` scores, on the
*previous* run's fixed test episodes (its recipe's data, ways, shots, queries, seed and
``test_episodes``; :func:`~metafit.runs.trained.split_sampler`, the episodes ``metafit
evaluate RUN`` scores):

- ``before``: the warm-start weights (``RUN``'s best checkpoint, the one ``init_from``
  reads; from a run of another algorithm, its body in the new algorithm as initialised:
  :func:`~metafit.runs.checkpoints.restore_warm_start`);
- ``after``: the new run's best checkpoint;

both with the new run's algorithm (its inner steps, rates and test-time classifier), so
only the weights differ, and both as deployed (BatchNorm with the support set's
statistics, the default of ``metafit evaluate``). ``delta`` is ``after - before`` with the
95% CI of the per-episode differences (the episodes are the same, so the interval is
paired and narrower than either figure's). The evaluation protocol is
:func:`metafit.evaluation.protocol.evaluate` (mean +- 1.96 s / sqrt(n), Finn et al. 2017).

The figures go to ``RUN_DIR/forgetting.json`` (atomic), written at the end of training
(:func:`record_forgetting`) and shown by ``metafit report``. A previous run whose data are
gone is skipped with a warning (the file then says ``"status": "skipped"`` and why); a
previous run directory that is not one, is meta-RL, or has no loadable checkpoint is an
error (:func:`check_previous_run`, the run directory's own checks).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.schema import Recipe
from metafit.data.errors import DatasetError
from metafit.evaluation.protocol import EvalResult, ci95, evaluate
from metafit.io import atomic_write_text
from metafit.runs.checkpoints import restore_warm_start, warm_start_scope
from metafit.runs.directory import RunDir, RunDirError, load_checkpoint
from metafit.runs.trained import check_count, load_trained, split_sampler

__all__ = ["FORGETTING_FILE", "check_previous_run", "measure_forgetting",
           "record_forgetting", "read_forgetting", "figure_text", "summary"]

log = logging.getLogger(__name__)

#: The file of a run directory that holds the forgetting figure.
FORGETTING_FILE = "forgetting.json"


def check_previous_run(path: str | Path) -> tuple[Recipe, Path]:
    """The recipe of the run ``path`` (an ``init_from``) and the checkpoint a warm start
    reads (its best, else its last), checked as every run directory read back is.

    Raises:
        FileNotFoundError: ``path`` is not a run directory (no ``config.yaml``).
        RecipeError: its ``config.yaml`` is not a valid recipe.
        CheckpointError: it has no checkpoint to start from.
        ValueError: it is a meta-RL run (no test episodes to score).
    """
    run = RunDir(path)
    if not run.path.is_dir():
        raise FileNotFoundError(f"init_from: {run.path} is not a directory (a run directory "
                                "written by `metafit train`)")
    recipe = run.read_recipe()
    if recipe.is_rl:
        raise ValueError(f"init_from: {run.path} is a meta-RL run; its forgetting figure "
                         "(test episodes before and after) applies to supervised runs")
    return recipe, run.trained_checkpoint("best")


def measure_forgetting(run: str | Path, episodes: int | None = None,
                       progress: bool = False) -> dict[str, Any]:
    """The forgetting figure of the warm-started run ``run`` (module docstring), as the
    JSON object :func:`record_forgetting` writes. ``episodes``: how many of the previous
    run's fixed test episodes (default: its recipe's ``test_episodes``).

    Raises:
        ValueError: ``run``'s recipe has no ``init_from``; ``episodes`` not a positive
            integer; and the errors of :func:`check_previous_run` and
            :func:`~metafit.runs.trained.load_trained`.
        FileNotFoundError, DatasetError: the previous run's data cannot be read.
    """
    check_count("episodes", episodes, default="the previous run's test_episodes")
    recipe, algo = load_trained(run, "best")
    if not recipe.init_from:
        raise ValueError(f"{run} was not warm-started (its recipe has no init_from): it has "
                         "no previous run to measure forgetting on")
    previous = Path(recipe.init_from).resolve()
    old_recipe, source = check_previous_run(previous)
    sampler = split_sampler(old_recipe, "test")  # the previous run's data, fixed episodes
    n = old_recipe.test_episodes if episodes is None else episodes

    def score(desc: str) -> EvalResult:
        return evaluate(algo, sampler, episodes=n, progress=progress, desc=desc,
                        batch_norm="support")

    after = score("forgetting: after")
    warm = load_checkpoint(source)
    if warm_start_scope(algo, warm, recipe.algorithm) == "body":
        # the warm start of another algorithm's run: its body in a freshly built
        # algorithm (seeded as the trainer built it), the rest at its initial values
        own = load_checkpoint(RunDir(run).trained_checkpoint("best"))
        algo = build_algorithm(recipe, own.get("num_train_classes")).to(
            next(algo.parameters()).device).eval()
    restore_warm_start(algo, warm, str(source), recipe.algorithm)  # the warm start
    before = score("forgetting: before")
    diff = torch.tensor(after.per_episode, dtype=torch.float64) - torch.tensor(
        before.per_episode, dtype=torch.float64)  # [n], paired: the same episodes
    return {
        "status": "measured", "previous_run": str(previous), "previous_checkpoint": str(source),
        "checkpoint": "best", "split": "test", "metric": after.metric,
        "episodes": after.episodes, "ways": after.ways, "shots": after.shots,
        "queries": after.queries, "steps": after.steps, "batch_norm": after.batch_norm,
        "before": {"mean": before.mean, "ci95": before.ci95},
        "after": {"mean": after.mean, "ci95": after.ci95},
        "delta": {"mean": float(diff.mean()), "ci95": ci95(diff)},
    }


def record_forgetting(run: str | Path, episodes: int | None = None,
                      progress: bool = False) -> dict[str, Any]:
    """:func:`measure_forgetting`, written to ``run/forgetting.json`` (atomic) and
    returned. Where the previous run's data cannot be read (moved, deleted, corrupt) it
    logs a warning and writes ``{"status": "skipped", "reason": ...}`` instead: the new run
    itself is fine.

    Raises:
        the errors of :func:`measure_forgetting` other than unreadable data (a previous
        run directory that is no longer one is an error, checked first).
    """
    recipe = RunDir(run).read_recipe()
    if recipe.init_from:  # the previous run itself must be sound: its errors are raised
        check_previous_run(recipe.init_from)
    log.info("%s: scoring the previous run's test episodes before and after (forgetting)",
             run)
    try:
        figure = measure_forgetting(run, episodes, progress)
    except (FileNotFoundError, DatasetError) as e:
        log.warning("%s: forgetting not measured: the data of the previous run %s cannot "
                    "be read (%s)", run, recipe.init_from, e)
        figure = {"status": "skipped", "previous_run": str(recipe.init_from),
                  "reason": f"the previous run's data cannot be read: {e}"}
    atomic_write_text(RunDir(run).path / FORGETTING_FILE, json.dumps(figure, indent=1))
    if figure["status"] == "measured":
        log.info("%s: forgetting (previous run's test tasks): %s", run, summary(figure))
    return figure


def figure_text(figure: dict[str, Any], key: str, sign: bool = False) -> str:
    """``figure[key]`` (``before``, ``after`` or ``delta``) as text: ``"93.50 % +- 1.20"``
    for an accuracy (in percent; ``"+1.20 % +- 0.30"`` with ``sign``), else the metric's own
    value."""
    value = figure[key]
    scale, unit = (100.0, " %") if figure.get("metric") == "accuracy" else (1.0, "")
    return (f"{scale * value['mean']:{'+' if sign else ''}.2f}{unit} +- "
            f"{scale * value['ci95']:.2f}")


def summary(figure: dict[str, Any]) -> str:
    """One line of a :func:`read_forgetting` figure (or why it was skipped)."""
    if figure["status"] != "measured":
        return f"not measured ({figure.get('reason', '')})"
    return (f"{figure.get('metric')} before {figure_text(figure, 'before')}, after "
            f"{figure_text(figure, 'after')}, delta {figure_text(figure, 'delta', True)} "
            f"({figure['episodes']} test episodes of {figure.get('previous_run')})")


def read_forgetting(run: str | Path) -> dict[str, Any] | None:
    """``run/forgetting.json`` checked (``None`` where there is none). A file written by
    another hand is untrusted: it must be a JSON object with a known ``status`` and, when
    measured, finite numbers for ``before``, ``after`` and ``delta``.

    Raises:
        RunDirError: the file is malformed (the message names it).
    """
    path = RunDir(run).path / FORGETTING_FILE
    if not path.is_file():
        return None
    try:
        figure = json.loads(path.read_bytes())
    except ValueError as e:
        raise RunDirError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(figure, dict) or figure.get("status") not in ("measured", "skipped"):
        raise RunDirError(f"{path} is not a forgetting figure (a JSON object with status "
                          "'measured' or 'skipped')")
    if figure["status"] == "skipped":
        return figure
    for key in ("before", "after", "delta"):
        value = figure.get(key)
        if not (isinstance(value, dict) and all(_is_number(value.get(k), k == "ci95")
                                                for k in ("mean", "ci95"))):
            raise RunDirError(f"{path}: '{key}' must hold a number 'mean' and 'ci95'")
    if not isinstance(figure.get("episodes"), int) or isinstance(figure["episodes"], bool):
        raise RunDirError(f"{path}: 'episodes' must be an integer")
    return figure


def _is_number(value: Any, nan_ok: bool) -> bool:
    """A real JSON number (not a bool); NaN allowed where ``nan_ok`` (a CI over a single
    episode)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) or nan_ok

