"""The trainer: resume equals an uninterrupted run, run-directory status, bad input."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from metafit.algorithms import get_algorithm, list_algorithms
from metafit.config.schema import make_recipe
from metafit.runs.directory import CheckpointError, RunDir, load_checkpoint, previous_version
from metafit.runs.trained import evaluate_run, load_trained
from metafit.training.trainer import Trainer


def image_folder(root: Path, classes: int = 8, per_class: int = 6, size: int = 8) -> Path:
    """Class c: a bright square at a class-specific place plus noise (learnable)."""
    g = torch.Generator().manual_seed(0)
    for c in range(classes):
        d = root / f"class{c:02d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            img = torch.rand(size, size, generator=g) * 60
            r, col = divmod(c, 4)
            img[r * 4 : r * 4 + 3, col * 2 : col * 2 + 2] += 180
            Image.fromarray(img.clamp(0, 255).to(torch.uint8).numpy(), "L").save(d / f"{i}.png")
    return root


def classification_recipe(root: Path, algorithm: str, **extra):
    values = dict(
        name=f"tiny_{algorithm}", dataset="image_folder", data_root=str(root), image_size=8,
        model="conv4", hidden=4, depth=2, ways=2, shots=1, queries=2, algorithm=algorithm,
        inner_lr=0.1, inner_steps=1, eval_inner_steps=2, meta_batch=2, iterations=6,
        val_every=3, val_episodes=4, test_episodes=6, log_every=1, checkpoint_every=2,
        seed=3,
    )
    if algorithm == "fomaml":
        values["first_order"] = True
    values.update(extra)
    return make_recipe(values)


def regression_recipe(algorithm: str, **extra):
    values = dict(
        name=f"sin_{algorithm}", dataset="sinusoid", model="mlp", hidden=8, depth=2, ways=1,
        shots=5, queries=5, algorithm=algorithm, inner_lr=0.01, inner_steps=1,
        eval_inner_steps=2, meta_batch=3, iterations=6, val_every=3, val_episodes=4,
        test_episodes=6, log_every=1, checkpoint_every=2, seed=1,
    )
    values.update(extra)
    return make_recipe(values)


def interrupt_at(trainer: Trainer, iteration: int) -> None:
    original = trainer._step

    def step() -> dict[str, float]:
        if trainer.state.iteration + 1 == iteration:
            raise KeyboardInterrupt
        return original()

    trainer._step = step  # type: ignore[method-assign]


def assert_same_metrics(full: RunDir, resumed: RunDir) -> None:
    """The two runs logged the same records, up to float noise and wall-clock seconds."""
    expected, got = full.read_metrics(), resumed.read_metrics()
    assert [r["iteration"] for r in got] == [r["iteration"] for r in expected]
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key == "seconds":  # wall-clock time spent training: differs run to run
                assert (b[key] > 0) == (a[key] > 0)  # 0 before the first step
            elif isinstance(a[key], str):
                assert a[key] == b[key], (key, a, b)
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (key, a, b)


TRAINED = [a for a in list_algorithms() if get_algorithm(a).meta_trained]
CASES = [("classification", a) for a in TRAINED] + [
    ("regression", a) for a in TRAINED if get_algorithm(a).supports_regression
]


def _same_parameters(a: Path, b: Path) -> None:
    _, algo_a = load_trained(a, "last")
    _, algo_b = load_trained(b, "last")
    for (name, p), (_, q) in zip(algo_a.state_dict().items(), algo_b.state_dict().items(),
                                 strict=True):
        assert torch.allclose(p, q, atol=1e-6), name


def _full_and_interrupted(recipe, tmp_path: Path, iteration: int) -> tuple[Path, Path]:
    """``recipe`` trained whole into ``tmp_path/full`` and into ``tmp_path/broken`` up to
    a Ctrl-C at ``iteration`` (not resumed yet)."""
    full, broken = tmp_path / "full", tmp_path / "broken"
    Trainer(recipe, full, progress=False).fit()
    trainer = Trainer(recipe, broken, progress=False)
    interrupt_at(trainer, iteration)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    return full, broken


@pytest.mark.parametrize("task,algorithm", CASES)
def test_resume_equals_uninterrupted_run(tmp_path: Path, task: str, algorithm: str) -> None:
    if task == "classification":
        root = image_folder(tmp_path / "data")
        recipe = classification_recipe(root, algorithm)
    else:
        recipe = regression_recipe(algorithm)
    full, broken = _full_and_interrupted(recipe, tmp_path, 6)  # last checkpoint at 4
    assert RunDir(broken).status()["status"] == "interrupted"
    assert not RunDir(broken).is_finished()
    Trainer(recipe, broken, progress=False).fit()
    assert RunDir(broken).status()["status"] == "complete"
    assert_same_metrics(RunDir(full), RunDir(broken))
    _same_parameters(full, broken)


def test_a_run_stopped_before_its_first_last_checkpoint_resumes_from_best(
        tmp_path: Path) -> None:
    # validated (best.pt written) but stopped before any last.pt: it used to start again
    # from iteration 0 and append its records to the old ones
    recipe = regression_recipe("maml", iterations=8, val_every=2, checkpoint_every=100)
    full, broken = _full_and_interrupted(recipe, tmp_path, 6)
    run = RunDir(broken)
    assert run.has_checkpoint("best") and not run.has_checkpoint("last")
    assert Trainer(recipe, broken, progress=False).fit().iteration == 8
    assert_same_metrics(RunDir(full), run)
    _same_parameters(full, broken)


def test_a_warm_start_stopped_before_its_first_last_checkpoint_keeps_it(
        tmp_path: Path) -> None:
    # a warm start scores its starting point and saves it as best.pt at iteration 0; a
    # restart before the first last.pt used to train from random weights instead
    source = tmp_path / "source"
    Trainer(regression_recipe("maml"), source, progress=False).fit()
    recipe = regression_recipe("maml", iterations=6, val_every=3, checkpoint_every=100,
                               init_from=str(source))
    full, broken = _full_and_interrupted(recipe, tmp_path, 2)
    assert not RunDir(broken).has_checkpoint("last")
    Trainer(recipe, broken, progress=False).fit()
    assert_same_metrics(RunDir(full), RunDir(broken))
    _same_parameters(full, broken)


def test_time_budget_stops_and_records_seconds(tmp_path: Path) -> None:
    recipe = regression_recipe("maml").model_copy(update={"time_budget": 1e-6})
    run = tmp_path / "run"
    state = Trainer(recipe, run, progress=False).fit()
    assert state.iteration == 1  # the first step already exceeds a microsecond
    status = RunDir(run).status()
    assert status["status"] == "stopped_early" and status["reason"] == "time_budget"
    records = RunDir(run).read_metrics()
    assert [r["split"] for r in records] == ["train", "val"]  # logged and validated at stop
    assert all(r["seconds"] > 0 for r in records)
    assert RunDir(run).checkpoint("last").is_file()
    # Training again with the same budget does no further step; a larger one continues.
    assert Trainer(recipe, run, progress=False).fit().iteration == 1
    more = recipe.model_copy(update={"time_budget": None})
    assert Trainer(more, run, progress=False).fit().iteration == recipe.iterations
    assert RunDir(run).status()["status"] == "complete"


def test_run_directory_contents_and_evaluation(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    Trainer(classification_recipe(root, "maml"), run, progress=False).fit()
    rd = RunDir(run)
    assert rd.config.is_file()
    assert rd.checkpoint("best").is_file() and rd.checkpoint("last").is_file()
    assert "metafit_version" in rd.config.read_text()
    assert rd.status()["status"] == "complete"
    splits = {r["split"] for r in rd.read_metrics()}
    assert splits == {"train", "val"}
    result = evaluate_run(run, "test", episodes=6)
    assert result.episodes == 6 and len(result.per_episode) == 6
    assert len(result.curve) == 3  # 0, 1, 2 inner steps
    assert 0.0 <= result.mean <= 1.0 and result.ci95 >= 0
    saved = json.loads((rd.report / "eval_test_best_2steps.json").read_text())
    assert saved["mean"] == pytest.approx(result.mean)
    capsys.readouterr()
    shown = evaluate_run(run, "test", episodes=6, progress=True)  # a bar on stderr
    assert shown.per_episode == result.per_episode
    err = capsys.readouterr().err
    assert "evaluating:" in err and "/6 " in err


def test_scoring_only_the_curve_ends_gives_the_same_result(tmp_path: Path) -> None:
    from metafit.evaluation.protocol import evaluate
    from metafit.runs.trained import load_trained, split_sampler

    root = image_folder(tmp_path / "data")
    run = tmp_path / "run"
    Trainer(classification_recipe(root, "maml"), run, progress=False).fit()
    full = evaluate_run(run, "test", episodes=6, steps=4)
    ends = evaluate_run(run, "test", episodes=6, steps=4, curve="ends")
    assert ends.per_episode == full.per_episode and ends.mean == full.mean
    assert full.curve_steps == [0, 1, 2, 3, 4] and ends.curve_steps == [0, 4]
    assert ends.curve == [full.curve[0], full.curve[-1]]
    recipe, algo = load_trained(run)
    for bad in ([0, 3], [-1, 4], []):
        with pytest.raises(ValueError, match="evaluation points must lie in 0..4"):
            evaluate(algo, split_sampler(recipe, "test"), episodes=2, steps=4, points=bad)


def test_early_stopping_marks_the_run(tmp_path: Path) -> None:
    recipe = regression_recipe("maml", iterations=60, val_every=1, patience=1, inner_lr=5.0,
                               outer_lr=0.5)
    state = Trainer(recipe, tmp_path / "run", progress=False).fit()
    assert state.iteration < 60
    assert RunDir(tmp_path / "run").status()["status"] == "stopped_early"


def test_ways_above_classes_fails_before_any_directory(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="ways=9 exceeds"):
        Trainer(classification_recipe(root, "protonet", ways=9), out, progress=False)
    assert not out.exists()


def test_checkpoint_of_another_architecture_and_corrupt_file(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")
    Trainer(recipe, tmp_path / "a", progress=False).fit()
    wider = regression_recipe("maml", hidden=16, init_from=str(tmp_path / "a"))
    with pytest.raises(CheckpointError, match="different architecture"):
        Trainer(wider, tmp_path / "b", progress=False).fit()
    best = RunDir(tmp_path / "a").checkpoint("best")
    previous = previous_version(best)
    for path in (best, previous):  # no good version left to fall back on
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated.*previous version does "
                       "not load either"):
        load_trained(tmp_path / "a", "best")


def test_warm_start_from_an_earlier_run(tmp_path: Path) -> None:
    Trainer(regression_recipe("maml"), tmp_path / "a", progress=False).fit()
    _, first = load_trained(tmp_path / "a", "best")
    warm = Trainer(regression_recipe("maml", init_from=str(tmp_path / "a"), iterations=1),
                   tmp_path / "b", progress=False)
    warm._prepare_dir()
    for (name, p), (_, q) in zip(first.state_dict().items(), warm.algo.state_dict().items(),
                                 strict=True):
        assert torch.equal(p, q), name
    warm.session.release()


def test_a_warm_start_is_validated_before_training_and_can_stay_best(tmp_path: Path) -> None:
    Trainer(regression_recipe("maml"), tmp_path / "a", progress=False).fit()
    # a learning rate that can only make things worse: the warm start must stay the best
    worse = regression_recipe("maml", init_from=str(tmp_path / "a"), outer_lr=10.0,
                              iterations=3, val_every=3)
    state = Trainer(worse, tmp_path / "b", progress=False).fit()
    records = [json.loads(line) for line in
               (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r["split"] == "val"]
    assert [r["iteration"] for r in val] == [0, 3]
    assert not val[1]["mse"] <= val[0]["mse"]  # worse (or NaN)
    assert state.best_iteration == 0
    _, start = load_trained(tmp_path / "a", "best")
    _, best = load_trained(tmp_path / "b", "best")
    for (name, p), (_, q) in zip(start.state_dict().items(), best.state_dict().items(),
                                 strict=True):
        assert torch.equal(p, q), name


def test_a_different_recipe_into_an_existing_run_is_refused(tmp_path: Path) -> None:
    Trainer(regression_recipe("maml"), tmp_path / "a", progress=False).fit()
    with pytest.raises(ValueError, match="differs in inner_lr"):
        Trainer(regression_recipe("maml", inner_lr=0.5), tmp_path / "a", progress=False).fit()


def test_lr_schedule_warmup_then_decay() -> None:
    from metafit.training.trainer import lr_factor

    cosine = lr_factor(regression_recipe("maml", iterations=110, warmup=10, lr_schedule="cosine"))
    assert [cosine(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cosine(10) == pytest.approx(1.0) and cosine(60) == pytest.approx(0.5)
    assert cosine(110) == pytest.approx(0.0, abs=1e-12)
    linear = lr_factor(regression_recipe("maml", iterations=100, lr_schedule="linear"))
    assert linear(50) == pytest.approx(0.5) and linear(100) == pytest.approx(0.0)
    assert lr_factor(regression_recipe("maml"))(3) == 1.0


def test_gradient_clipping_bounds_the_step(tmp_path: Path) -> None:
    recipe = regression_recipe("maml", iterations=2, grad_clip=1e-3, optimizer="sgd",
                               outer_lr=1.0, log_every=1)
    trainer = Trainer(recipe, tmp_path / "run", progress=False)
    before = {n: p.detach().clone() for n, p in trainer.algo.named_parameters()}
    trainer.fit()
    moved = torch.sqrt(sum(((p.detach() - before[n]) ** 2).sum()
                           for n, p in trainer.algo.named_parameters()))
    assert 0 < float(moved) <= 2 * 1e-3 + 1e-6  # two SGD steps of norm <= clip * lr
    norms = [r["grad_norm"] for r in RunDir(tmp_path / "run").read_metrics() if "grad_norm" in r]
    assert len(norms) == 2 and all(n > 1e-3 for n in norms)  # clipping was active


def test_non_finite_validation_never_becomes_the_best(tmp_path: Path) -> None:
    trainer = Trainer(regression_recipe("maml", iterations=4, val_every=1), tmp_path / "run",
                      progress=False)
    scores = iter([float("nan"), 2.0, float("inf"), 1.5])
    trainer.validate = lambda: {"mse": next(scores), "ci95": 0.0}  # type: ignore[method-assign]
    state = trainer.fit()
    assert state.best_score == 1.5 and state.best_iteration == 4
    trainer2 = Trainer(regression_recipe("maml", iterations=2, val_every=1), tmp_path / "r2",
                       progress=False)
    scores2 = iter([float("nan"), float("nan")])
    trainer2.validate = lambda: {"mse": next(scores2), "ci95": 0.0}  # type: ignore[method-assign]
    assert trainer2.fit().best_iteration == 0


def test_curve_points_are_dense_then_sparse() -> None:
    from metafit.evaluation.protocol import curve_points

    assert curve_points(3) == [0, 1, 2, 3]
    assert curve_points(10) == list(range(11))
    assert curve_points(50) == [0, 1, 2, 3, 5, 10, 20, 30, 40, 50]
    points = curve_points(101)
    assert points[:5] == [0, 1, 2, 3, 5] and points[-1] == 101
    assert points == sorted(set(points))


def test_training_again_removes_what_a_killed_write_left(tmp_path: Path) -> None:
    recipe = regression_recipe("maml")
    run = RunDir(tmp_path / "run")
    trainer = Trainer(recipe, run.path, progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    # What a process killed inside atomic_write_bytes leaves: temp files beside the targets.
    stale = [run.checkpoints / ".last.pt.k1ll3d.tmp", run.path / ".status.json.abcd.tmp"]
    fresh = run.checkpoints / ".best.pt.wr1t1ng.tmp"  # a writer still at work
    for path in [*stale, fresh]:
        path.write_bytes(b"partial checkpoint")
    for path in stale:
        os.utime(path, (time.time() - 3600, time.time() - 3600))
    Trainer(recipe, run.path, progress=False).fit()
    assert run.status()["status"] == "complete"
    assert not any(path.exists() for path in stale)
    assert fresh.exists()
    assert run.checkpoint("last").is_file() and run.checkpoint("best").is_file()


def test_timed_checkpoints_bound_what_a_killed_run_loses(tmp_path: Path) -> None:
    # checkpoint_every alone would first save at iteration 1000: nothing to resume from.
    untimed = regression_recipe("maml", checkpoint_every=1000, checkpoint_minutes=None)
    trainer = Trainer(untimed, tmp_path / "untimed", progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert not RunDir(tmp_path / "untimed").checkpoint("last").exists()
    # A timed checkpoint after every step (any time passed exceeds 1e-9 minutes).
    timed = regression_recipe("maml", checkpoint_every=1000, checkpoint_minutes=1e-9)
    full = tmp_path / "full"
    Trainer(timed, full, progress=False).fit()
    broken = tmp_path / "broken"
    trainer = Trainer(timed, broken, progress=False)
    interrupt_at(trainer, 6)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    resumed_at = load_checkpoint(RunDir(broken).checkpoint("last"))["state"]
    assert resumed_at["iteration"] == 5  # the step before the interruption
    Trainer(timed, broken, progress=False).fit()
    assert_same_metrics(RunDir(full), RunDir(broken))
    # Changing either setting does not block resuming an existing run.
    relaxed = timed.model_copy(update={"checkpoint_minutes": 30.0, "checkpoint_every": 2})
    assert Trainer(relaxed, broken, progress=False).fit().iteration == timed.iterations


def test_the_trainer_states_the_trainable_parameters_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from metafit.config.recipe import load_recipe

    recipe = load_recipe("sinusoid_maml", ["iterations=1", "val_every=1", "val_episodes=2",
                                           "meta_batch=2"])
    with caplog.at_level("INFO", logger="metafit.training"):
        trainer = Trainer(recipe, tmp_path / "run", progress=False)
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if "parameters trainable" in r.getMessage()]
    count = sum(p.numel() for p in trainer.algo.parameters())
    assert lines == [f"sinusoid_maml: maml mlp, {count:,} of {count:,} parameters trainable"]
