"""Temperature scaling fitted on held-out folds of the support set: the fit recovers a
known temperature, the folds keep every class, and the stored temperature is what
predict applies (labels unchanged)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deploy_fixtures import image_run, support_folder
from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.adapter import Adapter, load_support
from metafit.deploy.calibrate import calibrate
from metafit.evaluation.calibration import fit_temperature, nll, support_folds


def test_the_fit_recovers_the_temperature_that_generated_the_labels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 5, generator=g, dtype=torch.float64) * 3
    labels = torch.multinomial((logits / 2.5).softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    assert nll(logits, labels, t) <= min(nll(logits, labels, s) for s in (1.0, 2.0, 3.0))


def test_a_perfect_held_out_set_does_not_drive_the_temperature_to_zero() -> None:
    """Every held-out example right: maximum likelihood runs to the lower bound, the MAP
    fit (the default) stays within a factor 2.5 of 1."""
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.5], [0.2, 0.1, 4.0]] * 5)
    labels = torch.tensor([0, 1, 2] * 5)
    assert fit_temperature(logits, labels, prior_scale=None) < 0.011
    t = fit_temperature(logits, labels)
    assert 0.4 < t < 1.0


@pytest.mark.parametrize("seed", range(3))
def test_the_map_fit_is_the_minimum_of_its_objective(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(30, 4, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(0, 4, (30,), generator=g)
    t = fit_temperature(logits, labels, prior_scale=0.5)

    def objective(s: float) -> float:
        return 30 * nll(logits, labels, s) + math.log(s) ** 2 / (2 * 0.25)

    grid = [math.exp(-4.6 + 9.2 * i / 4000) for i in range(4001)]
    assert objective(t) <= min(objective(s) for s in grid) + 1e-9


@pytest.mark.parametrize("counts", [[2, 2, 2], [5, 1, 3], [12, 12], [1, 1, 1]])
def test_folds_hold_out_each_example_once_and_keep_every_class(counts: list[int]) -> None:
    labels = torch.tensor([c for c, n in enumerate(counts) for _ in range(n)])
    folds = support_folds(labels, folds=10)
    held = torch.cat(folds).tolist() if folds else []
    assert sorted(held) == [i for i, c in enumerate(labels.tolist()) if counts[c] >= 2]
    for fold in folds:
        kept = torch.ones(len(labels), dtype=torch.bool)
        kept[fold] = False
        assert set(labels[kept].tolist()) == set(range(len(counts)))  # every class stays
    assert len(folds) <= 10


def test_a_calibrated_model_stores_and_applies_its_temperature(tmp_path: Path) -> None:
    adapter = Adapter.from_run(image_run("protonet"))
    inputs, labels = load_support(support_folder(tmp_path / "s", classes=3, per_class=3),
                                  "image")
    model = calibrate(adapter.adapt(inputs, labels), adapter.adapt_tensors)
    t = model.temperature
    assert t != 1.0 and model.info["calibration"]["held_out"] == 9
    assert model.info["calibration"]["nll_after"] <= model.info["calibration"]["nll_before"]
    loaded = AdaptedModel.load(model.save(tmp_path / "m"))
    assert loaded.temperature == pytest.approx(t)
    x = loaded.preprocess(inputs)
    probs = loaded.predict_proba(inputs)
    assert torch.allclose(probs, (loaded.logits(x) / t).softmax(-1), atol=1e-6)
    assert torch.equal(probs.argmax(1), loaded.logits(x).argmax(1))  # labels unchanged
    one_shot = calibrate(adapter.adapt(inputs[::3], labels[::3]), adapter.adapt_tensors)
    assert one_shot.temperature == 1.0 and one_shot.info["calibration"]["method"] == "none"


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), 1e9, "2", True])
def test_a_stored_temperature_out_of_range_is_refused(tmp_path: Path, bad: object) -> None:
    adapter = Adapter.from_run(image_run("protonet"))
    inputs, labels = load_support(support_folder(tmp_path / "s", classes=3, per_class=2),
                                  "image")
    m = adapter.adapt(inputs, labels)
    with pytest.raises(ValueError, match="adaptation.temperature"):
        AdaptedModel(m.module, m.label_names, m.recipe, m.arch, m.preprocessor,
                     {**m.info, "temperature": bad}, m.assets, m.support)


def test_adapt_calibrate_on_the_command_line(tmp_path: Path, capsys) -> None:
    import json

    from metafit.cli.main import main

    support = support_folder(tmp_path / "s", classes=3, per_class=3)
    assert main(["adapt", str(image_run("protonet")), "--support", str(support), "--out",
                 str(tmp_path / "m"), "--calibrate", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["temperature"] == pytest.approx(AdaptedModel.load(tmp_path / "m")
                                                   .temperature) != 1.0
