"""`metafit tune`: search spaces, resumable Optuna studies in SQLite, best.yaml, reports."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.config.recipe import RecipeError, load_recipe
from metafit.config.schema import make_recipe
from metafit.runs.directory import RunDir
from metafit.training.trainer import Trainer
from metafit.tuning.setup import (
    _comparable,
    _fingerprint,
    open_study,
    storage_url,
    trial_recipe,
)
from metafit.tuning.space import grid_size, parse_search_space, suggest
from metafit.tuning.study import TuneOptions, tune

SPACE = {
    "inner_lr": {"type": "loguniform", "low": 0.003, "high": 0.1},
    "inner_steps": {"type": "int", "low": 1, "high": 2},
    "hidden": [8, 16],
}
# A seconds-long sinusoid set-up: tiny MLP, few tasks, few validation episodes.
TINY = {"hidden": 8, "meta_batch": 4, "val_episodes": 5, "test_episodes": 5,
        "iterations": 50, "log_every": 2, "val_every": 2, "eval_inner_steps": 2}


def write_recipe(tmp_path: Path, search: dict[str, Any] | None = None, **extra: Any) -> Path:
    path = tmp_path / "sin_tune.yaml"
    data = {"base": "sinusoid_maml", **TINY, **extra,
            "search": SPACE if search is None else search}
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def tune_cli(recipe: Path, db: Path, out: Path, *args: str) -> int:
    return main(["tune", str(recipe), "--storage", f"sqlite:///{db}", "--out", str(out),
                 "--trial-iterations", "4", *args])


def load(db: Path, name: str = "sin_tune") -> Any:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def states(study: Any) -> list[str]:
    return [t.state.name for t in study.trials]


def test_study_resumes_to_five_distinct_trials_and_best_yaml_trains(tmp_path: Path,
                                                                    capsys) -> None:
    recipe, db, out = write_recipe(tmp_path), tmp_path / "study.db", tmp_path / "tune"
    assert tune_cli(recipe, db, out, "--trials", "3", "--pruner", "none") == 0
    assert states(load(db)) == ["COMPLETE"] * 3
    first = [t.params for t in load(db).trials]
    assert tune_cli(recipe, db, out, "--trials", "5", "--pruner", "none") == 0
    study = load(db)
    assert states(study) == ["COMPLETE"] * 5
    assert [t.params for t in study.trials[:3]] == first  # the first three were kept
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 5  # distinct
    assert sorted(p.name for p in (out / "trials").iterdir()) == [f"{i:04d}" for i in range(5)]
    # Every trial trained its 4 iterations with validations along the way.
    for t in study.trials:
        run = RunDir(t.user_attrs["run_dir"])
        assert run.status()["iteration"] == 4
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        assert math.isfinite(t.value) and t.value == min(t.intermediate_values.values())
    # best.yaml: the best trial's values at the recipe's full budget, no search section.
    best = load_recipe(out / "best.yaml")
    assert best.search == {} and best.iterations == 50
    for key, value in study.best_trial.params.items():
        assert getattr(best, key) == value
    assert "best trial" in capsys.readouterr().out
    assert main(["train", str(out / "best.yaml"), "iterations=2", "--out",
                 str(tmp_path / "full"), "--no-progress"]) == 0
    assert RunDir(tmp_path / "full").status()["status"] == "complete"
    # A rerun that asks for no more trials runs none.
    assert tune_cli(recipe, db, out, "--trials", "4", "--pruner", "none") == 0
    assert len(load(db).trials) == 5


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ({"inner_lrr": {"type": "uniform", "low": 0.1, "high": 1}}, "not a recipe key; did "
         "you mean inner_lr"),
        ({"inner_lr": {"type": "uniform", "low": 0.5, "high": 0.1}}, "low (0.5) > high (0.1)"),
        ({"hidden": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
        ({"hidden": []}, "non-empty list of choices"),
        ({"inner_lr": {"type": "normal", "low": 0.1, "high": 1}}, "unknown type 'normal'"),
        ({"inner_lr": {"type": "loguniform", "low": 0, "high": 1}}, "needs low > 0"),
        ({"inner_lr": {"type": "uniform", "low": 0.0, "high": 1}}, "value 0.0 is not a "
         "valid recipe value"),
        ({"inner_steps": {"type": "int", "low": 1.5, "high": 3}}, "must be an integer"),
        ({"inner_steps": {"type": "int", "low": 1}}, "'int' needs 'high'"),
        ({"inner_lr": {"type": "uniform", "low": 0.1, "high": 1, "stepp": 0.1}},
         "unknown option(s) ['stepp']"),
        ({"algorithm": ["maml", "mamll"]}, "unknown algorithm 'mamll'"),
        ({"model": ["mlp", "conv4"]}, "dataset 'sinusoid' needs model 'mlp'"),
        ({"data_root": ["a", "b"]}, "cannot be searched"),
        ({"hidden": [8, 8]}, "repeat a value"),
        ({}, "has no search: section"),
    ],
)
def test_search_space_errors_before_any_trial(tmp_path: Path, capsys, search: dict[str, Any],
                                              message: str) -> None:
    recipe, db = write_recipe(tmp_path, search=search), tmp_path / "study.db"
    assert tune_cli(recipe, db, tmp_path / "tune", "--trials", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("metafit: error: ") and message in err, err
    assert not db.exists() and not (tmp_path / "tune").exists()


def test_suggest_draws_within_the_declared_space() -> None:
    recipe = make_recipe({**load_recipe("sinusoid_maml").model_dump(), "search": {
        **SPACE, "outer_lr": {"type": "uniform", "low": 0.001, "high": 0.003, "step": 0.001},
        "depth": {"type": "int", "low": 1, "high": 8, "log": True},
        "algorithm": ["maml", "fomaml", "metasgd"]}})
    space = parse_search_space(recipe)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = suggest(space, study.ask())
        assert 0.003 <= values["inner_lr"] <= 0.1 and values["inner_steps"] in (1, 2)
        assert values["hidden"] in (8, 16) and 1 <= values["depth"] <= 8
        assert min(abs(values["outer_lr"] - v) for v in (0.001, 0.002, 0.003)) < 1e-12
        trial = trial_recipe(recipe, values, TuneOptions(trial_iterations=10))
        algo = build_algorithm(trial)
        assert type(algo).__name__.lower() == values["algorithm"]
        assert trial.iterations == 10 and trial.depth == values["depth"]


def test_grid_search_visits_every_point_once(tmp_path: Path) -> None:
    search = {"inner_steps": {"type": "int", "low": 1, "high": 2}, "hidden": [8, 16]}
    recipe = load_recipe(write_recipe(tmp_path, search=search))
    assert grid_size(parse_search_space(recipe)) == 4
    opts = TuneOptions(out=str(tmp_path / "grid"), sampler="grid", pruner="none",
                       trial_iterations=2)
    result = tune(recipe, opts)  # trials default to the grid's size
    assert result.complete == 4
    study = open_study(recipe, opts)
    assert sorted((t.params["inner_steps"], t.params["hidden"]) for t in study.trials) == [
        (1, 8), (1, 16), (2, 8), (2, 16)]
    continuous = load_recipe(write_recipe(tmp_path, search={"inner_lr": {
        "type": "uniform", "low": 0.01, "high": 0.1}}))
    with pytest.raises(RecipeError, match="a grid search needs a finite grid"):
        tune(continuous, TuneOptions(out=str(tmp_path / "g2"), sampler="grid", trials=2))
    assert not (tmp_path / "g2").exists()  # refused before the storage was made


def test_interrupted_trial_is_failed_not_counted_and_requeued(tmp_path: Path,
                                                             monkeypatch) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    opts = TuneOptions(out=str(tmp_path / "tune"), trials=3, pruner="none",
                       trial_iterations=3)
    fit = Trainer.fit
    calls = []

    def fit_interrupted_second(self: Trainer) -> Any:
        calls.append(self.run.path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", fit_interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        tune(recipe, opts)
    study = open_study(recipe, opts)
    assert states(study) == ["COMPLETE", "FAIL"]
    interrupted = study.trials[1].params
    monkeypatch.setattr(Trainer, "fit", fit)
    result = tune(recipe, opts)
    study = open_study(recipe, opts)
    assert states(study) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert result.finished == 3 and result.failed == 1
    assert study.trials[2].params == interrupted  # queued again, first
    assert study.trials[2].user_attrs["retry_of"] == 1
    tune(recipe, opts)  # queued once only: nothing more runs
    assert len(open_study(recipe, opts).trials) == 4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_killed_processes_trial_is_failed_by_its_heartbeat(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    opts = TuneOptions(out=str(tmp_path / "tune"), trials=2, pruner="none",
                       trial_iterations=2, heartbeat_interval=1, grace_period=1)
    study = open_study(recipe, opts)
    trial = study.ask()  # a trial left RUNNING by a process that died
    suggest(parse_search_space(recipe), trial)
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    result = tune(recipe, opts)
    study = open_study(recipe, opts)
    assert states(study)[0] == "FAIL"
    assert result.finished == 2 and states(study).count("COMPLETE") == 2
    assert study.trials[1].params == study.trials[0].params  # retried with its values
    # a study already at its count still fails a dead process's RUNNING trial
    stale = study.ask()
    suggest(parse_search_space(recipe), stale)
    study._storage.record_heartbeat(stale._trial_id)
    time.sleep(2.5)
    result = tune(recipe, opts)  # 2 finished already: no trial runs
    assert result.finished == 2 and result.failed == 2
    assert "RUNNING" not in states(open_study(recipe, opts))


def test_pruned_trial_stops_its_run_early(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    opts = TuneOptions(out=str(tmp_path / "tune"), trials=1, trial_iterations=6)
    from metafit.tuning.study import _objective

    class PruneAtOnce(optuna.pruners.BasePruner):
        def prune(self, study: Any, trial: Any) -> bool:
            return True

    study = optuna.create_study(direction="minimize", pruner=PruneAtOnce())
    study.optimize(_objective(recipe, parse_search_space(recipe), opts), n_trials=1)
    trial = study.trials[0]
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    status = RunDir(trial.user_attrs["run_dir"]).status()
    assert status["status"] == "stopped_early" and status["reason"] == "stopped_by_hook"
    assert status["iteration"] == 1  # of 6: validations every 6 // MIN_REPORTS iterations


def test_median_pruner_prunes_a_hopeless_trial(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path, search={"inner_lr": [0.01, 1e-9]}))
    opts = TuneOptions(out=str(tmp_path / "tune"), trials=7, trial_iterations=4)
    study = open_study(recipe, opts)
    for _ in range(5):  # five sensible startup trials, then a rate that learns nothing
        study.enqueue_trial({"inner_lr": 0.01})
    study.enqueue_trial({"inner_lr": 1e-9})
    tune(recipe, opts)
    study = open_study(recipe, opts)
    assert states(study)[:5] == ["COMPLETE"] * 5
    assert study.trials[5].state.name == "PRUNED"


def test_parallel_jobs_share_the_study(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    opts = TuneOptions(out=str(tmp_path / "tune"), trials=4, pruner="none",
                       trial_iterations=2, jobs=2)
    result = tune(recipe, opts)
    study = open_study(recipe, opts)
    assert result.finished >= 4 and states(study).count("COMPLETE") == len(study.trials)
    numbers = [t.number for t in study.trials]
    assert len(set(numbers)) == len(numbers)
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == len(numbers)
    assert {p.name for p in (tmp_path / "tune" / "trials").iterdir()} == {
        f"{n:04d}" for n in numbers}


def test_continuing_with_another_recipe_is_refused(tmp_path: Path, capsys) -> None:
    recipe, db, out = write_recipe(tmp_path), tmp_path / "study.db", tmp_path / "tune"
    assert tune_cli(recipe, db, out, "--trials", "1") == 0
    assert tune_cli(recipe, db, out, "--trials", "2", "--sampler", "random") == 2
    assert "differs in sampler" in capsys.readouterr().err
    assert main(["tune", str(recipe), "shots=5", "--storage", f"sqlite:///{db}", "--out",
                 str(out), "--trial-iterations", "4", "--trials", "2"]) == 2
    assert "differs in shots" in capsys.readouterr().err
    assert len(load(db).trials) == 1
    # Another storage with the same output directory would overwrite trial runs.
    assert tune_cli(recipe, tmp_path / "other.db", out, "--trials", "1") == 2
    assert "holds trial runs that study 'sin_tune' does not know (0000" in \
        capsys.readouterr().err


def test_report_writes_plots_and_csv(tmp_path: Path, capsys) -> None:
    recipe, db, out = write_recipe(tmp_path), tmp_path / "study.db", tmp_path / "tune"
    assert tune_cli(recipe, db, out, "--trials", "4", "--pruner", "none", "--report") == 0
    names = {"trials.csv", "optimization_history.png", "param_importances.png",
             "intermediate_values.png", "slice.png"}
    assert {p.name for p in (out / "report").iterdir()} == names
    for name in names - {"trials.csv"}:
        assert (out / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (out / "report" / "trials.csv").read_text().splitlines()
    assert rows[0].startswith("number,state,value,hidden,inner_lr,inner_steps")
    assert len(rows) == 5 and all(",COMPLETE," in r for r in rows[1:])
    # --report alone reports without running trials; a missing study is a clear error.
    assert tune_cli(recipe, db, out, "--report") == 0
    assert len(load(db).trials) == 4
    assert tune_cli(recipe, Path(f"{db}?timeout=60"), out, "--report") == 0  # URL options
    assert tune_cli(recipe, tmp_path / "other.db", out, "--report") == 2
    assert "no study 'sin_tune'" in capsys.readouterr().err
    assert not (tmp_path / "other.db").exists()  # reading did not create it


def test_storage_urls(tmp_path: Path) -> None:
    assert storage_url(None, tmp_path / "o") == f"sqlite:///{tmp_path / 'o' / 'study.db'}"
    assert storage_url(str(tmp_path / "x.db"), "o") == f"sqlite:///{tmp_path / 'x.db'}"
    assert storage_url("postgresql://u@h/db", "o") == "postgresql://u@h/db"


def test_trials_without_a_count_need_one(tmp_path: Path, capsys) -> None:
    recipe = write_recipe(tmp_path)
    assert tune_cli(recipe, tmp_path / "s.db", tmp_path / "tune") == 2
    assert "give --trials N" in capsys.readouterr().err


def test_validation_hook_stops_training(tmp_path: Path) -> None:
    recipe = load_recipe("sinusoid_maml", {**TINY, "iterations": 10})
    seen: list[tuple[int, float]] = []
    state = Trainer(recipe, tmp_path / "run", progress=False,
                    on_validation=lambda i, s: seen.append((i, s)) or i >= 4).fit()
    assert [i for i, _ in seen] == [2, 4] and state.iteration == 4
    assert RunDir(tmp_path / "run").status()["reason"] == "stopped_by_hook"


def test_hyperband_and_random_search_run_a_study(tmp_path: Path) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    for sampler, pruner in (("random", "hyperband"), ("tpe", "hyperband")):
        opts = TuneOptions(out=str(tmp_path / f"{sampler}_{pruner}"), trials=4,
                           sampler=sampler, pruner=pruner, trial_iterations=10)
        result = tune(recipe, opts)
        study = open_study(recipe, opts)
        assert type(study.pruner).__name__ == "HyperbandPruner"
        assert result.finished == 4 and result.failed == 0
        assert all(sorted(t.intermediate_values)[0] == 2 for t in study.trials)


def test_a_study_continues_with_tracking_changed_and_from_an_older_fingerprint(
        tmp_path: Path) -> None:
    recipe, db, out = write_recipe(tmp_path), tmp_path / "study.db", tmp_path / "tune"
    assert tune_cli(recipe, db, out, "--trials", "1") == 0
    study = load(db)
    saved = study.user_attrs["fingerprint"]
    assert "mlflow" not in saved["recipe"] and "tensorboard" not in saved["recipe"]
    # an older metafit kept the tracking keys in the fingerprint: still the same set-up
    study.set_user_attr("fingerprint", {**saved, "recipe": {
        **saved["recipe"], "mlflow": False, "tensorboard": False}})
    assert tune_cli(recipe, db, out, "--trials", "2", "tensorboard=true") == 0
    assert len(load(db).trials) == 2


@pytest.mark.parametrize(("trials", "caveat"), [(3, True), (10, False)])
def test_plots_of_few_trials_carry_a_caveat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            trials: int, caveat: bool) -> None:
    import metafit.runs.figures as figures
    from metafit.tuning.report import MIN_TRIALS, write_report

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("metric", "mse")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("inner_lr", 0.001, 0.1, log=True)
        trial.report(x, 1)
        return (x - 0.01) ** 2

    study.optimize(objective, n_trials=trials)
    drawn: dict[str, list[str]] = {}
    save = figures.save_figure

    def spy(fig: Any, path: Path, **kwargs: Any) -> Path:
        drawn[Path(path).name] = figures.banner_texts(fig)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "save_figure", spy)
    write_report(study, tmp_path / "report")
    assert {"optimization_history.png", "slice.png", "intermediate_values.png"} <= set(drawn)
    for name, banner in drawn.items():
        if caveat:
            assert len(banner) == 1, name
            assert f"only {trials} complete trials (fewer than {MIN_TRIALS})" in banner[0]
        else:
            assert banner == [], name


# -- meta-RL recipes -------------------------------------------------------------------
# A tiny navigation set-up: a trial of 3 outer steps takes well under a second.
RL_TINY = ["horizon=10", "meta_batch=4", "trajectories=2", "policy_hidden=[8]",
           "val_episodes=3", "eval_inner_steps=1", "iterations=3", "log_every=1",
           "val_every=1", "checkpoint_every=3"]


@pytest.mark.parametrize("algorithm", ["maml_trpo", "fomaml_trpo", "reptile_pg", "promp",
                                       "pretrained_trpo", "scratch"])
def test_every_rl_algorithm_is_tunable_on_the_validation_return(tmp_path: Path,
                                                                algorithm: str) -> None:
    from metafit.config.schema import RL_ALGORITHMS

    assert algorithm in RL_ALGORITHMS
    extra = ["outer_lr=0.5"] if algorithm == "reptile_pg" else []
    recipe = load_recipe("rl_nav2d_maml_tune", [*RL_TINY, f"algorithm={algorithm}", *extra])
    if algorithm not in ("maml_trpo", "fomaml_trpo", "pretrained_trpo"):  # max_kl: TRPO's
        recipe = recipe.model_copy(update={"search": {
            k: v for k, v in recipe.search.items() if k != "max_kl"}})
    result = tune(recipe, TuneOptions(out=str(tmp_path / "tune"), trials=2, pruner="none",
                                      sampler="random", progress=False))
    study = optuna.load_study(study_name=recipe.name, storage=result.storage)
    assert result.direction == "maximize" and result.metric == "return"
    assert states(study) == ["COMPLETE"] * 2
    for t in study.trials:
        records = RunDir(t.user_attrs["run_dir"]).read_metrics()
        returns = [r["return"] for r in records if r["split"] == "val"]
        assert returns and t.value == max(returns)  # the best validation return
        assert all(v < 0 for v in returns)  # navigation returns are negative distances
    best = max(study.trials, key=lambda t: t.value)
    assert result.best_trial == best.number and result.best_value == best.value
    assert load_recipe(tmp_path / "tune" / "best.yaml").inner_lr == best.params["inner_lr"]


def test_rl_study_picks_the_max_return_trial_and_reports_it(tmp_path: Path, capsys) -> None:
    out = tmp_path / "tune"
    assert main(["tune", "rl_nav2d_maml_tune", *RL_TINY, "--trials", "3", "--out", str(out),
                 "--pruner", "none", "--report", "--no-progress"]) == 0
    text = capsys.readouterr().out
    study = optuna.load_study(study_name="rl_nav2d_maml_tune",
                              storage=storage_url(None, out))
    assert study.direction.name == "MAXIMIZE" and study.user_attrs["metric"] == "return"
    values = [t.value for t in study.trials]
    assert len(values) == 3 and len(set(values)) == 3  # distinct points, distinct returns
    best = study.trials[values.index(max(values))]
    assert study.best_trial.number == best.number
    assert f"best trial {best.number}: {best.value:.6g}" in text
    rows = (out / "report" / "trials.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 4 and rows[1 + best.number].split(",")[2] == repr(best.value)
    header = (out / "best.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert f"trial {best.number} of 3, validation return {best.value:.6g}" in header
    best_recipe = load_recipe(out / "best.yaml")
    assert best_recipe.is_rl and best_recipe.search == {} and best_recipe.iterations == 3
    assert best_recipe.max_kl == best.params["max_kl"]


def test_a_study_made_before_a_key_existed_still_matches_at_its_default() -> None:
    """A study's saved fingerprint lacks keys added to metafit since (meta-RL's
    normalize_actions, inner_lr_decay): at their defaults it still matches; a recipe that
    sets one away from its default does not."""
    opts = TuneOptions(trial_iterations=10)
    current = json.loads(json.dumps(_fingerprint(load_recipe("rl_nav2d_maml_tune"), opts)))
    older = {**current, "recipe": {k: v for k, v in current["recipe"].items()
                                   if k not in ("normalize_actions", "inner_lr_decay")}}
    assert older != current and _comparable(older, current) == current
    changed = load_recipe("rl_nav2d_maml_tune", ["inner_lr_decay=0.5"])
    now = json.loads(json.dumps(_fingerprint(changed, opts)))
    assert _comparable(older, now) != now


def test_a_grid_too_large_is_refused_before_it_is_built() -> None:
    from metafit.tuning.space import MAX_GRID_POINTS, grid_size, grid_values

    def space(search: dict[str, Any]) -> Any:
        return parse_search_space(make_recipe({**load_recipe("sinusoid_maml").model_dump(),
                                               "search": search}))

    huge = space({"seed": {"type": "int", "low": 0, "high": 10**12}})
    assert grid_size(huge) == 10**12 + 1  # counted, never listed
    with pytest.raises(RecipeError, match=r"'seed': a grid of 1,000,000,000,001 points"):
        grid_values(huge)
    wide = space({k: {"type": "int", "low": 1, "high": 1000}
                  for k in ("seed", "hidden", "shots", "ways")})
    with pytest.raises(RecipeError, match=f"over the {MAX_GRID_POINTS:,} a grid search"):
        grid_values(wide)
    fine = space({"inner_lr": {"type": "uniform", "low": 0.1, "high": 1.0, "step": 1e-9}})
    with pytest.raises(RecipeError, match="'inner_lr': a grid of"):
        grid_values(fine)
