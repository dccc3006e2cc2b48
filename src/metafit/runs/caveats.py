"""When a run is too short to trust, and the words that say so.

A report warns (a banner on its figures, a block in ``report.md``, ``results.md`` and
``index.html``) when

- a meta-trained run completed fewer than :data:`MIN_ITERATIONS` meta-iterations: its
  curves are a few noisy points and its accuracy says little about the method (the
  shortest shipped recipe, BANKING77 protocol A, runs 100); algorithms with nothing to
  meta-train (``meta_trained`` capability off) are exempt;
- results rest on fewer than :data:`MIN_EPISODES` evaluation episodes: the 95% interval
  ``1.96 s / sqrt(n)`` assumes a roughly normal mean, which a few episodes do not give,
  and its width is itself a rough estimate.
"""

from __future__ import annotations

from collections.abc import Mapping

from metafit.algorithms.registry import get_algorithm
from metafit.runs.directory import RunDir

__all__ = ["MIN_ITERATIONS", "MIN_EPISODES", "completed_iterations", "short_run_caveats"]

#: Fewer meta-iterations than this: the run is too short to say anything about its method.
MIN_ITERATIONS = 100
#: Fewer evaluation episodes than this: the confidence intervals are not to be trusted.
MIN_EPISODES = 30


def completed_iterations(run: RunDir) -> int:
    """The meta-iterations ``run`` completed: its status's count, else the last iteration
    of its metrics (0 for a run that logged none)."""
    status = run.status()
    if isinstance(status.get("iteration"), int):
        return int(status["iteration"])
    iterations = [int(r["iteration"]) for r in run.read_metrics() if "iteration" in r]
    return max(iterations, default=0)


def short_run_caveats(runs: Mapping[str, RunDir], episodes: int | None = None) -> list[str]:
    """One line per reason the runs (label -> run directory) are too short to trust:
    meta-trained runs under :data:`MIN_ITERATIONS` iterations, and ``episodes`` (the
    fewest evaluation episodes behind a reported result; None: not checked) under
    :data:`MIN_EPISODES`. Empty when there is nothing to warn about."""
    short = []
    for label, run in runs.items():
        recipe = run.read_recipe()  # meta-RL: all but the scratch baseline are trained
        trained = (recipe.rl_meta_trained if recipe.is_rl
                   else get_algorithm(recipe.algorithm).meta_trained)
        if not trained:
            continue
        done = completed_iterations(run)
        if done < MIN_ITERATIONS:
            short.append(f"{label} ({done})")
    lines = []
    if short:
        lines.append(f"meta-trained for fewer than {MIN_ITERATIONS} iterations: "
                     f"{', '.join(short)}. Such runs are too short to say anything about "
                     "their methods; treat these curves and numbers as a smoke test.")
    if episodes is not None and episodes < MIN_EPISODES:
        lines.append(f"results over only {episodes} evaluation episodes (fewer than "
                     f"{MIN_EPISODES}): the 95% intervals are too rough to rank methods.")
    return lines
