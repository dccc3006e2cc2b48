"""Opening an Optuna study for a recipe (``tune`` extra): its storage, sampler and
pruner, the check that a study being continued was made for the same set-up, and the
recipe each trial trains. Running the trials: :mod:`metafit.tuning.study`.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metafit.config.schema import Recipe, make_recipe
from metafit.tuning.options import TuneOptions
from metafit.tuning.space import SearchSpace, grid_values, parse_search_space

if TYPE_CHECKING:  # pragma: no cover
    import optuna

__all__ = ["RESUMABLE_CHANGES", "MIN_REPORTS", "ObjectiveMetric", "objective_metric",
           "open_study", "load_existing_study",
           "storage_url", "trial_recipe", "finished_trials", "finished_states",
           "optuna_module"]


#: Recipe keys that may differ when a study is continued (they change speed or where the
#: trials are tracked, not results). Left out of a study's fingerprint, and out of saved
#: fingerprints when compared, so that studies made before a key joined still continue.
RESUMABLE_CHANGES = ("threads", "task_workers", "vmap_chunk", "tensorboard", "mlflow",
                     "mlflow_uri", "mlflow_experiment")
#: Validations per trial at least (so the pruner has points to compare).
MIN_REPORTS = 5


@dataclass(frozen=True)
class ObjectiveMetric:
    """What a study optimises: the validation score ``name`` (the first value of a
    trainer's validation record) and its ``direction`` (Optuna's word)."""

    name: str
    direction: str  # "maximize" | "minimize"

    @property
    def worst(self) -> float:
        """The value of a trial that never validated: worse than any real score."""
        return -math.inf if self.direction == "maximize" else math.inf


def objective_metric(recipe: Recipe) -> ObjectiveMetric:
    """The objective of a study of ``recipe``: the validation return after
    ``eval_inner_steps`` adaptation steps for a meta-RL recipe (maximised), the MSE for a
    regression one (minimised), else the accuracy (maximised). It is the score
    :class:`~metafit.training.loop.TrainingLoop` ranks validations by."""
    if recipe.is_rl:
        return ObjectiveMetric("return", "maximize")
    if recipe.is_regression:
        return ObjectiveMetric("mse", "minimize")
    return ObjectiveMetric("accuracy", "maximize")


def optuna_module() -> Any:
    """The ``optuna`` module, its logging quietened (a clear error without the extra)."""
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
    states = finished_states()
    return study.get_trials(deepcopy=False, states=states)


def finished_states() -> tuple[Any, ...]:
    """The trial states that count as finished: COMPLETE and PRUNED."""
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


def _fingerprint(recipe: Recipe, opts: TuneOptions) -> dict[str, Any]:
    data = {k: v for k, v in recipe.applicable_dump().items() if k not in RESUMABLE_CHANGES}
    return {"recipe": data, "trial_iterations": _trial_iterations(recipe, opts),
            "sampler": opts.sampler, "pruner": opts.pruner}


def _comparable(saved: Any, current: Any = None) -> Any:
    """A saved fingerprint without the keys of :data:`RESUMABLE_CHANGES` (an older
    metafit kept some of them in it), and with every recipe key it lacks that the
    ``current`` fingerprint holds at the key's default (a key added to metafit since the
    study was made, e.g. ``normalize_actions``: the study ran at that default)."""
    if isinstance(saved, dict) and isinstance(saved.get("recipe"), dict):
        recipe = {k: v for k, v in saved["recipe"].items() if k not in RESUMABLE_CHANGES}
        now = current.get("recipe") if isinstance(current, dict) else None
        for key, value in (now or {}).items():
            field = Recipe.model_fields.get(key)
            if key not in recipe and field is not None and \
                    json.loads(json.dumps(field.default)) == value:
                recipe[key] = value
        return {**saved, "recipe": recipe}
    return saved


def _trial_iterations(recipe: Recipe, opts: TuneOptions) -> int:
    return recipe.iterations if opts.trial_iterations is None else opts.trial_iterations


def _storage(url: str, opts: TuneOptions) -> Any:
    optuna = optuna_module()
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
    optuna = optuna_module()
    if opts.sampler == "grid":
        return optuna.samplers.GridSampler(grid_values(space), seed=seed)
    if opts.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=parallel)


def _pruner(recipe: Recipe, opts: TuneOptions) -> Any:
    optuna = optuna_module()
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
    optuna = optuna_module()
    space = parse_search_space(recipe)
    url = storage_url(opts.storage, opts.out)
    name = opts.study or recipe.name
    storage = _storage(url, opts)
    objective = objective_metric(recipe)
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    fingerprint = _fingerprint(recipe, opts)
    if name in existing:
        probe = optuna.load_study(study_name=name, storage=storage)
        current = json.loads(json.dumps(fingerprint))
        saved = _comparable(probe.user_attrs.get("fingerprint"), current)
        if saved is not None and saved != current:
            differ = _differences(saved, fingerprint)
            raise ValueError(f"study '{name}' in {url} was made for another set-up (differs "
                             f"in {', '.join(differ)}); pass another --study or --storage")
        count = len(probe.trials)
    else:
        count = 0
    seed = opts.seed if opts.seed is not None else recipe.seed
    study = optuna.create_study(
        storage=storage, study_name=name, direction=objective.direction, load_if_exists=True,
        sampler=_sampler(space, opts, _sampler_seed(seed, count, job), opts.jobs > 1),
        pruner=_pruner(recipe, opts))
    if "fingerprint" not in study.user_attrs:
        study.set_user_attr("fingerprint", fingerprint)
        study.set_user_attr("metric", objective.name)
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



def load_existing_study(recipe: Recipe, opts: TuneOptions) -> optuna.Study:
    """The study of ``recipe`` in the storage, which must exist (for ``--report``)."""
    optuna = optuna_module()
    name = opts.study or recipe.name
    given = str(Path(opts.out) / "study.db") if opts.storage is None else opts.storage
    file = (given.removeprefix("sqlite:///").split("?")[0] if given.startswith("sqlite:///")
            else given if "://" not in given else None)
    if file is not None and not Path(file).is_file():  # reading must not create it
        raise ValueError(f"no study '{name}': {file} does not exist (run the trials first)")
    url = storage_url(opts.storage, opts.out)
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    if name not in names:
        raise ValueError(f"no study '{name}' in {url}"
                         + (f" (it holds: {', '.join(names)})" if names else ""))
    return optuna.load_study(study_name=name, storage=url)

