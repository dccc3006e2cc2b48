"""Hyperparameter and architecture search with Optuna (``metafit tune``; ``tune`` extra).

A study searches the space declared in the recipe's ``search:`` section
(:mod:`metafit.tuning.space`). Each trial is a short meta-training run (``trial_iterations``)
of the recipe with the trial's values, in its own run directory ``OUT/trials/NNNN``,
scored by its best validation score on the recipe's fixed validation episodes (accuracy,
maximised; MSE, minimised). Every validation is reported to Optuna, so a pruner (median
by default, Hyperband available) stops unpromising trials early.

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
``metafit train OUT/best.yaml``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metafit.config.schema import Recipe, make_recipe
from metafit.tuning.options import TuneOptions, TuneResult
from metafit.tuning.space import SearchSpace, grid_size, grid_values, parse_search_space, suggest

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["TuneOptions", "TuneResult", "tune", "open_study", "storage_url",
           "trial_recipe", "finished_trials"]

log = logging.getLogger(__name__)


#: Recipe keys that may differ when a study is continued (they change speed, not results).
RESUMABLE_CHANGES = ("threads", "task_workers", "vmap_chunk")
#: Validations per trial at least (so the pruner has points to compare).
MIN_REPORTS = 5


def _optuna() -> Any:
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("`metafit tune` needs Optuna: pip install 'metafit[tune]'") from e
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(storage: str | None, out: str | Path) -> str:
    """An SQLAlchemy URL: ``storage`` as given, a plain path as SQLite, or
    ``sqlite:///OUT/study.db`` by default. Creates a SQLite file's directory."""
    if storage is None:
        storage = str(Path(out) / "study.db")
    if "://" not in storage:
        storage = f"sqlite:///{Path(storage).resolve()}"
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return storage


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete and pruned trials: the ones that count towards ``trials``."""
    states = _finished_states()
    return study.get_trials(deepcopy=False, states=states)


def _finished_states() -> tuple[Any, ...]:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _fingerprint(recipe: Recipe, opts: TuneOptions) -> dict[str, Any]:
    data = recipe.model_dump(exclude=set(RESUMABLE_CHANGES))
    return {"recipe": data, "trial_iterations": _trial_iterations(recipe, opts),
            "sampler": opts.sampler, "pruner": opts.pruner}


def _trial_iterations(recipe: Recipe, opts: TuneOptions) -> int:
    return recipe.iterations if opts.trial_iterations is None else opts.trial_iterations


def _storage(url: str, opts: TuneOptions) -> Any:
    optuna = _optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # Optuna >= 4.9
        kwargs["heartbeat_stale_trial_callback"] = \
            optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
    else:  # pragma: no cover - older Optuna
        kwargs["failed_trial_callback"] = optuna.storages.RetryFailedTrialCallback(max_retry=1)
    return optuna.storages.RDBStorage(
        url, heartbeat_interval=opts.heartbeat_interval, grace_period=opts.grace_period,
        **kwargs)


def _sampler(space: SearchSpace, opts: TuneOptions, seed: int, parallel: bool) -> Any:
    optuna = _optuna()
    if opts.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel)


def _pruner(recipe: Recipe, opts: TuneOptions) -> Any:
    optuna = _optuna()
    if opts.pruner == "none":
        return optuna.pruners.NopPruner()
    if opts.pruner == "hyperband":
        every = _trial_recipe_values(recipe, opts)["val_every"]
        return optuna.pruners.HyperbandPruner(min_resource=every,
                                              max_resource=_trial_iterations(recipe, opts))
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)


def _sampler_seed(base: int, existing: int, job: int) -> int:
    """Seed of one process's sampler: differs per job and per resumption, so neither
    parallel processes nor a continued study redraw the same points."""
    import numpy as np

    return int(np.random.SeedSequence([base, existing, job]).generate_state(1)[0])


def open_study(recipe: Recipe, opts: TuneOptions, job: int = 0) -> optuna.Study:
    """Create the study or load it from the storage, checking it belongs to this recipe.

    Raises:
        RecipeError: the search space is invalid (nothing is created then).
        ValueError: the storage holds a study of the same name for another recipe,
            search space, trial budget, sampler or pruner.
    """
    optuna = _optuna()
    space = parse_search_space(recipe)
    url = storage_url(opts.storage, opts.out)
    name = opts.study or recipe.name
    storage = _storage(url, opts)
    direction = "minimize" if recipe.is_regression else "maximize"
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    fingerprint = _fingerprint(recipe, opts)
    if name in existing:
        probe = optuna.load_study(study_name=name, storage=storage)
        saved = probe.user_attrs.get("fingerprint")
        if saved is not None and saved != json.loads(json.dumps(fingerprint)):
            differ = _differences(saved, fingerprint)
            raise ValueError(f"study '{name}' in {url} was made for another set-up (differs "
                             f"in {', '.join(differ)}); pass another --study or --storage")
        count = len(probe.trials)
    else:
        count = 0
    seed = opts.seed if opts.seed is not None else recipe.seed
    study = optuna.create_study(
        storage=storage, study_name=name, direction=direction, load_if_exists=True,
        sampler=_sampler(space, opts, _sampler_seed(seed, count, job), opts.jobs > 1),
        pruner=_pruner(recipe, opts))
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("metric", "mse" if recipe.is_regression else "accuracy")
    return study


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    now = json.loads(json.dumps(now))
    keys = [k for k in now if k != "recipe" and saved.get(k) != now[k]]
    old, new = saved.get("recipe", {}), now["recipe"]
    keys += [k for k in new if old.get(k) != new[k]]
    return keys or ["its settings"]


def _trial_recipe_values(recipe: Recipe, opts: TuneOptions) -> dict[str, Any]:
    iterations = _trial_iterations(recipe, opts)
    every = min(recipe.val_every, max(1, iterations // MIN_REPORTS))
    return {"iterations": iterations, "val_every": every,
            "checkpoint_every": min(recipe.checkpoint_every, iterations)}


def trial_recipe(recipe: Recipe, params: dict[str, Any], opts: TuneOptions,
                 number: int | None = None) -> Recipe:
    """The recipe a trial trains: the study's recipe with the trial's ``params`` and the
    trial budget (``trial_iterations``, at least ``MIN_REPORTS`` validations); no
    ``search``."""
    values = recipe.model_dump(exclude={"search"})
    values.update(params)
    values.update(_trial_recipe_values(recipe, opts))
    if number is not None:
        values["name"] = f"{recipe.name}_trial{number}"
    return make_recipe(values, f"trial {number} of the study")


def _objective(recipe: Recipe, space: SearchSpace, opts: TuneOptions) -> Any:
    opt = _optuna()
    from metafit.training.trainer import Trainer

    worst = math.inf if recipe.is_regression else -math.inf

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
            with _quiet("metafit.training.trainer"):
                state = Trainer(r, run_dir, progress=False, on_validation=on_validation).fit()
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
    optuna = _optuna()
    space = parse_search_space(recipe)
    target = _target(space, opts)
    study = open_study(recipe, opts, job)
    remaining = target - len(finished_trials(study))
    if remaining <= 0:
        return
    stop = optuna.study.MaxTrialsCallback(target, states=_finished_states())
    study.optimize(_objective(recipe, space, opts), n_trials=remaining,
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

    space = parse_search_space(recipe)
    _target(space, opts)
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
        finished=len(finished_trials(study)), complete=len(complete),
        pruned=sum(t.state == TrialState.PRUNED for t in trials),
        failed=sum(t.state == TrialState.FAIL for t in trials),
        best_trial=None if best is None else best.number,
        best_value=None if best is None else best.value,
        best_params={} if best is None else dict(best.params),
        best_recipe=None if best_recipe is None else str(best_recipe))


def load_existing_study(recipe: Recipe, opts: TuneOptions) -> optuna.Study:
    """The study of ``recipe`` in the storage, which must exist (for ``--report``)."""
    optuna = _optuna()
    url = storage_url(opts.storage, opts.out)
    name = opts.study or recipe.name
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    if name not in names:
        raise ValueError(f"no study '{name}' in {url}"
                         + (f" (it holds: {', '.join(names)})" if names else ""))
    return optuna.load_study(study_name=name, storage=url)

