"""What a study leaves for people: ``best.yaml``, the trials as CSV, and PNG plots.

- ``best.yaml``: the study's recipe with the best complete trial's values, every key
  resolved and no ``search:`` section, trained for the recipe's full ``iterations`` (the
  trials ran the shorter ``trial_iterations``): ``metafit train OUT/best.yaml``.
- ``report/trials.csv``: one row per trial (number, state, value, values, seconds).
- ``report/optimization_history.png``: every trial's value and the best so far.
- ``report/param_importances.png``: fANOVA importances (Hutter et al. 2014) of the
  searched keys for the objective.
- ``report/intermediate_values.png``: validation score against iteration for every
  trial, pruned ones in grey, the best in red: what the pruner saw.
- ``report/slice.png``: the value against each searched key.

With fewer than :data:`MIN_TRIALS` complete trials, every plot says so across its top.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metafit._version import __version__
from metafit.config.schema import Recipe, recipe_to_yaml
from metafit.io import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import optuna

    from metafit.tuning.options import TuneOptions

__all__ = ["write_best_recipe", "write_report", "best_recipe", "few_trials_caveat",
           "MIN_TRIALS"]

log = logging.getLogger(__name__)

#: A study with fewer complete trials gets a caveat on every plot: fANOVA importances and
#: slices need many trials spread over the space before they say which keys matter.
MIN_TRIALS = 10


def best_recipe(study: optuna.Study, recipe: Recipe) -> Recipe | None:
    """The recipe of the best complete trial at the full budget (None: no complete trial)."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    values = recipe.model_dump(exclude={"search"})
    values.update(best.params)
    values["name"] = f"{recipe.name}_best"
    values["description"] = (f"{recipe.name} tuned by study '{study.study_name}': trial "
                             f"{best.number}, validation {_metric(study)} {best.value:.6g}")
    return Recipe(**values)


def write_best_recipe(study: optuna.Study, recipe: Recipe, opts: TuneOptions) -> Path | None:
    """Write ``OUT/best.yaml`` atomically; None (and nothing written) without a complete
    trial."""
    best = best_recipe(study, recipe)
    if best is None:
        log.warning("study '%s' has no complete trial yet: no best.yaml", study.study_name)
        return None
    trial = study.best_trial
    header = (f"# Best trial of study '{study.study_name}' (metafit {__version__}): trial "
              f"{trial.number} of {len(study.trials)}, validation {_metric(study)} "
              f"{trial.value:.6g}\n# after {trial.user_attrs.get('best_iteration', '?')} of "
              f"{opts.trial_iterations or recipe.iterations} trial iterations. Tuned: "
              f"{', '.join(f'{k}={v}' for k, v in trial.params.items())}.\n"
              f"# Train it in full: metafit train {Path(opts.out) / 'best.yaml'}\n")
    path = Path(opts.out) / "best.yaml"
    atomic_write_text(path, header + recipe_to_yaml(best).replace("search: {}\n", ""))
    return path


def _metric(study: optuna.Study) -> str:
    return str(study.user_attrs.get("metric", "value"))


def _write_trials_csv(study: optuna.Study, path: Path) -> Path:
    names = sorted({k for t in study.trials for k in t.params})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "value", *names, "last_iteration", "seconds"])
    for t in study.trials:
        seconds = (t.duration.total_seconds() if t.duration is not None else "")
        last = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                         *(t.params.get(k, "") for k in names), last, seconds])
    atomic_write_text(path, buf.getvalue())
    return path


def few_trials_caveat(study: optuna.Study) -> list[str]:
    """The caveat every plot of a study with fewer than :data:`MIN_TRIALS` complete trials
    carries (empty otherwise)."""
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if done >= MIN_TRIALS:
        return []
    return [f"only {done} complete trial{'s' if done != 1 else ''} (fewer than "
            f"{MIN_TRIALS}): too few to rank settings or judge which keys matter; read "
            "these plots as anecdotes."]


def _plot(draw: Any, study: optuna.Study, path: Path, banner: list[str] | None = None,
          **kwargs: Any) -> Path | None:
    from metafit.runs.figures import finish, pyplot, save_figure

    try:
        ax = draw(study, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
        log.warning("skipped %s: %s", path.name, e)
        pyplot().close("all")
        return None
    axes = ax if not hasattr(ax, "figure") else [ax]
    fig = _first(axes).figure
    fig.set_size_inches(max(6.4, fig.get_size_inches()[0]), 4.8)
    finish(fig, banner or [], tight=False)
    return save_figure(fig, path, bbox_inches="tight")


def _plot_history(study: optuna.Study, **kwargs: Any) -> Any:
    """Optuna's optimization history (every trial's value and the best so far), with
    trial numbers as integer ticks."""
    from optuna.visualization import matplotlib as vis

    from metafit.runs.figures import integer_axis

    ax = vis.plot_optimization_history(study, **kwargs)
    integer_axis(ax, [t.number for t in study.trials])
    return ax


def _first(axes: Any) -> Any:
    try:
        return axes.flat[0]
    except AttributeError:
        return axes[0]


def plot_validation_curves(study: optuna.Study) -> Any:
    """Every trial's validation score against iteration (what the pruner compared):
    complete trials in blue, pruned ones in grey, the best in red; a log scale clipped
    to the range that matters, so one diverged trial does not flatten the others."""
    from metafit.runs.figures import integer_axis, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    best = _best_number(study)
    values = [v for t in study.trials for v in t.intermediate_values.values()
              if math.isfinite(v)]
    if not values:
        raise ValueError("no trial reported a validation score")
    iterations: list[int] = []
    for t in study.trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        ys = [t.intermediate_values[s] for s in steps]
        style = ({"color": "tab:red", "lw": 2.0, "zorder": 3, "label": f"best (trial {best})"}
                 if t.number == best else
                 {"color": "tab:blue", "lw": 1.0, "alpha": 0.6} if t.state.name == "COMPLETE"
                 else {"color": "0.6", "lw": 0.8, "alpha": 0.7})
        ax.plot(steps, ys, marker=".", **style)
        iterations += steps
    ordered = sorted(values)
    low, high = ordered[0], ordered[int(0.9 * (len(ordered) - 1))]
    if low > 0:
        from matplotlib.ticker import FuncFormatter

        ax.set_yscale("log")
        ax.set_ylim(low / 1.2, max(high, low) * 1.5)
        plain = FuncFormatter(lambda v, _: f"{v:g}")  # "6", "0.3": not "6 x 10^0"
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain)
    ax.plot([], [], color="tab:blue", label="complete")
    ax.plot([], [], color="0.6", label="pruned")
    integer_axis(ax, iterations)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"validation {_metric(study)}")
    ax.set_title(f"Validation curves of the {len(study.trials)} trials")
    ax.legend(loc="best", fontsize=8)
    return ax


def _best_number(study: optuna.Study) -> int | None:
    try:
        return int(study.best_trial.number)
    except ValueError:
        return None


def write_report(study: optuna.Study, out: str | Path) -> list[Path]:
    """Write the trials CSV and the plots into ``out``; returns the files written.

    Plots that need more than the study has (importances need two complete trials with
    different values) are skipped with a warning; with fewer than :data:`MIN_TRIALS`
    complete trials every plot carries a caveat across its top.
    """
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [_write_trials_csv(study, out / "trials.csv")]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finite = [t for t in complete if t.value is not None and math.isfinite(t.value)]
    plots: list[tuple[Any, str, dict[str, Any]]] = [
        (_plot_history, "optimization_history.png",
         {"target_name": _metric(study)}),
        (plot_validation_curves, "intermediate_values.png", {}),
        (vis.plot_slice, "slice.png", {"target_name": _metric(study)}),
    ]
    if len(finite) >= 2:
        plots.insert(1, (vis.plot_param_importances, "param_importances.png",
                         {"target_name": _metric(study)}))
    else:
        log.warning("skipped param_importances.png: it needs two complete trials")
    caveat = few_trials_caveat(study)
    if caveat:
        log.warning("tuning report: %s", caveat[0])
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # "trial N omitted: value inf"
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            for draw, name, kwargs in plots:
                written = _plot(draw, study, out / name, caveat, **kwargs)
                if written is not None:
                    files.append(written)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return files
