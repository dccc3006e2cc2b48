"""Evaluation in the deployed BatchNorm setting (issue 27): each query normalised with the
support set's statistics, as the model ``metafit adapt`` writes predicts, and the results
and ``--json`` output saying which setting they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from deploy_fixtures import image_run, text_run
from metafit.cli.main import main
from metafit.deploy.materialise import materialise
from metafit.evaluation.batch_norm import (
    batch_norm_layers,
    deployed_logits,
    reference_rows,
    row_statistics,
)
from metafit.evaluation.protocol import evaluate
from metafit.functional import score
from metafit.runs.trained import load_trained, split_sampler


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_deployed_evaluation_equals_the_materialised_deployed_model(algorithm: str) -> None:
    recipe, algo = load_trained(image_run(algorithm))
    sampler = split_sampler(recipe, "test")
    result = evaluate(algo, sampler, episodes=4, batch_norm="support")
    assert result.batch_norm == "support" and result.transductive is False
    expected, batch = [], []
    for task in sampler.fixed(4):  # the independent formulation: materialise, then score
        learner = algo.adapt(task.support_x, task.support_y)
        module, arch = materialise(learner, recipe, task.support_x, "support")
        assert arch["batch_norm"] == "support"
        with torch.no_grad():
            expected.append(float(score(module(task.query_x), task.query_y)))
            batch.append(float(score(learner(task.query_x), task.query_y)))
    assert result.per_episode == pytest.approx(expected, abs=1e-9)
    transductive = evaluate(algo, sampler, episodes=4, batch_norm="batch")
    assert transductive.batch_norm == "batch" and transductive.transductive
    assert transductive.per_episode == pytest.approx(batch, abs=1e-9)


def test_deployed_logits_match_the_deployed_module_and_leave_the_model_as_it_was() -> None:
    recipe, algo = load_trained(image_run("maml"))
    task = split_sampler(recipe, "test").fixed(1)[0]
    learner = algo.adapt(task.support_x, task.support_y)
    module, _ = materialise(learner, recipe, task.support_x, "support")
    with torch.no_grad():
        before = learner(task.query_x)  # [M, N], query-batch statistics
        deployed = deployed_logits(algo.model, learner, task.support_x, task.query_x)
        one = deployed_logits(algo.model, learner, task.support_x, task.query_x[:1])
        torch.testing.assert_close(deployed, module(task.query_x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(one, deployed[:1], rtol=1e-4, atol=1e-5)  # per input
        assert not torch.allclose(deployed, before, atol=1e-4)  # the settings differ here
        torch.testing.assert_close(learner(task.query_x), before, rtol=0, atol=0)
    layers = batch_norm_layers(algo.model)
    assert layers and all("forward" not in bn.__dict__ and not bn.track_running_stats
                          for bn in layers)
    with pytest.raises(RuntimeError, match="boom"), \
            row_statistics(algo.model, reference_rows(2)):
        raise RuntimeError("boom")
    assert all("forward" not in bn.__dict__ for bn in layers)  # restored after an error


def test_models_without_batch_norm_say_none() -> None:
    recipe, algo = load_trained(text_run())
    result = evaluate(algo, split_sampler(recipe, "test"), episodes=2, batch_norm="support")
    assert result.batch_norm == "none" and result.transductive is False
    with pytest.raises(ValueError, match="batch_norm must be"):
        evaluate(algo, split_sampler(recipe, "test"), episodes=2,
                 batch_norm="query")  # type: ignore[arg-type]


def test_evaluate_cli_reports_the_deployed_setting_and_both_on_request(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run("protonet"), run)  # the shared run's report/ stays clean
    capsys.readouterr()
    assert main(["evaluate", str(run), "--episodes", "3", "--json"]) == 0
    deployed = json.loads(capsys.readouterr().out)
    assert deployed["batch_norm"] == "support" and deployed["transductive"] is False
    assert deployed["other_setting"] is None
    assert main(["evaluate", str(run), "--episodes", "3", "--json", "--batch-norm",
                 "both"]) == 0
    both = json.loads(capsys.readouterr().out)
    assert both["per_episode"] == deployed["per_episode"]
    assert both["other_setting"]["batch_norm"] == "batch"
    assert both["other_setting"]["transductive"] is True
    assert main(["evaluate", str(run), "--episodes", "3", "--batch-norm", "both"]) == 0
    text = capsys.readouterr().out
    assert text.count("BatchNorm: deployed setting") == 1
    assert text.count("BatchNorm: transductive") == 1
    saved = sorted(p.name for p in (run / "report").glob("eval_test_*.json"))
    assert saved == ["eval_test_best_0steps.json", "eval_test_best_0steps_transductive.json"]
    assert json.loads((run / "report" / saved[1]).read_text())["batch_norm"] == "batch"
