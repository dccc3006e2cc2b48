"""One table over every registered algorithm (optax `alias_test.py` style): the contract of
`metafit.algorithms.base.Algorithm`, on a tiny conv4 5-way classification batch, on a tiny
random BERT adapted through LoRA (5-way text classification, token ids in), and, for the
algorithms that support it, a sinusoid-like regression batch on an MLP."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from metafit import functional as mf
from metafit.algorithms import (
    MAML,
    Algorithm,
    build_algorithm,
    get_algorithm,
    list_algorithms,
)
from metafit.data.base import TensorClassDataset
from metafit.data.sampler import EpisodeSampler
from metafit.episodes import Episodes
from metafit.models import conv4, mlp

NUM_CLASSES = 10
WAYS = 5

# Per-algorithm options for these tiny problems; algorithms missing here use their defaults
# plus the common options below (ignored by algorithms that do not take them).
COMMON: dict[str, dict[str, Any]] = {
    "classification": {"inner_lr": 0.4, "inner_steps": 1, "num_classes": NUM_CLASSES},
    "regression": {"inner_lr": 0.01, "inner_steps": 1},
    "text": {"inner_lr": 0.5, "inner_steps": 1, "num_classes": NUM_CLASSES},
}
OPTIONS: dict[str, dict[str, dict[str, Any]]] = {
    "reptile": {"classification": {"inner_lr": 0.1, "inner_steps": 3},
                # 5 support points of 3 tasks: support-only Reptile overfits them, so the
                # query loss is not a loss its direction lowers; train on all points.
                "regression": {"inner_lr": 0.01, "inner_steps": 3, "use_query": True}},
    "finetune": {"classification": {"inner_lr": 0.05, "inner_steps": 5},
                 "regression": {"inner_lr": 0.01, "inner_steps": 5}},
}
OUTER_LR = {"reptile": 0.5}  # outer SGD step size (Reptile's epsilon); others use Adam


def options(name: str, kind: str) -> dict[str, Any]:
    return {**COMMON[kind], **OPTIONS.get(name, {}).get(kind, {})}


def classification_batch(tasks: int = 3) -> Episodes:
    gen = torch.Generator().manual_seed(0)
    means = torch.randn(NUM_CLASSES, 1, 8, 8, generator=gen)  # [C, 1, 8, 8]
    targets = torch.arange(NUM_CLASSES).repeat_interleave(12)  # [C*12]
    data = means[targets] + 0.5 * torch.randn(len(targets), 1, 8, 8, generator=gen)
    dataset = TensorClassDataset(data, targets, [f"c{i}" for i in range(NUM_CLASSES)])
    return EpisodeSampler(dataset, ways=WAYS, shots=2, queries=3, seed=0).sample(tasks)


def regression_batch(tasks: int = 3, shots: int = 5, queries: int = 5) -> Episodes:
    gen = torch.Generator().manual_seed(0)
    amplitude = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=gen)  # [T, 1, 1]
    phase = math.pi * torch.rand(tasks, 1, 1, generator=gen)  # [T, 1, 1]
    x = 10 * torch.rand(tasks, shots + queries, 1, generator=gen) - 5  # [T, K+Q, 1]
    y = amplitude * torch.sin(x - phase)  # [T, K+Q, 1]
    return Episodes(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:])


def text_batch(tasks: int = 3) -> Episodes:
    from metafit.data.text_csv import TextCSV
    from text_fixtures import sentences, shared_model_dir, write_csv

    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / "intents.csv", sentences(NUM_CLASSES, 6))
        dataset = TextCSV(path).tokenize(shared_model_dir(), max_length=16)
    return EpisodeSampler(dataset, ways=WAYS, shots=2, queries=3, seed=0).sample(tasks)


def make(name: str, kind: str, seed: int = 0) -> Algorithm:
    torch.manual_seed(seed)
    if kind == "text":
        from text_fixtures import lora_model

        model = lora_model(WAYS, seed)
    elif kind == "classification":
        model = conv4(out_features=WAYS, in_channels=1, hidden=4, image_size=8, depth=2)
    else:
        model = mlp(in_features=1, out_features=1, hidden=16, depth=2)
    return build_algorithm(name, model, **options(name, kind))


CASES = [(name, kind) for kind in ("classification", "text") for name in list_algorithms()] + [
    (name, "regression") for name in list_algorithms() if get_algorithm(name).supports_regression
]

# Algorithms with something to meta-train (the linear probe has not).
META_CASES = [(name, kind) for name, kind in CASES if get_algorithm(name).meta_trained]


def batch(kind: str) -> Episodes:
    if kind == "text":
        return text_batch()
    return classification_batch() if kind == "classification" else regression_batch()


@pytest.mark.parametrize(("name", "kind"), META_CASES)
def test_meta_gradients_keyed_like_named_parameters_finite_and_nonzero(name: str,
                                                                       kind: str) -> None:
    algo = make(name, kind)
    grads, metrics = algo.meta_gradients(batch(kind))
    named = algo.trainable_parameters()  # frozen encoder weights have no meta-gradient
    assert list(grads) == list(named)
    for n, g in grads.items():
        assert g.shape == named[n].shape and g.dtype == named[n].dtype, n
        assert bool(torch.isfinite(g).all()), n
        assert g.grad_fn is None and not g.requires_grad
        if n.startswith("model.body.") and n.endswith("weight"):  # (conv biases feed BN)
            assert float(g.abs().sum()) > 0, f"{name}: zero meta-gradient for {n}"
    assert all(p.grad is None for p in algo.parameters())
    assert set(metrics) == ({"loss", "mse"} if kind == "regression" else {"loss", "accuracy"})
    if kind == "text":  # only the adapters and the heads train
        assert all("lora_" in n or "head" in n for n in grads), list(grads)
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


@pytest.mark.parametrize(("name", "kind"), META_CASES)
def test_same_seed_gives_identical_numbers(name: str, kind: str) -> None:
    episodes = batch(kind)
    runs = [make(name, kind, seed=3).meta_gradients(episodes) for _ in range(2)]
    (g1, m1), (g2, m2) = runs
    assert m1 == m2
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_adaptation_lowers_support_loss(name: str, kind: str) -> None:
    algo = make(name, kind)
    task = batch(kind)[0]
    sx, sy = task.support_x, task.support_y
    with torch.no_grad():
        before = algo.adapt(sx, sy, steps=0)(sx)  # [N*K, out]
        after = algo.adapt(sx, sy, steps=5)(sx)  # [N*K, out]
    if name == "protonet":  # no inner loop: prototypes classify their own support set
        assert torch.equal(before, after)
        assert float(mf.accuracy(after, sy)) > 2.0 / WAYS
    else:
        assert float(mf.loss_fn(after, sy)) < float(mf.loss_fn(before, sy))


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_adaptation_curve_shape_and_consistency(name: str, kind: str) -> None:
    algo = make(name, kind)
    episodes = batch(kind)
    curve = algo.adaptation_curve(episodes, steps=3)
    assert curve.shape == (len(episodes), 4) and bool(torch.isfinite(curve).all())
    task = episodes[1]  # the last point equals the metric of adapt(steps=3) on the query set
    with torch.no_grad():
        out = algo.adapt(task.support_x, task.support_y, steps=3)(task.query_x)
    assert float(curve[1, -1]) == pytest.approx(float(mf.score(out, task.query_y)), abs=1e-6)
    if name == "protonet":
        assert bool((curve == curve[:, :1]).all())
    # Scoring only at some steps (through make_learner) gives the same points.
    sparse = algo.adaptation_curve(episodes, steps=3, at=[0, 2, 3])
    assert torch.allclose(sparse, curve[:, [0, 2, 3]], atol=1e-6)
    with pytest.raises(ValueError, match="increasing steps"):
        algo.adaptation_curve(episodes, steps=3, at=[2, 1])


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_state_dict_round_trip_gives_identical_learners(name: str, kind: str) -> None:
    algo = make(name, kind, seed=0)
    episodes = batch(kind)
    if algo.meta_trained:
        grads, _ = algo.meta_gradients(episodes)  # move away from the initialisation
        with torch.no_grad():
            for n, p in algo.trainable_parameters().items():
                p -= 0.01 * grads[n]
    buffer = io.BytesIO()
    torch.save(algo.state_dict(), buffer)
    buffer.seek(0)
    restored = make(name, kind, seed=1)
    restored.load_state_dict(torch.load(buffer))
    task = episodes[0]
    with torch.no_grad():
        expected = algo.adapt(task.support_x, task.support_y, steps=2)(task.query_x)
        got = restored.adapt(task.support_x, task.support_y, steps=2)(task.query_x)
    assert torch.equal(expected, got)
    learner = restored.adapt(task.support_x, task.support_y, steps=2)
    saved = io.BytesIO()
    torch.save(learner.state_dict(), saved)
    saved.seek(0)
    learner.load_state_dict(torch.load(saved))
    assert torch.equal(learner(task.query_x), got)


@pytest.mark.parametrize(("name", "kind"), META_CASES)
def test_optimizer_on_meta_gradients_lowers_meta_loss(name: str, kind: str) -> None:
    algo = make(name, kind)
    episodes = batch(kind)
    params = algo.trainable_parameters()
    if name in OUTER_LR:
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params.values(), lr=OUTER_LR[name])
    else:
        optimizer = torch.optim.Adam(params.values(), lr=0.01)
    first = None
    for _ in range(6):
        grads, metrics = algo.meta_gradients(episodes)
        first = metrics["loss"] if first is None else first
        for n, p in params.items():
            p.grad = grads[n]
        optimizer.step()
    _, metrics = algo.meta_gradients(episodes)
    assert metrics["loss"] < first


def test_algorithms_without_meta_training_say_so() -> None:
    probe = make("linear_probe", "classification")
    assert not probe.meta_trained and not any(p.requires_grad for p in probe.parameters())
    with pytest.raises(ValueError, match="linear_probe is not meta-trained"):
        probe.meta_gradients(classification_batch())


def test_registry_lookup_errors_and_option_filtering() -> None:
    assert {"maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "finetune"} <= set(
        list_algorithms())
    assert get_algorithm("MAML") is MAML
    with pytest.raises(KeyError, match="did you mean 'maml'"):
        get_algorithm("mamll")
    with pytest.raises(ValueError, match="Registered: "):
        get_algorithm("nothing-like-it")
    model = nn.Sequential()
    with pytest.raises(TypeError, match="warp_factor"):
        build_algorithm("maml", model, warp_factor=9)
    algo = build_algorithm("fomaml", mlp(1, 1, hidden=4), inner_lr=0.1, num_classes=3)
    assert isinstance(algo, MAML) and algo.first_order and algo.inner_lr == 0.1
    assert MAML(mlp(1, 1, hidden=4), first_order=True).first_order
    proto = build_algorithm("protonet", mlp(1, 1, hidden=4), inner_lr=0.1, inner_steps=3)
    assert proto.name == "protonet"
    with pytest.raises(ValueError, match="regression"):
        proto.meta_gradients(regression_batch())
