"""The logistic-regression test-time classifier (``classifier="logistic"``): the L-BFGS fit
reaches the optimum an independent Newton solver finds, ProtoNet / FineTune / linear_probe
classify with it (and meta-train exactly as without it), recipes reject it where it does
not apply, and adapted models carry it through save, load and compression."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deploy_fixtures import SIZE, image_run, support_folder
from metafit.algorithms.from_recipe import build_algorithm
from metafit.algorithms.heads import LogisticHead, fit_logistic_head, logistic_logits
from metafit.cli.main import main
from metafit.config.recipe import RecipeError
from metafit.deploy import AdaptedModel, Adapter
from metafit.deploy.calibrate import fit_on_support
from metafit.deploy.compress import quantize
from metafit.runs.trained import load_trained
from test_algorithm_contract import NUM_CLASSES, WAYS, classification_batch
from test_trainer import classification_recipe, regression_recipe

ALGORITHMS = ["protonet", "finetune", "linear_probe"]


def objective(z: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
              penalty: float, balanced: bool = False) -> torch.Tensor:
    """The mean cross-entropy (``balanced``: each class's mean, averaged over classes)
    plus the penalty, written out without ``cross_entropy``'s class weights."""
    losses = -(z @ weight.T + bias).log_softmax(-1).gather(1, y[:, None])[:, 0]  # [B]
    if balanced:
        fit = torch.stack([losses[y == c].mean() for c in torch.unique(y)]).mean()
    else:
        fit = losses.mean()
    return fit + penalty * weight.pow(2).sum()


def newton(features: torch.Tensor, y: torch.Tensor, ways: int, penalty: float,
           balanced: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The same objective minimised by Newton's method on the full Hessian (float64)."""
    z = F.normalize(features, dim=-1)
    size = ways * z.shape[1]

    def f(theta: torch.Tensor) -> torch.Tensor:
        return objective(z, y, theta[:size].view(ways, -1), theta[size:], penalty, balanced)

    theta = torch.zeros(size + ways, dtype=torch.float64)
    for _ in range(30):
        grad = torch.autograd.functional.jacobian(f, theta)
        hess = torch.autograd.functional.hessian(f, theta)
        # the bias is unpenalised and softmax is shift-invariant: least squares step
        theta = theta - torch.linalg.lstsq(hess, grad[:, None]).solution[:, 0]
    return theta[:size].view(ways, -1), theta[size:]


@pytest.mark.parametrize("penalty", [1e-4, 1e-2])
def test_lbfgs_reaches_the_newton_optimum(penalty: float) -> None:
    torch.manual_seed(0)
    y = torch.arange(4).repeat(6)  # [24]
    x = torch.randn(24, 5, dtype=torch.float64) + 1.5 * F.one_hot(y, 5).double()  # [24, 5]
    weight, bias = fit_logistic_head(x, y, 4, penalty)
    w_ref, b_ref = newton(x, y, 4, penalty)
    z = F.normalize(x, dim=-1)
    gap = float(objective(z, y, weight, bias, penalty) - objective(z, y, w_ref, b_ref, penalty))
    assert abs(gap) < 1e-8  # L-BFGS stops on a relative change of 1e-9 in the loss
    # the optimum is unique: the penalty fixes W, and both solvers keep sum(b) = 0
    torch.testing.assert_close(weight, w_ref, rtol=0, atol=2e-4)
    torch.testing.assert_close(bias, b_ref, rtol=0, atol=2e-4)
    assert not weight.requires_grad and weight.shape == (4, 5) and bias.shape == (4,)


def test_an_unequal_support_set_is_fitted_class_balanced() -> None:
    torch.manual_seed(2)
    y = torch.tensor([0] * 9 + [1] * 3 + [2])  # a class added with one example
    x = torch.randn(13, 5, dtype=torch.float64) + 1.5 * F.one_hot(y, 5).double()
    weight, bias = fit_logistic_head(x, y, 3, 1e-3)
    w_ref, b_ref = newton(x, y, 3, 1e-3, balanced=True)
    z = F.normalize(x, dim=-1)
    gap = float(objective(z, y, weight, bias, 1e-3, True)
                - objective(z, y, w_ref, b_ref, 1e-3, True))
    assert abs(gap) < 1e-8
    torch.testing.assert_close(weight, w_ref, rtol=0, atol=1e-3)
    torch.testing.assert_close(bias, b_ref, rtol=0, atol=1e-3)
    unbalanced = objective(z, y, *newton(x, y, 3, 1e-3), 1e-3, True)
    assert float(unbalanced) > float(objective(z, y, weight, bias, 1e-3, True)) + 1e-3
    # mirrored classes, 10 examples against 1: the midpoint is a tie only when balanced
    a = torch.tensor([[1.0, 0.2], [1.0, -0.2]], dtype=torch.float64)
    x2 = torch.cat([a.repeat(5, 1), torch.tensor([[0.2, 1.0]], dtype=torch.float64)])
    y2 = torch.tensor([0] * 10 + [1])
    w2, b2 = fit_logistic_head(x2, y2, 2, 1e-2)
    middle = logistic_logits(torch.tensor([[1.0, 1.0]], dtype=torch.float64), w2, b2)
    plain = newton(x2, y2, 2, 1e-2)
    middle_plain = logistic_logits(torch.tensor([[1.0, 1.0]], dtype=torch.float64), *plain)
    assert float(middle.softmax(-1)[0, 1]) > float(middle_plain.softmax(-1)[0, 1]) + 0.1


def test_a_larger_penalty_gives_smaller_weights_and_the_fit_is_deterministic() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(20, 6), torch.arange(4).repeat(5)
    small, _ = fit_logistic_head(x, y, 4, 1e-4)
    large, _ = fit_logistic_head(x, y, 4, 1e-1)
    assert float(large.norm()) < 0.5 * float(small.norm())
    again, _ = fit_logistic_head(x, y, 4, 1e-4)
    assert torch.equal(small, again)


def test_fit_errors_name_the_problem() -> None:
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match=r"features must be \[B, F\] and labels \[B\]"):
        fit_logistic_head(x, y[:5], 3)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_logistic_head(x, y, 2)
    with pytest.raises(ValueError, match="penalty must be >= 0"):
        fit_logistic_head(x, y, 3, penalty=-1.0)
    with pytest.raises(ValueError, match="NaN or infinity"):
        fit_logistic_head(torch.full((6, 3), float("nan")), y, 3)


def make(algorithm: str, ways: int = 3, **extra: object) -> torch.nn.Module:
    recipe = classification_recipe(Path("unused"), algorithm, ways=ways, eval_inner_steps=3,
                                   **extra)
    return build_algorithm(recipe, num_train_classes=NUM_CLASSES)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_algorithms_classify_with_the_fitted_head(algorithm: str) -> None:
    algo = make(algorithm, classifier="logistic", classifier_penalty=1e-3)
    torch.manual_seed(2)
    x, y = torch.rand(9, 1, SIZE, SIZE), torch.tensor([0, 1, 2] * 3)
    queries = torch.rand(5, 1, SIZE, SIZE)
    with torch.no_grad():
        body = algo.model.body
        weight, bias = fit_logistic_head(body(x).flatten(1), y, 3, 1e-3)
        expected = logistic_logits(body(queries).flatten(1), weight, bias)  # [5, 3]
        learner = algo.adapt(x, y)
        torch.testing.assert_close(learner(queries), expected, rtol=0, atol=1e-6)
        assert isinstance(learner.module.head, LogisticHead)
        curve = list(algo.trajectory(x, y, 3, queries))
    assert len(curve) == 4  # steps + 1 times the same fitted head
    for params, out in curve:
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
        assert torch.equal(params["head.weight"], curve[0][0]["head.weight"])
    # a different head than the algorithm's own
    with torch.no_grad():
        own = make(algorithm).adapt(x, y)(queries)
    assert not torch.allclose(own.softmax(-1), expected.softmax(-1), atol=1e-3)


@pytest.mark.parametrize("algorithm", ["protonet", "finetune"])
def test_meta_training_is_unchanged_by_the_classifier(algorithm: str) -> None:
    episodes = classification_batch()
    with_head = make(algorithm, WAYS, classifier="logistic")
    without = make(algorithm, WAYS)
    grads, _ = with_head.meta_gradients(episodes)
    ref, _ = without.meta_gradients(episodes)
    assert grads.keys() == ref.keys()
    for name in grads:
        assert torch.equal(grads[name], ref[name]), name


def test_recipes_reject_the_classifier_where_it_does_not_apply() -> None:
    with pytest.raises(ValueError, match="classifier='logistic' applies to finetune, "
                                         "linear_probe, protonet"):
        make("maml", classifier="logistic")
    with pytest.raises(ValueError, match="cannot also fine-tune finetune_layers=1"):
        make("finetune", classifier="logistic", finetune_layers=1)
    with pytest.raises(RecipeError, match="regression problem"):
        regression_recipe("finetune", classifier="logistic")
    with pytest.raises(RecipeError, match="classifier"):
        classification_recipe(Path("unused"), "protonet", classifier="svm")
    with pytest.raises(RecipeError, match="classifier_penalty"):
        classification_recipe(Path("unused"), "protonet", classifier_penalty=-1)


@pytest.mark.parametrize("algorithm", ["protonet", "linear_probe"])
def test_adapted_models_keep_the_head_through_save_load_and_quantization(
        algorithm: str, tmp_path: Path) -> None:
    recipe = classification_recipe(Path("unused"), algorithm, ways=3, classifier="logistic")
    adapter = Adapter(recipe, build_algorithm(recipe, num_train_classes=8))
    torch.manual_seed(3)
    x, y = torch.rand(9, 1, SIZE, SIZE), torch.tensor([0, 1, 2] * 3)
    queries = torch.rand(7, 1, SIZE, SIZE)
    with torch.no_grad():
        own = adapter.learner(x, y)(queries).softmax(-1)  # [7, 3]
    model = adapter.adapt_tensors(x, y, ["a", "b", "c"], batch_norm="batch")
    assert model.arch["head"] == "logistic"
    torch.testing.assert_close(model.logits(queries).softmax(-1), own, rtol=0, atol=1e-6)
    loaded = AdaptedModel.load(model.save(tmp_path / "m"))
    assert isinstance(loaded.module.head, LogisticHead)
    torch.testing.assert_close(loaded.logits(queries), model.logits(queries), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="no Linear layer"):  # the head is no nn.Linear
        small = quantize(model)
    assert isinstance(small.module.head, LogisticHead)
    torch.testing.assert_close(small.logits(queries), model.logits(queries), rtol=0, atol=0)


@pytest.mark.parametrize("algorithm", ["protonet", "linear_probe"])
def test_steps_are_ignored_with_a_warning_where_nothing_takes_steps(
        algorithm: str, caplog: pytest.LogCaptureFixture) -> None:
    # a logistic head is fitted to convergence and ProtoNet has no inner steps: a step
    # count changes nothing, so it is reported as such and the model records 0 steps
    for classifier in ("logistic", None):
        extra = {"classifier": classifier} if classifier else {}
        recipe = classification_recipe(Path("unused"), algorithm, ways=3, **extra)
        adapter = Adapter(recipe, build_algorithm(recipe, num_train_classes=8))
        takes_steps = algorithm == "linear_probe" and classifier is None
        assert adapter.uses_steps is takes_steps
        images = [np.random.default_rng(i).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)
                  for i in range(9)]
        labels = ["a", "b", "c"] * 3
        caplog.clear()
        one = adapter.adapt(images, labels, steps=1)
        many = adapter.adapt(images, labels, steps=30)
        warned = [r for r in caplog.records if "has no effect" in r.getMessage()]
        if takes_steps:
            assert many.info["steps"] == 30 and not warned
            continue
        assert one.info["steps"] == many.info["steps"] == 0 and len(warned) == 2
        for a, b in zip(one.module.state_dict().values(), many.module.state_dict().values(),
                        strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        # the calibration folds refit with the model's own count: no warning from them
        caplog.clear()
        fit_on_support(adapter.adapt(images, labels), adapter.adapt_tensors, True)
        assert not [r for r in caplog.records if "has no effect" in r.getMessage()]


def test_evaluate_and_adapt_take_the_classifier_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run("protonet"), run)
    assert main(["evaluate", str(run), "--episodes", "40", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run), "--episodes", "40", "--json", "--classifier",
                 "logistic"]) == 0
    logistic = json.loads(capsys.readouterr().out)
    assert logistic["extra"]["classifier"] == "logistic" and "classifier" not in own["extra"]
    assert main(["evaluate", str(run), "--episodes", "4", "--classifier", "logistic"]) == 0
    assert "[test, best, logistic]: accuracy" in capsys.readouterr().out
    saved = sorted(p.name for p in (run / "report").glob("eval_test_*.json"))
    assert saved == ["eval_test_best_0steps.json", "eval_test_best_0steps_logistic.json"]
    # the same episodes, another classifier: per-episode accuracies differ somewhere
    assert own["per_episode"] != logistic["per_episode"]
    support = support_folder(tmp_path / "support")
    out = tmp_path / "model"
    assert main(["adapt", str(run), "--support", str(support), "--out", str(out),
                 "--classifier", "logistic"]) == 0
    capsys.readouterr()
    model = AdaptedModel.load(out)
    assert model.arch["head"] == "logistic"
    assert model.info["source"]["classifier"] == "logistic"
    # compress --episodes re-adapts the source run with the model's classifier
    seen: list[str | None] = []
    from_run = Adapter.from_run.__func__  # type: ignore[attr-defined]

    def spy(cls: type, run: str, which: str = "best", classifier: str | None = None,
            penalty: float | None = None) -> Adapter:
        seen.append(classifier)
        return from_run(cls, run, which, classifier, penalty)

    monkeypatch.setattr(Adapter, "from_run", classmethod(spy))
    assert main(["compress", str(out), "--prune", "0.5", "--out", str(tmp_path / "small"),
                 "--episodes", "4", "--json"]) == 0
    assert seen == ["logistic"]
    assert json.loads(capsys.readouterr().out)["test_episodes"]["episodes"] == 4
    with pytest.raises(SystemExit):
        main(["evaluate", str(run), "--classifier", "svm"])
    assert "invalid choice: 'svm'" in capsys.readouterr().err


def test_the_classifier_penalty_comes_from_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    shutil.copytree(image_run("protonet"), run)
    assert main(["evaluate", str(run), "--episodes", "20", "--json", "--classifier",
                 "logistic"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert default["extra"]["classifier_penalty"] == 1e-4
    assert main(["evaluate", str(run), "--episodes", "20", "--json", "--classifier",
                 "logistic", "--classifier-penalty", "30"]) == 0
    strong = json.loads(capsys.readouterr().out)
    assert strong["extra"]["classifier_penalty"] == 30
    # the penalty reaches the algorithm (the adapted weights below show it acts)
    assert load_trained(run, classifier="logistic", penalty=30)[1].penalty == 30
    assert main(["evaluate", str(run), "--episodes", "4", "--classifier", "logistic",
                 "--classifier-penalty", "30"]) == 0
    assert "[test, best, logistic, penalty 30]: accuracy" in capsys.readouterr().out
    saved = sorted(p.name for p in (run / "report").glob("eval_test_*.json"))
    assert saved == ["eval_test_best_0steps_logistic-penalty30.json",
                     "eval_test_best_0steps_logistic.json"]
    # adapt: the penalty shrinks the fitted weights and is recorded with the model
    support = support_folder(tmp_path / "support")
    norms = {}
    for penalty in ("1e-4", "30"):
        out = tmp_path / f"model{penalty}"
        assert main(["adapt", str(run), "--support", str(support), "--out", str(out),
                     "--classifier", "logistic", "--classifier-penalty", penalty]) == 0
        model = AdaptedModel.load(out)
        assert model.info["source"]["classifier_penalty"] == float(penalty)
        norms[penalty] = float(model.module.head.weight.detach().norm())
    assert norms["30"] < 0.5 * norms["1e-4"]
    capsys.readouterr()
    # compress --episodes re-adapts with the model's classifier and penalty
    seen: list[tuple[str | None, float | None]] = []
    from_run = Adapter.from_run.__func__  # type: ignore[attr-defined]

    def spy(cls: type, run: str, which: str = "best", classifier: str | None = None,
            penalty: float | None = None) -> Adapter:
        seen.append((classifier, penalty))
        return from_run(cls, run, which, classifier, penalty)

    monkeypatch.setattr(Adapter, "from_run", classmethod(spy))
    assert main(["compress", str(tmp_path / "model30"), "--prune", "0.5", "--out",
                 str(tmp_path / "small"), "--episodes", "2", "--json"]) == 0
    assert seen == [("logistic", 30.0)]
    capsys.readouterr()
    # a penalty needs a classifier; a negative one is refused
    assert main(["evaluate", str(run), "--classifier-penalty", "0.1"]) == 2
    assert "needs a test-time classifier" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--classifier", "logistic",
                 "--classifier-penalty", "-1"]) == 2
    assert "classifier_penalty" in capsys.readouterr().err
