"""``metafit ensemble``: trained conv4 ProtoNet runs merged into one run directory whose
logits are the mean of its members' (:mod:`metafit.runs.ensemble`), read by every verb
that reads a run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from deploy_fixtures import support_folder
from metafit.cli.main import main
from metafit.cli.results import SCHEMAS
from metafit.evaluation.batch_norm import deployed_logits
from metafit.runs.directory import CheckpointError, RunDir
from metafit.runs.ensemble import merge_runs
from metafit.runs.trained import load_trained, split_sampler
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder


def trained(root: Path, data: Path, name: str, algorithm: str = "protonet",
            **extra: object) -> Path:
    run = root / name
    Trainer(classification_recipe(data, algorithm, **extra), run, progress=False).fit()
    return run


def deployed(algo: torch.nn.Module, task) -> torch.Tensor:
    """The query logits ``[Q, ways]`` of ``algo`` adapted to ``task``'s support set, each
    query normalised with the support set's statistics (as an adapted model scores)."""
    *_, (params, _) = algo.trajectory(task.support_x, task.support_y, 0)
    learner = algo.make_learner(params, task.support_y, copy=False)
    return deployed_logits(algo.model, learner, task.support_x, task.query_x)


@pytest.mark.filterwarnings("ignore:the model has no Linear layer")
def test_a_merged_run_scores_as_the_mean_of_its_members(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = image_folder(tmp_path / "data")
    runs = [trained(tmp_path, data, f"run{seed}", seed=seed) for seed in (3, 4, 5)]
    out = tmp_path / "merged"
    assert main(["ensemble", *map(str, runs), "--out", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    SCHEMAS["ensemble"].model_validate_json(printed)
    info = json.loads(printed)
    assert (info["hidden"], info["conv_groups"]) == (12, 3)
    assert info["run"] == str(out.resolve())
    assert info["members"] == [str(r.resolve()) for r in runs]
    recipe, merged = load_trained(out, "best")
    members = [load_trained(run, "best")[1] for run in runs]
    with torch.no_grad():
        for task in split_sampler(recipe, "test").fixed(5):
            mean = torch.stack([deployed(m, task) for m in members]).mean(0)
            torch.testing.assert_close(deployed(merged, task), mean, rtol=1e-4, atol=1e-4)
    assert main(["evaluate", str(out), "--episodes", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["per_episode"]) == 4
    support = support_folder(tmp_path / "support")
    model = tmp_path / "model"
    assert main(["adapt", str(out), "--support", str(support), "--out", str(model),
                 "--json"]) == 0
    capsys.readouterr()
    assert main(["predict", str(model), str(support / "label_1"), "--json"]) == 0
    predictions = json.loads(capsys.readouterr().out)
    assert len(predictions) == 2 and all(p["label"].startswith("label_") for p in predictions)
    with pytest.raises(CheckpointError, match="trains no further"):
        Trainer(recipe, out, progress=False).fit()


def test_what_does_not_merge_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    data = image_folder(tmp_path / "data")
    a, b = (trained(tmp_path, data, f"run{seed}", seed=seed) for seed in (3, 4))
    maml = trained(tmp_path, data, "maml", "maml")
    wide = trained(tmp_path, data, "wide", hidden=8)
    with pytest.raises(ValueError, match="only conv4 ProtoNets"):
        merge_runs([a, maml], tmp_path / "m1")
    with pytest.raises(ValueError, match="hidden=8 where"):
        merge_runs([a, wide], tmp_path / "m2")
    with pytest.raises(ValueError, match="2 to 16 runs"):
        merge_runs([a], tmp_path / "m3")
    logistic = trained(tmp_path, data, "logistic", classifier="logistic")
    with pytest.raises(ValueError, match="test-time classifier 'logistic'"):
        merge_runs([a, logistic], tmp_path / "m5")
    forged = tmp_path / "forged"  # b's checkpoints under a recipe of other widths
    shutil.copytree(b, forged)
    (forged / "config.yaml").write_text(
        (forged / "config.yaml").read_text().replace("hidden: 4", "hidden: 6"))
    with pytest.raises(ValueError, match="hidden=6 where"):
        merge_runs([a, forged], tmp_path / "m6")
    shutil.copytree(a, tmp_path / "forged_a")
    (tmp_path / "forged_a" / "config.yaml").write_text(
        (tmp_path / "forged_a" / "config.yaml").read_text().replace("hidden: 4", "hidden: 6"))
    with pytest.raises(CheckpointError):  # tensors of width 4 against a recipe of 6
        merge_runs([tmp_path / "forged_a", forged], tmp_path / "m7")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty directory"):
        merge_runs([a, b], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    crashed = tmp_path / "crashed"  # a member whose training never wrote its end
    shutil.copytree(b, crashed)
    RunDir(crashed).set_status("running", iteration=1)
    with pytest.raises(ValueError, match="crashed: its training has not finished"):
        merge_runs([a, crashed], tmp_path / "m8", finished_only=True)
    assert main(["ensemble", str(a), str(crashed), "--out", str(tmp_path / "m9"),
                 "--finished-only"]) == 2
    assert "has not finished (status 'running')" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="metafit.runs.ensemble"):
        merge_runs([a, crashed], tmp_path / "partial")  # an interrupted run may merge
    assert "crashed: its training has not finished" in caplog.text
    assert RunDir(tmp_path / "partial").is_finished()
    assert main(["ensemble", str(a), str(maml), "--out", str(tmp_path / "m4")]) == 2
    assert capsys.readouterr().err.startswith("metafit: error: ")
    assert not any((tmp_path / f"m{i}").exists() for i in range(1, 10))


def test_an_interrupted_merge_leaves_nothing_at_out(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data = image_folder(tmp_path / "data")
    a, b = (trained(tmp_path, data, name) for name in ("a", "b"))
    saved = RunDir.save_checkpoint
    calls = []

    def interrupted(self: RunDir, which: str, payload: dict) -> None:
        calls.append(which)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between the two checkpoints
        saved(self, which, payload)

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge_runs([a, b], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged.")]
    monkeypatch.setattr(RunDir, "save_checkpoint", saved)
    merge_runs([a, b], tmp_path / "merged")  # and it can simply be run again
    assert RunDir(tmp_path / "merged").is_finished()
