"""The character recipes of issue 30: a wider conv4 and a ResNet-12 ProtoNet, and
Meta-Baseline's two stages (Chen et al. 2021), each loaded, validated and run tiny on an
Omniglot fixture; stage 1 trains a classifier on every training class, stage 2 starts from
its body."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from metafit.algorithms.finetune import FineTune
from metafit.algorithms.from_recipe import build_model
from metafit.algorithms.protonet import ProtoNet
from metafit.config.files import RecipeError
from metafit.config.recipe import list_recipes, load_recipe
from metafit.config.recommend import Candidate, recommendations
from metafit.data.base import TensorClassDataset
from metafit.data.splits import load_split
from metafit.runs.directory import CheckpointError, RunDir, load_checkpoint
from metafit.training.callbacks import Callback, TrainerView
from metafit.training.trainer import Trainer
from test_omniglot import write_zip

CHARACTER_RECIPES = ("omniglot_20w1s_protonet_wide", "omniglot_20w1s_protonet_resnet12",
                     "omniglot_20w1s_meta_baseline_pretrain", "omniglot_20w1s_meta_baseline")
PRETRAIN, META = CHARACTER_RECIPES[2:]


def tiny(root: Path, **extra: Any) -> list[str]:
    """Overrides shrinking a character recipe to the fixture: 16x16 images, 4 filters,
    2-way episodes, 2 iterations."""
    values: dict[str, Any] = dict(
        data_root=root, image_size=16, hidden=4, ways=2, queries=2, test_ways=2,
        test_queries=2, meta_batch=1, iterations=2, val_every=2, val_episodes=2,
        test_episodes=2, checkpoint_every=2, log_every=1)
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Five alphabets of 3-4 characters by 6 drawers (train: two alphabets)."""
    root = tmp_path_factory.mktemp("omniglot")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAFIT_CACHE", str(root / "cache"))
        write_zip(root, "images_background", {"A": 4, "B": 4, "C": 3, "D": 3, "E": 4},
                  drawers=6)
        yield root


@pytest.mark.parametrize("name", CHARACTER_RECIPES)
def test_character_recipes_load_with_augmentation_and_within_alphabet_ways(name: str) -> None:
    assert name in list_recipes()
    recipe = load_recipe(name)
    assert recipe.dataset == "omniglot" and recipe.augment == "affine"
    assert recipe.eval_ways == 20 and recipe.eval_shots == 1
    # within-alphabet training episodes: every training alphabet but Tagalog (17
    # characters) holds `ways` characters
    assert recipe.ways <= 24 or recipe.algorithm == "finetune"
    within = load_recipe(name, ["episode_scheme=within_alphabet"])
    assert within.episode_scheme == "within_alphabet"


def test_wide_and_resnet12_recipes_build_their_backbones() -> None:
    wide = build_model(load_recipe("omniglot_20w1s_protonet_wide"))
    assert wide.feature_dim == 128
    resnet = load_recipe("omniglot_20w1s_protonet_resnet12")
    assert resnet.model == "resnet12"
    assert build_model(resnet).feature_dim == 320  # 32-80-160-320
    assert build_model(load_recipe(resnet.name, ["hidden=64"])).feature_dim == 640


@pytest.mark.parametrize("name", CHARACTER_RECIPES[:2])
def test_protonet_character_recipes_train_and_evaluate(
        name: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metafit.cli.main import main

    recipe = load_recipe(name, tiny(data))
    state = Trainer(recipe, tmp_path / "run", progress=False).fit()
    assert state.iteration == 2 and state.best_score is not None
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["episodes"] == 3 and result["metric"] == "accuracy"
    assert 0.0 <= result["mean"] <= 1.0 and result["batch_norm"] == "support"


class Seen(Callback):
    """Records the global labels every stage-1 batch is trained on."""

    def __init__(self) -> None:
        self.labels: list[torch.Tensor] = []

    def on_fit_start(self, trainer: TrainerView) -> None:
        algo = trainer.algo
        assert isinstance(algo, FineTune)
        original = algo.global_labels

        def spy(episodes: Any) -> torch.Tensor:
            labels = original(episodes)
            self.labels.append(labels)
            # what the loss is taken against: the images' own classes among all classes
            images = torch.cat([episodes.support_x.flatten(0, 1),
                                episodes.query_x.flatten(0, 1)])
            self.images = images
            return labels

        algo.global_labels = spy  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def stage1(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Seen]:
    """Meta-Baseline's stage 1 run tiny, unaugmented (so every image can be traced to its
    class), 8 iterations of 2 x 3 classes."""
    out = tmp_path_factory.mktemp("stage1") / "run"
    seen = Seen()
    recipe = load_recipe(PRETRAIN, tiny(data, augment="none", ways=3, queries=1,
                                        meta_batch=2, iterations=8, val_every=4,
                                        eval_inner_steps=3))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METAFIT_CACHE", str(data / "cache"))
        Trainer(recipe, out, progress=False, callbacks=[seen]).fit()
    return out, seen


def test_meta_baseline_stage1_trains_a_classifier_on_every_training_class(
        data: Path, stage1: tuple[Path, Seen]) -> None:
    out, seen = stage1
    recipe = RunDir(out).read_recipe()
    train = load_split(recipe, "train")
    assert isinstance(train, TensorClassDataset)
    classes = len(train.classes)  # characters x rotations of the training alphabets
    state = load_checkpoint(RunDir(out).checkpoint("last"))
    assert state["num_train_classes"] == classes
    assert state["algorithm"]["pretrain_head.weight"].shape[0] == classes
    assert len(seen.labels) == 8
    for labels in seen.labels:  # a batch: 2 x 3 classes x 2 images, global labels
        assert labels.shape == (12,) and 0 <= int(labels.min()) <= int(labels.max()) < classes
        assert len(set(labels.tolist())) > recipe.ways  # not an episode's 0..ways-1
    assert len(set(torch.cat(seen.labels).tolist())) > classes // 2
    # the last batch's images are each an example of the class they are labelled with
    for image, label in zip(seen.images, seen.labels[-1].tolist(), strict=True):
        assert any(torch.equal(image, x) for x in train.examples(label))


def test_meta_baseline_stage2_starts_from_stage1s_body(
        data: Path, stage1: tuple[Path, Seen], tmp_path: Path) -> None:
    previous, _ = stage1
    body = {k.removeprefix("model.body."): v for k, v in
            load_checkpoint(RunDir(previous).checkpoint("best"))["algorithm"].items()
            if k.startswith("model.body.")}
    assert body

    class AtStart(Callback):
        def on_fit_start(self, trainer: TrainerView) -> None:
            algo = trainer.algo
            assert isinstance(algo, ProtoNet) and algo.log_scale is not None
            assert trainer.state.iteration == 0
            self.body = {k: v.clone() for k, v in algo.model.body.state_dict().items()}
            self.scale = float(algo.log_scale.detach().exp())

    start = AtStart()
    recipe = load_recipe(META, tiny(data, init_from=previous))
    assert recipe.distance == "cosine" and recipe.learn_scale
    Trainer(recipe, tmp_path / "run", progress=False, callbacks=[start]).fit()
    assert start.body.keys() == body.keys()
    assert all(torch.equal(start.body[k], body[k]) for k in body)
    assert start.scale == pytest.approx(10.0)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert records[0]["iteration"] == 0 and records[0]["split"] == "val"  # stage 1 scored
    after = load_checkpoint(RunDir(tmp_path / "run").checkpoint("last"))["algorithm"]
    assert not math.isclose(float(after["log_scale"]), math.log(10.0))  # learned
    forgetting = json.loads((tmp_path / "run" / "forgetting.json").read_text())
    assert forgetting["status"] == "measured"  # stage 1's test episodes, before / after


def test_stage2_refuses_a_body_of_another_width(
        data: Path, stage1: tuple[Path, Seen], tmp_path: Path) -> None:
    previous, _ = stage1
    recipe = load_recipe(META, tiny(data, init_from=previous, hidden=8))
    with pytest.raises(CheckpointError, match=r"\(its model.body\) was saved for a "
                       "different architecture"):
        Trainer(recipe, tmp_path / "run", progress=False).fit()


def test_the_recommendation_for_characters_is_one_of_the_candidates(
        capsys: pytest.CaptureFixture[str]) -> None:
    from metafit.cli.main import main

    characters = recommendations()["characters"]
    assert characters.recommended in characters.candidates
    assert set(CHARACTER_RECIPES) <= {recipe for c in characters.candidates.values()
                                      for recipe, _ in c.stages}
    meta = characters.candidates["meta_baseline"]
    stages = meta.recipes(600.0, ["/runs/one", "/runs/two"])
    assert [r.name for r in stages] == [PRETRAIN, META]
    assert sum(r.time_budget or 0 for r in stages) == pytest.approx(600.0, abs=0.2)
    assert stages[0].init_from is None and stages[1].init_from == "/runs/one"
    # the default commands chain through the default run directory
    assert load_recipe(META).init_from == f"runs/{PRETRAIN}"
    assert main(["recipes", "recommend"]) == 0
    printed = capsys.readouterr().out
    assert f"recommended: {characters.recommended}" in printed
    assert characters.commands()[0] in printed


@pytest.mark.parametrize(("change", "message"), [
    ({"recommended": "nope"}, "recommended 'nope' is not one of its candidates"),
    ({"candidates": {"a": {"stages": ["no_such_recipe"]}}}, "'no_such_recipe' is not a "
     "shipped recipe"),
    ({"candidates": {"a": {"stages": ["omniglot_20w1s_protonet hiden=3"]}}},
     "unknown recipe key 'hiden'"),
    ({"candidates": {"a": {"stages": ["sinusoid_maml", "sinusoid_maml"],
                           "budget_shares": [0.5, 0.6]}}}, "summing to 1"),
])
def test_a_broken_recommendations_file_is_refused(
        tmp_path: Path, change: dict[str, Any], message: str) -> None:
    entry: dict[str, Any] = {"description": "d", "recommended": "a",
                             "candidates": {"a": {"stages": ["sinusoid_maml"]}}}
    entry.update(change)
    path = tmp_path / "recommended.yaml"
    path.write_text(yaml.safe_dump({"task": entry}))
    with pytest.raises(RecipeError, match=message):
        recommendations(path)


def test_the_comparison_script_trains_scores_and_pairs_on_the_same_episodes(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import character_recipes

    common = [
        "--budget-minutes", "0.01", "--out", str(tmp_path / "runs"),
        "--candidates", "protonet_affine", "meta_baseline", "--ways", "3", "2",
        "--episodes", "4", "--results", str(tmp_path / "R.md"),
        "--results-dir", str(tmp_path / "rows"),
        "--set", f"data_root={data}", "image_size=16", "hidden=4", "ways=2", "queries=1",
        "test_ways=2", "test_queries=2", "val_every=2", "val_episodes=2", "test_episodes=2",
        "meta_batch=1",
        "iterations=2", "eval_inner_steps=2"]
    assert character_recipes.main(common) == 0
    rows = json.loads((tmp_path / "rows" / "character_recipes_0.01min.json").read_text())
    assert [(r["name"], r["split"], r["ways"]) for r in rows] == [
        ("protonet_affine", "val", 3), ("meta_baseline", "val", 3),
        ("protonet_affine", "val", 2), ("meta_baseline", "val", 2)]
    assert rows[0]["episodes_digest"] == rows[1]["episodes_digest"]  # paired
    assert rows[0]["episodes_digest"] != rows[2]["episodes_digest"]
    assert rows[0]["stages"][0]["recipe"] == "omniglot_20w1s_protonet"
    two = rows[1]["stages"]
    assert [s["recipe"] for s in two] == [PRETRAIN, META]
    assert RunDir(two[1]["run"]).read_recipe().init_from == two[0]["run"]
    assert all(s["status"] == "complete" and s["iterations"] == 2 for s in two)
    text = (tmp_path / "R.md").read_text()
    assert "<!-- character_recipes_0.01min:start -->" in text
    assert "| meta_baseline | val | within_alphabet | 3 |" in text
    # scoring the test alphabets later reuses the finished runs
    metrics = Path(two[1]["run"]) / "metrics.jsonl"
    before = metrics.read_text()
    assert character_recipes.main([*common, "--split", "test"]) == 0
    assert metrics.read_text() == before
    tested = json.loads((tmp_path / "rows" / "character_recipes_0.01min_test.json")
                        .read_text())
    assert {r["split"] for r in tested} == {"test"}


def test_warm_start_scope_all_for_the_same_tensors_body_for_another_algorithm() -> None:
    from metafit import models
    from metafit.algorithms import MAML
    from metafit.runs.checkpoints import restore_warm_start, warm_start_scope

    torch.manual_seed(0)
    finetune = FineTune(models.conv4(3, 1, 4, 16, depth=2), num_classes=7)
    saved = {"algorithm": finetune.state_dict(), "recipe": {"algorithm": "finetune"}}
    protonet = ProtoNet(models.conv4(3, 1, 4, 16, depth=2), distance="cosine",
                        learn_scale=True)
    head = protonet.model.head.state_dict()["weight"].clone()
    first = next(iter(protonet.model.body.state_dict()))
    assert not torch.equal(protonet.model.body.state_dict()[first],
                           saved["algorithm"][f"model.body.{first}"])
    assert warm_start_scope(protonet, saved, "protonet") == "body"
    assert restore_warm_start(protonet, saved, "stage 1", "protonet") == "body"
    for name, tensor in protonet.model.body.state_dict().items():
        assert torch.equal(tensor, saved["algorithm"][f"model.body.{name}"])
    assert torch.equal(protonet.model.head.state_dict()["weight"], head)  # as initialised
    # another algorithm with exactly the same tensors takes all of them
    maml = MAML(models.conv4(3, 1, 4, 16, depth=2))
    plain = ProtoNet(models.conv4(3, 1, 4, 16, depth=2))
    from_maml = {"algorithm": maml.state_dict(), "recipe": {"algorithm": "maml"}}
    assert warm_start_scope(plain, from_maml, "protonet") == "all"
    restore_warm_start(plain, from_maml, "maml run", "protonet")
    assert torch.equal(plain.model.head.state_dict()["weight"],
                       maml.model.head.state_dict()["weight"])


def test_an_ensemble_candidate_trains_its_members_and_merges_them(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import character_recipes

    pair = recommendations()["characters"].candidates["protonet_within_ink_x2"]
    commands = pair.commands(1800.0)
    assert [c.split(" --out ")[1] for c in commands[:2]] == [
        "runs/protonet_within_ink_x2/seed0 &", "runs/protonet_within_ink_x2/seed1 &"]
    assert "seed=1 threads=1" in commands[1] and "time_budget=1800" in commands[1]
    assert commands[2] == "wait" and commands[3].startswith(
        "metafit ensemble runs/protonet_within_ink_x2/seed0 runs/protonet_within_ink_x2/seed1")
    args = ["--budget-minutes", "0.01", "--out", str(tmp_path / "runs"),
            "--candidates", "protonet_within_ink", "protonet_within_ink_x2", "--ways", "2",
            "--episodes", "4", "--results", str(tmp_path / "R.md"),
            "--results-dir", str(tmp_path / "rows"), "--name", "pair",
            "--set", f"data_root={data}", "image_size=16", "hidden=4", "ways=2", "queries=1",
            "test_ways=2", "test_queries=2", "val_every=2", "val_episodes=2", "iterations=2"]
    assert character_recipes.main(args) == 0
    one, two = json.loads((tmp_path / "rows" / "pair.json").read_text())
    assert one["episodes_digest"] == two["episodes_digest"]  # paired
    members, merged = two["stages"][:2], two["stages"][2]
    assert [RunDir(m["run"]).read_recipe().seed for m in members] == [0, 1]
    recipe = RunDir(merged["run"]).read_recipe()
    assert (recipe.hidden, recipe.conv_groups) == (8, 2) and two["run"] == merged["run"]


def test_members_beyond_the_cores_train_in_waves_that_share_the_budget(
        tmp_path: Path) -> None:
    stage = recommendations()["characters"].candidates["protonet_within_ink_x2"].stages[0]
    path = tmp_path / "recommended.yaml"
    path.write_text(yaml.safe_dump({"task": {"recommended": "five", "candidates": {
        "five": {"stages": [" ".join([stage[0], *stage[1]])], "members": 5}}}}))
    five = recommendations(path)["task"].best
    assert (five.parallel, five.waves, five.member_budget(1800.0)) == (2, 3, 600.0)
    commands = five.commands(1800.0)
    waits = [i for i, c in enumerate(commands) if c == "wait"]
    assert waits == [2, 5, 7] and len(commands) == 9  # 2 + wait, 2 + wait, 1 + wait, merge
    trains = [c for c in commands if c.startswith("metafit train")]
    assert all("time_budget=600 " in c and c.endswith(" &") for c in trains)
    assert [c.split("seed=")[1].split()[0] for c in trains] == ["0", "1", "2", "3", "4"]
    assert commands[-1].startswith("metafit ensemble ") and commands[-1].count("/seed") == 5
    assert commands[-1].endswith(" --checkpoint last --finished-only")  # as measured
    seven = Candidate("seven", five.stages, five.budget_shares, members=7, parallel=3)
    commands = seven.commands(1800.0)
    assert [i for i, c in enumerate(commands) if c == "wait"] == [3, 7, 9]
    assert seven.member_budget(1800.0) == 600.0 and "time_budget=600 " in commands[0]
    assert Candidate("one", five.stages, five.budget_shares, members=1).waves == 1


@pytest.mark.parametrize(("name", "extra", "message"), [
    ("x; rm -rf", {"members": 2}, "a candidate's name is a folder name"),
    ("my pair", {"members": 2}, "a candidate's name is a folder name"),
    ("pair", {"members": 2, "parallel": 3}, r"from 1 to the members \(2\), got 3"),
    ("pair", {"members": 2, "parallel": 0}, "parallel must be an integer from 1"),
])
def test_an_ensemble_candidate_the_commands_cannot_carry_is_refused(
        tmp_path: Path, name: str, extra: dict[str, Any], message: str) -> None:
    recipe, overrides = recommendations()["characters"].candidates[
        "protonet_within_ink_x2"].stages[0]
    path = tmp_path / "recommended.yaml"
    path.write_text(yaml.safe_dump({"task": {"recommended": name, "candidates": {
        name: {"stages": [" ".join([recipe, *overrides])], **extra}}}}))
    with pytest.raises(RecipeError, match=message):
        recommendations(path)


def test_the_benchmark_gives_each_member_its_share_of_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import character_recipes

    stage = recommendations()["characters"].candidates["protonet_within_ink_x2"].stages[0]
    three = Candidate("three", (stage,), (1.0,), members=3, parallel=2)
    seen: list[tuple[list[str], float, list[str]]] = []

    def record(candidate: Candidate, dirs: list[str], budget: float,
               extra: list[str]) -> list[dict[str, Any]]:
        seen.append((dirs, budget, extra))
        return [{"iterations": 1}]

    monkeypatch.setattr(character_recipes, "train_stages", record)
    monkeypatch.setattr(character_recipes, "merge_runs", lambda *a: None)
    stages = character_recipes.train(three, tmp_path, 1800.0, ["x=1"])
    assert [b for _, b, _ in seen] == [900.0, 900.0, 900.0]  # two waves of the budget
    assert [e for _, _, e in seen] == [["x=1", f"seed={i}"] for i in range(3)]
    assert [d for d, _, _ in seen] == [[d] for d in three.member_dirs(str(tmp_path))]
    assert stages[-1]["run"].endswith("three/ensemble_last")


@pytest.mark.parametrize(("candidate", "message"), [
    ({"stages": ["sinusoid_maml"], "members": 0}, "members must be an integer from 1"),
    ({"stages": ["sinusoid_maml", "sinusoid_maml"], "members": 2}, "one-stage candidates"),
    ({"stages": ["sinusoid_maml"], "member": 2}, "unknown keys"),
    ({"stages": ["sinusoid_maml"], "members": 2}, "its members cannot merge"),
    ({"stages": ["sinusoid_maml"], "parallel": 1}, "parallel is for candidates of members"),
])
def test_a_broken_ensemble_candidate_is_refused(
        tmp_path: Path, candidate: dict[str, Any], message: str) -> None:
    path = tmp_path / "recommended.yaml"
    path.write_text(yaml.safe_dump({"task": {"recommended": "a",
                                             "candidates": {"a": candidate}}}))
    with pytest.raises(RecipeError, match=message):
        recommendations(path)
