"""Within-alphabet episodes (Lake et al. 2015): one alphabet per task, support and queries
from different drawers, no rotations at test time; and the sampler's groups / slots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafit.config.recipe import make_recipe
from metafit.data.base import TensorClassDataset
from metafit.data.omniglot import Omniglot
from metafit.data.sampler import EpisodeSampler
from metafit.data.within import sampler_options
from metafit.runs.trained import split_sampler
from test_omniglot import expected, write_zip

ALPHABETS = {"Alpha": 5, "Beta": 4, "Gamma": 2}
DRAWERS = 6


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def coded(groups: list[int], drawers: int) -> tuple[TensorClassDataset, torch.Tensor,
                                                    torch.Tensor]:
    """A dataset whose example = class * 100 + slot, in a shuffled order, with its
    ``groups [C]`` and ``slots [E]``."""
    classes = torch.arange(len(groups)).repeat_interleave(drawers)  # [E]
    slots = torch.arange(drawers).repeat(len(groups))  # [E]
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(3))
    ds = TensorClassDataset((classes * 100 + slots)[order].view(-1, 1).float(),
                            classes[order], [f"c{i}" for i in range(len(groups))])
    # the base class regroups by class (stably): recover each stored example's slot
    stored = ds.data.view(-1).long()  # [E]
    return ds, torch.tensor(groups), stored % 100


def test_every_task_is_one_group_with_support_and_queries_from_distinct_slots() -> None:
    groups = [0] * 6 + [1] * 5 + [2] * 2  # group 2 is too small for 4 ways
    ds, g, slots = coded(groups, drawers=7)
    sampler = EpisodeSampler(ds, ways=4, shots=2, queries=3, seed=1, groups=g, slots=slots)
    for episodes in (sampler.sample(50), sampler.fixed(50)):
        sx = episodes.support_x.view(50, -1).long()  # [T, N*K]: class * 100 + slot
        qx = episodes.query_x.view(50, -1).long()  # [T, N*Q]
        for t in range(50):
            task_groups = {groups[c] for c in episodes.classes[t].tolist()}
            assert len(task_groups) == 1 and task_groups != {2}
            s_slots, q_slots = set((sx[t] % 100).tolist()), set((qx[t] % 100).tolist())
            assert len(s_slots) == 2 and len(q_slots) == 3 and not s_slots & q_slots
            # labels still name the right classes: the j-th class has label j
            for x, y in zip(sx[t].tolist(), episodes.support_y[t].tolist(), strict=True):
                assert x // 100 == int(episodes.classes[t, y])
    # both larger groups are drawn
    assert {groups[int(c)] for c in sampler.sample(40).classes[:, 0]} == {0, 1}


def test_groups_and_slots_fail_clearly() -> None:
    ds, g, slots = coded([0, 0, 1, 1], drawers=4)
    with pytest.raises(ValueError, match="largest group holds 2"):
        EpisodeSampler(ds, ways=3, shots=1, queries=1, groups=g)
    six, _, six_slots = coded([0, 0, 1, 1], drawers=6)
    with pytest.raises(ValueError, match="5 slots are needed per class, but the examples "
                                         "have 4"):
        EpisodeSampler(six, ways=2, shots=2, queries=3, slots=six_slots.clamp(max=3))
    broken = slots.clone()
    broken[1] = broken[0]  # class c0 holds one slot twice and misses another
    with pytest.raises(ValueError, match="'c0'"):
        EpisodeSampler(ds, ways=2, shots=1, queries=1, slots=broken)


def test_omniglot_knows_its_drawers(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", ALPHABETS, drawers=DRAWERS)
    ds = Omniglot(tmp_path, image_size=8, rotations=True)
    assert ds.drawers.shape == (len(ds),)
    for name in ("Beta/character03", "Beta/character03/rot90"):
        c = ds.classes.index(name)
        rows = range(int(ds.offsets[c]), int(ds.offsets[c] + ds.counts[c]))
        assert sorted(ds.drawers[list(rows)].tolist()) == list(range(DRAWERS))
    c = ds.classes.index("Beta/character03")
    for row in range(int(ds.offsets[c]), int(ds.offsets[c] + ds.counts[c])):
        drawer = int(ds.drawers[row]) + 1  # files are NNNN_DD.png, DD from 1
        assert torch.equal(ds.gather(torch.tensor([row]))[0, 0], expected("Beta", 3, drawer))


def test_within_alphabet_evaluation_drops_rotations_and_keeps_one_alphabet(
        tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", ALPHABETS, drawers=DRAWERS)
    ds = Omniglot(tmp_path, image_size=8, rotations=True)
    test_ds, groups, slots = sampler_options("within_alphabet", ds, train=False)
    assert len(test_ds.classes) == sum(ALPHABETS.values())
    assert not any("/rot" in name for name in test_ds.classes)
    train_ds, train_groups, _ = sampler_options("within_alphabet", ds, train=True)
    assert len(train_ds.classes) == 4 * sum(ALPHABETS.values())
    assert train_groups is not None
    assert int(train_groups.max()) + 1 == 4 * len(ALPHABETS)  # alphabet x rotation
    sampler = EpisodeSampler(test_ds, ways=3, shots=1, queries=2, seed=0, groups=groups,
                             slots=slots)
    episodes = sampler.fixed(30)
    for t in range(30):
        names = [test_ds.classes[c] for c in episodes.classes[t].tolist()]
        assert len({n.split("/")[0] for n in names}) == 1
        assert "Gamma" not in names[0]  # 2 characters: too few for 3 ways
    # the support image of each class is one drawer's, the queries are other drawers'
    first = episodes[0]
    for j, c in enumerate(first.classes.tolist()):
        alphabet, character = test_ds.classes[c].split("/")
        number = int(character.removeprefix("character"))
        drawings = {d: expected(alphabet, number, d) for d in range(1, DRAWERS + 1)}

        def drawer(image: torch.Tensor, drawings: dict[int, torch.Tensor] = drawings) -> int:
            return next(d for d, x in drawings.items() if torch.equal(x, image[0]))

        support = [drawer(x) for x, y in zip(first.support_x, first.support_y, strict=True)
                   if int(y) == j]
        queries = [drawer(x) for x, y in zip(first.query_x, first.query_y, strict=True)
                   if int(y) == j]
        assert len(support) == 1 and len(queries) == 2 and support[0] not in queries


def test_recipe_key_reaches_the_evaluation_sampler(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"A": 4, "B": 4, "C": 3, "D": 3, "E": 4},
              drawers=DRAWERS)
    recipe = make_recipe({"dataset": "omniglot", "data_root": str(tmp_path), "image_size": 8,
                          "test_ways": 3, "test_shots": 1, "test_queries": 2,
                          "episode_scheme": "within_alphabet"}, "test")
    sampler = split_sampler(recipe, "test")
    episodes = sampler.fixed(10)
    names = sampler.dataset.classes
    for row in episodes.classes.tolist():
        assert len({names[c].split("/")[0] for c in row}) == 1
    with pytest.raises(ValueError, match="is for dataset 'omniglot'"):
        make_recipe({"dataset": "glyphs", "episode_scheme": "within_alphabet"}, "test")


def test_a_run_trains_and_is_scored_on_within_alphabet_episodes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metafit.cli.main import main
    from metafit.training.trainer import Trainer
    from test_trainer import classification_recipe

    (tmp_path / "data").mkdir()
    write_zip(tmp_path / "data", "images_background",
              {"A": 4, "B": 4, "C": 3, "D": 3, "E": 4}, drawers=DRAWERS)
    recipe = classification_recipe(tmp_path / "data", "protonet", dataset="omniglot",
                                   episode_scheme="within_alphabet", iterations=2,
                                   val_every=2)
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "5",
                 "--episode-scheme", "random", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "episode_scheme" not in plain["extra"]  # the recipe's scheme, overridden
    assert main(["evaluate", str(tmp_path / "run"), "--episodes", "5", "--json"]) == 0
    within = json.loads(capsys.readouterr().out)
    assert within["extra"]["episode_scheme"] == "within_alphabet"
    saved = sorted(p.name for p in (tmp_path / "run" / "report").glob("eval_test_*.json"))
    assert any(name.endswith("_within_alphabet.json") for name in saved)
    assert any(not name.endswith("_within_alphabet.json") for name in saved)


def test_an_ensemble_of_runs_is_scored_on_one_seeds_episodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/within_alphabet.py's ``NAME=RUN1+RUN2``: one member is the deployed
    figure itself, a member twice changes nothing, runs of other seeds are scored on the
    first run's episodes, and members that read the data differently are refused."""
    from metafit.evaluation.batch_norm import deployed_logits
    from metafit.runs.trained import load_trained
    from metafit.training.trainer import Trainer
    from test_trainer import classification_recipe

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import within_alphabet as bench

    (tmp_path / "data").mkdir()
    write_zip(tmp_path / "data", "images_background",
              {"A": 4, "B": 4, "C": 3, "D": 3, "E": 4}, drawers=DRAWERS)
    runs = []
    for seed, extra in ((3, {}), (4, {}), (3, {"image_crop": "ink"})):
        recipe = classification_recipe(tmp_path / "data", "protonet", dataset="omniglot",
                                       episode_scheme="within_alphabet", iterations=3,
                                       val_every=3, seed=seed, **extra)
        runs.append(str(tmp_path / f"run{len(runs)}"))
        Trainer(recipe, runs[-1], progress=False).fit()
    a, b, inked = runs
    one = bench.score([a], "last", "test", "within_alphabet", 3, 12)
    recipe, algo = load_trained(a, "last")
    sampler = split_sampler(make_recipe({**recipe.model_dump(), "test_ways": 3,
                                         "test_shots": 1}, "a"), "test")
    tasks = sampler.fixed(12)
    assert bench.ensemble_accuracy([algo], tasks) == pytest.approx(one["per_episode"])
    twice = bench.score([a, a], "last", "test", "within_alphabet", 3, 12)
    assert twice["per_episode"] == pytest.approx(one["per_episode"])
    other = bench.score([b], "last", "test", "within_alphabet", 3, 12, seed=3)
    b_algo = load_trained(b, "last")[1]
    assert other["per_episode"] == pytest.approx(bench.ensemble_accuracy([b_algo], tasks))
    both = bench.score([a, b], "last", "test", "within_alphabet", 3, 12)
    assert both["run"] == f"{a}+{b}"
    expected = []
    for task in tasks:  # the members' deployed log-probabilities, averaged by hand
        votes = sum(
            deployed_logits(m.model, m.make_learner(list(m.trajectory(
                task.support_x, task.support_y, 0))[-1][0], task.support_y, copy=False),
                task.support_x, task.query_x).log_softmax(-1) for m in (algo, b_algo))
        expected.append(float((votes.argmax(-1) == task.query_y).float().mean()))
    assert both["per_episode"] == pytest.approx(expected)
    with pytest.raises(SystemExit, match="image_crop"):
        bench.score([a, inked], "last", "test", "within_alphabet", 3, 12)
