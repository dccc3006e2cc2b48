"""Body features cached across episodes (metafit.evaluation.feature_cache): the same evaluation and
training results as running the body in every episode, with the body run once per
distinct example; never used where the body adapts or depends on the batch."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import load_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.data.text_csv import TextCSV
from metafit.evaluation.feature_cache import FeatureCache, cached_body, uncacheable_reason
from metafit.evaluation.protocol import evaluate
from metafit.execution.threads import share_parameters
from metafit.models import FewShotModel
from metafit.models.conv4 import conv4
from metafit.training.trainer import Trainer
from text_fixtures import sentences, shared_model_dir, write_csv

CLASSES = 8
EPISODES = 12


def text_algo(algorithm: str, adapt: str, **extra: Any):  # type: ignore[no-untyped-def]
    recipe = load_recipe("_banking77", {"text_model": str(shared_model_dir()), "max_length": 16,
                                        "algorithm": algorithm, "adapt": adapt, "ways": 3,
                                        "seed": 0, **extra})
    return build_algorithm(recipe, num_train_classes=CLASSES)


def text_sampler(tmp_path: Path) -> EpisodeSampler:
    path = write_csv(tmp_path / "intents.csv", sentences(CLASSES, 6, seed=3))
    data = TextCSV(path).tokenize(shared_model_dir(), max_length=16)
    return EpisodeSampler(data, ways=3, shots=2, queries=3, seed=5)


def count_encoded(algo) -> list[int]:  # type: ignore[no-untyped-def]
    """Wrap the text body's ``encode`` to count the sentences it embeds."""
    body, counted = algo.model.body, [0]
    encode = body.encode

    def counting(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counted[0] += ids.shape[0]
        return encode(ids, mask)

    body.encode = counting
    return counted


CACHED = [
    ("protonet", "top", {"adapt_layers": 1, "distance": "cosine", "distance_scale": 10.0}),
    ("anil", "full", {"inner_lr": 0.5, "eval_inner_steps": 3}),
    ("maml", "head", {"inner_lr": 0.5, "eval_inner_steps": 3}),
    ("fomaml", "head", {"inner_lr": 0.5, "eval_inner_steps": 3, "first_order": True}),
    ("reptile", "head", {"inner_lr": 0.5, "eval_inner_steps": 3}),
    ("metasgd", "head", {"inner_lr": 0.5, "eval_inner_steps": 3}),
    ("finetune", "lora", {"lora_r": 2, "inner_lr": 0.1, "eval_inner_steps": 5}),
    ("linear_probe", "head", {"inner_lr": 0.1, "inner_steps": 5}),
]


@pytest.mark.parametrize(("algorithm", "adapt", "extra"), CACHED)
def test_evaluation_with_cached_features_equals_running_the_body_every_episode(
        tmp_path: Path, algorithm: str, adapt: str, extra: dict[str, Any]) -> None:
    sampler = text_sampler(tmp_path)
    algo = text_algo(algorithm, adapt, **extra)
    counted = count_encoded(algo)
    plain = evaluate(algo, sampler, episodes=EPISODES, cache_features=False)
    per_episode_rows = counted[0]
    counted[0] = 0
    cached = evaluate(algo, sampler, episodes=EPISODES)
    torch.testing.assert_close(torch.tensor(cached.per_episode),
                               torch.tensor(plain.per_episode), atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.tensor(cached.curve), torch.tensor(plain.curve),
                               atol=1e-6, rtol=0)
    tasks = sampler.fixed(EPISODES)
    rows = torch.cat([tasks.support_x.flatten(0, 1), tasks.query_x.flatten(0, 1)])
    distinct = len(torch.unique(rows, dim=0))
    assert counted[0] == distinct  # each distinct sentence embedded once
    assert per_episode_rows > 2 * distinct  # ... instead of in every episode


@pytest.mark.parametrize(("algorithm", "adapt", "extra"), [
    ("maml", "lora", {"lora_r": 2, "inner_lr": 0.5, "eval_inner_steps": 2}),
    ("reptile", "top", {"adapt_layers": 1, "inner_lr": 0.5, "eval_inner_steps": 2}),
])
def test_adapted_bodies_run_themselves_and_only_unadapted_passes_are_cached(
        tmp_path: Path, algorithm: str, adapt: str, extra: dict[str, Any]) -> None:
    sampler = text_sampler(tmp_path)
    algo = text_algo(algorithm, adapt, **extra)
    counted = count_encoded(algo)
    plain = evaluate(algo, sampler, episodes=EPISODES, points=[0, 2], cache_features=False)
    uncached_rows = counted[0]
    counted[0] = 0
    cached = evaluate(algo, sampler, episodes=EPISODES, points=[0, 2])
    assert cached.per_episode == pytest.approx(plain.per_episode, abs=1e-6)
    assert cached.curve == pytest.approx(plain.curve, abs=1e-6)
    tasks = sampler.fixed(EPISODES)
    queries = tasks.query_x.shape[0] * tasks.query_x.shape[1]
    distinct = len(torch.unique(tasks.query_x.flatten(0, 1), dim=0))
    # before adaptation each query sentence is embedded once (not once per episode); the
    # support passes of the inner loop (with gradients) and the adapted query passes run
    # the body every time
    assert counted[0] == uncached_rows - queries + distinct
    assert distinct < queries


def test_batch_statistics_or_dropout_are_never_cached() -> None:
    conv = conv4(3, hidden=8)
    assert "batch statistics" in (uncacheable_reason(conv.body) or "")
    with cached_body(conv) as cache:
        assert cache is None and "forward" not in conv.body.__dict__
    mlp = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    assert "dropout" in (uncacheable_reason(mlp) or "")
    assert uncacheable_reason(mlp.eval()) is None  # dropout is off in eval mode


def test_cache_computes_each_row_once_and_forgets_after_an_in_place_change() -> None:
    torch.manual_seed(0)
    body = nn.Linear(4, 3)
    model = FewShotModel(body, nn.Linear(3, 2), 3)
    x = torch.randn(5, 4)
    batch = torch.cat([x, x[:2]])  # [7, 4]: two rows twice
    with cached_body(model) as cache:
        assert isinstance(cache, FeatureCache)
        with torch.no_grad():
            out = body(batch)
        assert cache.misses == 5 and cache.hits == 2
        with torch.no_grad():
            torch.testing.assert_close(out, cache.compute(batch))
        with torch.no_grad():
            body(x)
        assert cache.hits == 7
        # gradients through the body: the body runs itself (no cached, graph-free rows)
        assert body(x).requires_grad and cache.misses == 5
        with torch.no_grad():
            body.weight.add_(1.0)  # an optimizer step
            after = body(x)
        torch.testing.assert_close(after, cache.compute(x))
        assert cache.misses == 10
    assert "forward" not in body.__dict__  # the module's own forward is back
    torch.testing.assert_close(body(x), x @ body.weight.T + body.bias)


def test_replicas_share_the_store_and_stop_answering_after_the_block() -> None:
    torch.manual_seed(0)
    model = FewShotModel(nn.Linear(4, 3), nn.Linear(3, 2), 3)
    x = torch.randn(5, 4)
    with cached_body(model) as cache:
        assert cache is not None
        replica = copy.deepcopy(model)  # what metafit.execution.threads makes per worker thread
        share_parameters(replica, model)
        with torch.no_grad():
            model.body(x)
            torch.testing.assert_close(replica.body(x), model.body(x))
        assert cache.misses == 5 and cache.hits == 10  # the replica read the shared store
    assert "forward" not in model.body.__dict__
    with torch.no_grad():
        replica.body.weight.add_(1.0)  # the replica's own storage now (a copy, not shared)
        torch.testing.assert_close(replica.body(x), x @ replica.body.weight.T
                                   + replica.body.bias)  # closed: the body runs itself
    assert cache.misses == 5


def test_training_a_frozen_body_uses_the_cache_with_the_same_result(
        tmp_path: Path, caplog, monkeypatch: pytest.MonkeyPatch) -> None:
    import metafit.training.trainer as trainer_module

    path = write_csv(tmp_path / "intents.csv", sentences(10, 8))
    overrides = {"data_root": str(path), "text_model": str(shared_model_dir()),
                 "max_length": 16, "algorithm": "maml", "adapt": "head", "inner_lr": 0.5,
                 "ways": 3, "shots": 2, "queries": 2, "test_queries": 2, "meta_batch": 2,
                 "iterations": 4, "task_workers": 2,
                 "val_every": 4, "val_episodes": 3, "class_split": [4, 3, 3],
                 "checkpoint_every": 4}
    params = []
    for cache in (True, False):
        trainer = Trainer(load_recipe("_banking77", overrides), tmp_path / f"run{cache}",
                          progress=False)
        before = {n: p.detach().clone() for n, p in trainer.algo.named_parameters()}
        if not cache:  # a model without a body: no cache
            monkeypatch.setattr(trainer_module, "frozen_body_cache",
                                lambda model: cached_body(nn.Module()))
        with caplog.at_level("INFO", logger="metafit.training.trainer"):
            trainer.fit()
        assert ("features of each example are computed once" in caplog.text) == cache
        caplog.clear()
        params.append({n: p.detach().clone() for n, p in trainer.algo.named_parameters()})
    assert params[0].keys() == params[1].keys()
    for name in params[0]:
        torch.testing.assert_close(params[0][name], params[1][name], atol=1e-6, rtol=1e-5)
    changed = [n for n in params[0] if not torch.equal(params[0][n], before[n])]
    assert changed and all(n.startswith("model.head.") for n in changed)  # only the head


def test_cli_evaluate_gives_the_same_result_without_the_cache(tmp_path: Path, capsys) -> None:
    from metafit.cli.main import main

    path = write_csv(tmp_path / "intents.csv", sentences(10, 8))
    out = tmp_path / "run"
    args = ["train", "_banking77", "dataset=text_csv", "model=text", f"data_root={path}",
            f"text_model={shared_model_dir()}", "max_length=16", "algorithm=anil",
            "adapt=top", "adapt_layers=1", "inner_lr=0.5", "ways=3", "shots=2", "queries=2",
            "meta_batch=2", "iterations=2", "val_every=2", "val_episodes=3", "test_episodes=8",
            "test_queries=2", "class_split=[4, 3, 3]", "--out", str(out), "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    capsys.readouterr()
    results = []
    for extra in ([], ["--no-feature-cache"]):
        assert main(["evaluate", str(out), "--json", *extra]) == 0
        results.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    assert results[0]["per_episode"] == pytest.approx(results[1]["per_episode"], abs=1e-6)
    assert results[0]["episodes"] == 8
