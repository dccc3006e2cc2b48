"""Meta-RL in the run directory: training, exact resume, evaluation from the command line,
and run directories from strangers."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from metafit.cli.main import main
from metafit.config.recipe import RecipeError, load_recipe
from metafit.config.schema import OUTER_STEP_KEYS, TRPO_KEYS, Recipe, make_recipe
from metafit.runs.directory import CheckpointError, RunDir, load_checkpoint
from metafit.runs.rl import evaluate_rl_run, load_rl_trained
from metafit.runs.trained import load_trained
from metafit.training.rl import RLTrainer
from metafit.training.trainer import Trainer, make_trainer
from test_cli_json import run_json
from test_run_safety import poisoned
from test_trainer import interrupt_at

#: Overrides that make any shipped RL recipe a run of about a second.
TINY = ["horizon=5", "meta_batch=2", "trajectories=3", "policy_hidden=[8]", "cg_iters=3",
        "ls_max_steps=4", "iterations=4", "val_every=2", "val_episodes=3",
        "test_episodes=3", "log_every=1", "checkpoint_every=2"]


def tiny_overrides(name: str) -> list[str]:
    """:data:`TINY` without the TRPO keys when ``name``'s algorithm takes no TRPO step
    (Reptile, ProMP and scratch refuse them)."""
    own = OUTER_STEP_KEYS[load_recipe(name).algorithm]
    return [o for o in TINY if o.split("=")[0] not in TRPO_KEYS or o.split("=")[0] in own]


def tiny(name: str = "rl_nav2d_maml", *extra: str) -> Recipe:
    return load_recipe(name, [*tiny_overrides(name), *extra])


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny 2D-navigation run."""
    out = tmp_path_factory.mktemp("rl") / "nav"
    RLTrainer(tiny(), out, progress=False).fit()
    return out


def metrics_without_seconds(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in RunDir(run).read_metrics()]


def test_the_run_directory_holds_what_a_supervised_run_does(nav_run: Path) -> None:
    run = RunDir(nav_run)
    assert run.status()["status"] == "complete" and run.status()["iteration"] == 4
    records = run.read_metrics()
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    assert [r["iteration"] for r in train] == [1, 2, 3, 4]
    assert {"loss", "kl", "return_before", "return_after", "step_fraction",
            "grad_norm", "seconds"} <= set(train[0])
    assert all(0 <= r["kl"] <= 0.01 for r in train)  # within TRPO's trust region
    assert [r["iteration"] for r in val] == [2, 4] and list(val[0])[3:] == ["return", "ci95"]
    assert run.read_recipe() == tiny()
    assert "ways" not in run.config.read_text()  # only the keys that apply
    last = load_checkpoint(run.checkpoint("last"))
    assert set(last["sampler"]) == {"seed", "generator", "rollouts"}  # tasks + rollouts
    assert last["optimizer"] == {} and last["scheduler"] == {} and last["state"][
        "iteration"] == 4
    assert set(last["algorithm"]) == {n for n, _ in load_rl_trained(nav_run)[1]
                                      .named_parameters()}


NO_MUJOCO = importlib.util.find_spec("mujoco") is None

#: The shipped recipes of each meta-RL algorithm that trains (scratch does not: its run
#: is tested in test_rl_reptile.py and through the command line below), and the families
#: that need more than the tensor path.
TRAINED = ["rl_nav2d_maml", "rl_tabular_maml", "rl_pendulum_maml", "rl_nav2d_fomaml",
           "rl_nav2d_reptile", "rl_nav2d_pretrained", "rl_nav2d_promp",
           pytest.param("rl_cheetah_dir_maml", marks=pytest.mark.skipif(
               NO_MUJOCO, reason="the rl extra (MuJoCo) is not installed"))]


@pytest.mark.parametrize("name", TRAINED)
def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path, name: str) -> None:
    recipe = tiny(name, "iterations=5", "time_budget=null")
    full, broken = tmp_path / "full", tmp_path / "broken"
    RLTrainer(recipe, full, progress=False).fit()
    trainer = RLTrainer(recipe, broken, progress=False)
    interrupt_at(trainer, 5)  # dies in iteration 5; the last checkpoint is at 4
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert RunDir(broken).status()["status"] == "interrupted"
    resumed = make_trainer(recipe, broken, progress=False)
    assert isinstance(resumed, RLTrainer)
    resumed.fit()
    assert RunDir(broken).status()["status"] == "complete"
    assert metrics_without_seconds(broken) == metrics_without_seconds(full)  # bit for bit
    _, a = load_rl_trained(full, "last")
    _, b = load_rl_trained(broken, "last")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_time_budget_stops_an_rl_run(tmp_path: Path) -> None:
    state = RLTrainer(tiny("rl_bandit_maml", "time_budget=1e-6"), tmp_path / "run",
                      progress=False).fit()
    status = RunDir(tmp_path / "run").status()
    assert state.iteration == 1 and status["reason"] == "time_budget"
    assert status["status"] == "stopped_early"


@pytest.mark.parametrize("name", ["rl_nav2d_maml", "rl_bandit_maml", "rl_pendulum_maml",
                                  "rl_nav2d_reptile", "rl_nav2d_pretrained",
                                  "rl_nav2d_scratch", "rl_nav2d_promp",
                                  "rl_nav2d_maml_paper"])
def test_cli_trains_and_evaluates_an_rl_recipe(tmp_path: Path, name: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    trained = run_json(capsys, "train", name, "--out", str(out), "--no-progress",
                       *tiny_overrides(name))
    assert trained["status"] == "complete" and trained["metric"] == "return"
    # scratch is not trained: its seeded policy is validated once, at iteration 0
    assert trained["best_iteration"] in ((0,) if name.endswith("scratch") else (2, 4))
    result = run_json(capsys, "evaluate", str(out), "--steps", "2")
    assert result["protocol"] == "rl" and result["metric"] == "return"
    assert result["episodes"] == 3 and result["curve_steps"] == [0, 1, 2]
    assert result["mean"] == result["curve"][-1] == pytest.approx(
        sum(result["per_episode"]) / 3)
    assert result["family"] == load_recipe(name).dataset and result["horizon"] == 5
    saved = json.loads((out / "report" / "eval_test_best_2steps.json").read_text())
    assert saved["per_episode"] == result["per_episode"]
    _, algo = load_rl_trained(out, "best")  # the run rebuilds its policy from the recipe
    paper = name == "rl_nav2d_maml_paper"
    scale = getattr(algo.policy, "action_scale", 1.0)
    assert scale == pytest.approx(0.1 if paper else 1.0)
    assert algo.inner_lr_decay == (0.5 if paper else 1.0)
    # the same tasks and noise every time: the evaluation is reproducible
    assert run_json(capsys, "evaluate", str(out), "--steps", "2")["mean"] == result["mean"]
    assert main(["evaluate", str(out), "--episodes", "2", "--checkpoint", "last"]) == 0
    text = capsys.readouterr().out
    assert "return after 0..3 adaptation steps: 0: " in text and "2 tasks x 3 trajectories" \
        in text


def test_validation_and_test_tasks_are_fixed_and_distinct(nav_run: Path) -> None:
    a = evaluate_rl_run(nav_run, "val", episodes=3)  # the recipe's 3 evaluation steps
    b = evaluate_rl_run(nav_run, "val", episodes=3)
    c = evaluate_rl_run(nav_run, "test", episodes=3)
    assert a.per_episode == b.per_episode and a.per_episode != c.per_episode
    best = [r for r in RunDir(nav_run).read_metrics() if r["split"] == "val"]
    score = max(r["return"] for r in best)  # best.pt was scored on these very tasks
    assert a.mean == pytest.approx(score, rel=1e-6)


def test_each_kind_of_run_refuses_the_other_kinds_paths(
        nav_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="is a meta-RL run"):
        load_trained(nav_run)
    assert main(["evaluate", str(nav_run), "--classifier", "logistic"]) == 2
    assert "meta-RL run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="meta-RL task family: train it with"):
        Trainer(tiny(), tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="'glyphs' is not a meta-RL task family"):
        RLTrainer(make_recipe({"dataset": "glyphs"}), tmp_path / "b", progress=False)
    supervised = RunDir(tmp_path / "sup")
    supervised.path.mkdir()
    supervised.write_config(load_recipe("sinusoid_maml"))
    with pytest.raises(ValueError, match="is a supervised run"):
        load_rl_trained(supervised.path)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_pickled_payload_in_an_rl_checkpoint_never_runs(nav_run: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    copy, marker = poisoned(nav_run, tmp_path)
    assert main(["evaluate", str(copy), "--episodes", "2"]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "never loads" in err and "best.pt" in err
    with pytest.raises(CheckpointError, match="never loads"):
        RLTrainer(tiny(), copy, progress=False).fit()  # resuming refuses it too
    assert not marker.exists()


def test_a_forged_rl_config_is_refused_before_it_is_allocated(nav_run: Path,
                                                              tmp_path: Path) -> None:
    copy = Path(shutil.copytree(nav_run, tmp_path / "received"))
    config = RunDir(copy).config
    original = config.read_text()
    # 4096 x 4096 hidden units, within the recipe bounds: refused by the meta-device check
    config.write_text(original.replace("- 8\n", "- 4096\n- 4096\n"))
    with pytest.raises(CheckpointError, match="different architecture"):
        load_rl_trained(copy)
    # 10^5 x 10^5 (40 GB of weights if built): refused by the recipe bounds, earlier still
    config.write_text(original.replace("- 8\n", "- 100000\n- 100000\n"))
    with pytest.raises(RecipeError, match="policy_hidden must be at most 16 widths of at "
                                          "most 4096"):
        load_rl_trained(copy)
