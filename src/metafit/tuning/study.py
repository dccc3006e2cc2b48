"""Hyperparameter and architecture search with Optuna (``metafit tune``; ``tune`` extra).

A study searches the space declared in the recipe's ``search:`` section
(:mod:`metafit.tuning.space`). Each trial is a short meta-training run (``trial_iterations``)
of the recipe with the trial's values, in its own run directory ``OUT/trials/NNNN``,
scored by its best validation score on the recipe's fixed validation episodes or tasks
(:func:`~metafit.tuning.setup.objective_metric`: accuracy, maximised; MSE, minimised; for
a meta-RL recipe, the mean return after ``eval_inner_steps`` adaptation steps,
maximised). Every validation is reported to Optuna, so a pruner (median by default,
Hyperband available) stops unpromising trials early. Supervised and meta-RL recipes run
their trials with their own trainer (:func:`~metafit.training.trainer.make_trainer`).

The study lives in an Optuna storage (SQLite by default, ``OUT/study.db``; any
SQLAlchemy URL works, e.g. PostgreSQL on a cluster), which makes it:

- **resumable**: the same command again continues the study until it holds ``trials``
  finished (complete or pruned) trials; finished trials are never rerun, and the sampler
  is seeded by the number of trials already there, so it does not redraw old points;
- **safe to interrupt**: Ctrl-C marks the running trial FAIL (failed trials never count
  as finished) and the next run queues its values again; a killed process's trial is
  found by its stopped heartbeat, marked FAIL and queued again the same way;
- **parallel**: ``jobs`` processes (or several commands, on several machines) share the
  storage; each process draws from its own sampler seed, TPE with the constant liar.

Samplers: TPE (Bergstra et al. 2011, the default), random search (Bergstra & Bengio 2012)
and grid search. The best complete trial is written as a ready recipe, ``OUT/best.yaml``
(:func:`metafit.tuning.report.write_best_recipe`), to be trained in full with
``metafit train OUT/best.yaml``. Opening the study (storage, sampler, pruner, the check that
it belongs to the recipe): :mod:`metafit.tuning.setup`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metafit.config.schema import Recipe, make_recipe
from metafit.tuning.options import TuneOptions, TuneResult
from metafit.tuning.setup import (
    finished_states,
    finished_trials,
    objective_metric,
    open_study,
    optuna_module,
    storage_url,
    trial_recipe,
)
from metafit.tuning.space import (
    SearchSpace,
    grid_size,
    grid_values,
    parse_search_space,
    suggest,
)

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["TuneOptions", "TuneResult", "tune", "run_study", "summarize"]

log = logging.getLogger(__name__)


def _objective(recipe: Recipe, space: SearchSpace, opts: TuneOptions) -> Any:
    opt = optuna_module()
    from metafit.training.trainer import make_trainer

    worst = objective_metric(recipe).worst

    def objective(trial: optuna.trial.Trial) -> float:
        params = suggest(space, trial)
        run_dir = Path(opts.out) / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        pruned: list[int] = []

        def on_validation(iteration: int, score: float) -> bool:
            if not math.isfinite(score):  # a diverged validation: nothing to compare
                return False
            trial.report(score, iteration)
            if trial.should_prune():
                pruned.append(iteration)
                return True
            return False

        try:
            r = trial_recipe(recipe, params, opts, trial.number)
            with _quiet("metafit.training.trainer"), _quiet("metafit.training.rl"):
                state = make_trainer(r, run_dir, progress=False,
                                     on_validation=on_validation).fit()
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        trial.set_user_attr("train_seconds", round(state.train_seconds, 2))
        trial.set_user_attr("best_iteration", state.best_iteration)
        if pruned:
            raise opt.TrialPruned(f"pruned at iteration {pruned[0]}")
        return worst if state.best_score is None else float(state.best_score)

    return objective


def _check_trial_dirs(study: optuna.Study, opts: TuneOptions) -> None:
    """Refuse an ``OUT/trials`` holding runs this study does not know (another study's):
    new trials would find their directories taken."""
    root = Path(opts.out) / "trials"
    known = {f"{t.number:04d}" for t in study.get_trials(deepcopy=False)}
    strangers = sorted(p.name for p in root.glob("*") if p.name not in known) \
        if root.is_dir() else []
    if strangers:
        raise ValueError(f"{root} holds trial runs that study '{study.study_name}' does "
                         f"not know ({', '.join(strangers[:3])}...): they belong to another "
                         "study or storage; choose another --out")


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    """Silence ``logger``'s INFO lines (a trial's validations) for the block."""
    lg = logging.getLogger(logger)
    level = lg.level
    lg.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        lg.setLevel(level)


def _requeue_interrupted(study: optuna.Study) -> None:
    """Queue again the values of trials interrupted by Ctrl-C (once each)."""
    from optuna.trial import TrialState

    done = set(study.user_attrs.get("requeued", []))
    todo = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.user_attrs.get("interrupted") and t.number not in done]
    for t in todo:
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.info("trial %d was interrupted: its values are queued again", t.number)
    if todo:
        study.set_user_attr("requeued", sorted(done | {t.number for t in todo}))


def _log_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
    metric = study.user_attrs.get("metric", "value")
    if trial.state.name == "COMPLETE":
        outcome = f"{metric} {_fmt(trial.value)}"
    elif trial.state.name == "PRUNED":
        last = max(trial.intermediate_values) if trial.intermediate_values else 0
        outcome = f"pruned at iteration {last}"
    else:
        outcome = trial.state.name.lower()
    try:
        best = f"; best {_fmt(study.best_value)} (trial {study.best_trial.number})"
    except ValueError:
        best = ""
    log.info("trial %d: %s -> %s%s", trial.number, params, outcome, best)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _target(space: SearchSpace, opts: TuneOptions) -> int:
    if opts.trials is not None:
        return opts.trials
    if opts.sampler == "grid":
        return grid_size(space)
    raise ValueError("give --trials N: the number of finished trials the study should reach")


def run_study(recipe: Recipe, opts: TuneOptions, job: int = 0) -> None:
    """One process's share of the study: trials until the study holds ``trials``
    finished ones (or ``timeout``)."""
    optuna = optuna_module()
    space = parse_search_space(recipe)
    target = _target(space, opts)
    study = open_study(recipe, opts, job)
    # a trial whose process died stays RUNNING until a heartbeat check fails it: check
    # now, not only once trials run, or a study already at its count keeps it forever
    optuna.storages.fail_stale_trials(study)
    remaining = target - len(finished_trials(study))
    if remaining <= 0:
        return
    stop = optuna.study.MaxTrialsCallback(target, states=finished_states())
    study.optimize(_objective(recipe, space, opts), n_trials=remaining,
                   show_progress_bar=opts.progress and job == 0,
                   timeout=opts.timeout, callbacks=[stop, _log_trial],
                   catch=(ValueError, RuntimeError, FloatingPointError))


def _job(recipe_values: dict[str, Any], opts_values: dict[str, Any], job: int,
         threads: int) -> None:
    """Entry point of a parallel worker process."""
    import torch

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(threads)
    run_study(make_recipe(recipe_values), TuneOptions(**opts_values), job)


def tune(recipe: Recipe, opts: TuneOptions) -> TuneResult:
    """Run (or continue) the study of ``recipe`` and write ``OUT/best.yaml``.

    The search space is checked first: a bad space raises :class:`RecipeError` before the
    storage is touched.
    """
    from metafit.tuning.report import write_best_recipe

    optuna_module()  # without Optuna: a clear error before anything is created
    space = parse_search_space(recipe)
    _target(space, opts)
    if opts.sampler == "grid":
        grid_values(space)  # a range without a grid, or too many points: before the storage
    if opts.jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {opts.jobs})")
    log.info("study '%s' in %s: %s", opts.study or recipe.name,
             storage_url(opts.storage, opts.out), "; ".join(space.describe()))
    study = open_study(recipe, opts)
    _check_trial_dirs(study, opts)
    _requeue_interrupted(study)
    if opts.jobs == 1:
        run_study(recipe, opts)
    else:
        _run_parallel(recipe, opts)
    study = open_study(recipe, opts)
    best = write_best_recipe(study, recipe, opts)
    return summarize(study, opts, best)


def _run_parallel(recipe: Recipe, opts: TuneOptions) -> None:
    import multiprocessing as mp

    import torch

    threads = max(1, (os.cpu_count() or 1) // opts.jobs)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_job, args=(recipe.model_dump(), asdict(opts), j, threads))
             for j in range(1, opts.jobs)]
    for p in procs:
        p.start()
    try:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            run_study(recipe, opts, 0)
        finally:
            torch.set_num_threads(previous)
    finally:
        for p in procs:
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise RuntimeError(f"{len(failed)} tuning worker process(es) failed "
                           f"(exit codes {failed}); the study is kept, rerun to continue")


def summarize(study: optuna.Study, opts: TuneOptions, best_recipe: Path | None) -> TuneResult:
    """Counts and the best trial of ``study``."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    return TuneResult(
        study=study.study_name, storage=storage_url(opts.storage, opts.out),
        direction=study.direction.name.lower(),
        metric=str(study.user_attrs.get("metric", "value")),
        finished=len(finished_trials(study)), complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_trial=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        best_recipe=None if best_recipe is None else str(best_recipe))

