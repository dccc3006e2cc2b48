"""Text models: tokenisation (cached, truncated with a warning), the encoder body, adapt
scopes and LoRA, meta-gradients through attention, and text recipes end to end. Every
model here is a tiny random BERT built in the test (tests/text_fixtures.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from metafit.algorithms import MAML, Reptile
from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.config.recipe import load_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.data.splits import class_split
from metafit.data.text_csv import TextCSV
from metafit.models.text import TextBody, count_parameters, text_model, transformer_layers
from metafit.models.tokenizer import ModelDirError, check_model_dir, tokenize
from metafit.runs.directory import RunDir
from test_gradients import rel_error
from text_fixtures import lora_model, make_model_dir, sentences, shared_model_dir, write_csv

CLASSES = 10


def episodes(tasks: int = 2, ways: int = 3, shots: int = 2, queries: int = 2, seed: int = 0,
             tmp: Path | None = None):  # type: ignore[no-untyped-def]
    path = write_csv((tmp or Path(shared_model_dir())) / f"intents{seed}.csv",
                     sentences(CLASSES, 6, seed=seed))
    data = TextCSV(path).tokenize(shared_model_dir(), max_length=16)
    return EpisodeSampler(data, ways=ways, shots=shots, queries=queries, seed=seed).sample(tasks)


def lora(seed: int = 0, ways: int = 3) -> nn.Module:
    return lora_model(ways, seed)


# -- tokenisation --------------------------------------------------------------------------
def test_tokenisation_cache_round_trips(monkeypatch) -> None:
    texts = [t for t, _ in sentences(3, 4)]
    first = tokenize(texts, shared_model_dir(), 16)
    assert first.shape == (12, 16) and first.dtype == torch.long
    assert bool((first[:, 0] == 2).all())  # [CLS] first, padding (0) last
    import metafit.models.tokenizer as text_module

    def no_tokenizer(*_a, **_k):  # the second call must come from the cache
        raise AssertionError("tokenizer loaded again")

    monkeypatch.setattr(text_module, "load_tokenizer", no_tokenizer)
    again = tokenize(texts, shared_model_dir(), 16)
    assert torch.equal(first, again)
    with pytest.raises(AssertionError, match="loaded again"):  # another length: not cached
        tokenize(texts, shared_model_dir(), 12)


def test_long_texts_are_truncated_with_a_warning() -> None:
    texts = ["please my card " * 10, "help"]
    with pytest.warns(UserWarning, match=r"1 of 2 texts are longer than max_length=8"):
        ids = tokenize(texts, shared_model_dir(), 8, cache=False)
    assert ids.shape == (2, 8) and int(ids[0, -1]) == 3  # truncated, still ends with [SEP]


def test_model_directory_errors_name_the_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nowhere")
    root = make_model_dir(tmp_path / "m", classes=2)
    (root / "model.safetensors").unlink()
    (root / "config.json").unlink()
    with pytest.raises(ModelDirError, match="missing config.json, model.safetensors or "
                       "pytorch_model.bin"):
        text_model(3, root)
    for f in root.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ModelDirError, match=r"tokenizer\.json or vocab\.txt \(the tokenizer\)"):
        tokenize(["a"], root, 8)


# -- the model -----------------------------------------------------------------------------
def test_padding_changes_nothing_and_mean_pooling_skips_it() -> None:
    model = text_model(3, shared_model_dir(), adapt="full")
    ids = tokenize(["please help alpha0 beta0", "card"], shared_model_dir(), 16)
    wide = torch.cat([ids, torch.zeros(2, 8, dtype=torch.long)], 1)  # more padding
    with torch.no_grad():
        assert torch.allclose(model(ids), model(wide), atol=1e-6)
        one = model(ids[1:])  # alone, the short text gets its own cut
        assert torch.allclose(one, model(ids)[1:], atol=1e-6)
    with pytest.raises(TypeError, match="token ids"):
        model(ids.float())


@pytest.mark.parametrize(("scope", "expect"), [
    ("full", lambda n: True),
    ("top", lambda n: "head" in n or ".layer.1." in n),
    ("head", lambda n: "head" in n),
    ("lora", lambda n: "head" in n or "lora_" in n),
])
def test_adapt_scopes_choose_the_trainable_parameters(scope: str, expect) -> None:  # type: ignore[no-untyped-def]
    model = text_model(3, shared_model_dir(), adapt=scope, adapt_layers=1)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(expect(n) for n in names)
    assert all(expect(n) == p.requires_grad for n, p in model.named_parameters())
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    assert len(transformer_layers(model.body.encoder)) == 2
    with pytest.raises(ValueError, match="adapt_layers=3, but the encoder has 2 layers"):
        text_model(3, shared_model_dir(), adapt="top", adapt_layers=3)


def test_inner_loop_changes_only_the_declared_parameters() -> None:
    algo = MAML(lora(), inner_lr=0.5, inner_steps=3)
    task = episodes()[0]
    before = {n: p.detach().clone() for n, p in algo.model.named_parameters()}
    learner = algo.adapt(task.support_x, task.support_y, steps=3)
    changed = {n for n, p in learner.params.items() if not torch.equal(p, before[n])}
    declared = {n for n, p in algo.model.named_parameters() if p.requires_grad}
    assert changed == declared and any("lora_A" in n for n in changed)
    assert all(torch.equal(p, before[n]) for n, p in algo.model.named_parameters())


# -- meta-gradients through attention -------------------------------------------------------
@pytest.fixture()
def float64():  # type: ignore[no-untyped-def]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def finite_difference_of(algo, batch, names: list[str], eps: float = 1e-6):  # type: ignore[no-untyped-def]
    """Central differences of the meta-loss w.r.t. the named parameters only (the others
    stay trainable, so the inner loop is the one being checked)."""
    params = algo.trainable_parameters()
    result = {}
    for name in names:
        flat = params[name].data.view(-1)
        g = torch.zeros(flat.numel(), dtype=flat.dtype)
        for i in range(flat.numel()):
            orig = float(flat[i])
            values = []
            for delta in (eps, -eps):
                flat[i] = orig + delta
                values.append(float(algo.meta_loss(batch)[0].detach()))
            flat[i] = orig
            g[i] = (values[0] - values[1]) / (2 * eps)
        result[name] = g.view_as(params[name])
    return result


def test_maml_through_lora_matches_finite_differences(float64) -> None:  # type: ignore[no-untyped-def]
    algo = MAML(lora().double(), inner_lr=0.5, inner_steps=2)
    batch = episodes(tasks=2)
    grads, _ = algo.meta_gradients(batch)
    assert rel_error(grads, algo.gradients_of(algo.meta_loss(batch)[0])) < 1e-10  # looped
    names = [n for n in grads if ".layer.0.attention.self.query.lora_" in n or "head" in n]
    assert len(names) == 4  # lora_A, lora_B of one projection, the head's weight and bias
    fd = finite_difference_of(algo, batch, names)
    assert rel_error({n: grads[n] for n in names}, fd) < 1e-5
    first = MAML(lora().double(), inner_lr=0.5, inner_steps=2, first_order=True)
    approx, _ = first.meta_gradients(batch)
    assert rel_error({n: approx[n] for n in names}, fd) > 1e-4  # first order differs


def test_reptile_text_direction_is_theta_minus_adapted_theta() -> None:
    algo = Reptile(lora(), inner_lr=0.1, inner_steps=3)
    batch = episodes(tasks=2)
    grads, _ = algo.meta_gradients(batch)
    expected = {n: torch.zeros_like(p) for n, p in algo.trainable_parameters().items()}
    for task in batch:
        model = copy.deepcopy(algo.model)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(task.support_x), task.support_y).backward()
            opt.step()
        adapted = dict(model.named_parameters())
        for n, p in algo.trainable_parameters().items():
            expected[n] += (p.detach() - adapted[n.removeprefix("model.")].detach()) / 2
    assert rel_error(grads, expected) < 1e-5


# -- recipes end to end ---------------------------------------------------------------------
def write_data(tmp_path: Path, per_class: int = 8) -> Path:
    return write_csv(tmp_path / "intents.csv", sentences(CLASSES, per_class))


def text_args(tmp_path: Path, algorithm: str, *extra: str) -> list[str]:
    return ["dataset=text_csv", "model=text", f"data_root={write_data(tmp_path)}",
            f"text_model={shared_model_dir()}", "max_length=16", f"algorithm={algorithm}",
            "ways=3", "shots=2", "queries=2", "meta_batch=2", "iterations=3", "val_every=3",
            "val_episodes=4", "test_episodes=6", "test_queries=2", "class_split=[4, 3, 3]", *extra]


@pytest.mark.parametrize(("algorithm", "extra"), [
    ("maml", ["adapt=lora", "lora_r=2", "inner_lr=0.5"]),
    ("protonet", ["adapt=top", "adapt_layers=1"]),
    ("linear_probe", ["inner_lr=0.1", "inner_steps=20", "test_ways=2"]),
])
def test_train_and_evaluate_a_text_recipe(tmp_path: Path, capsys, algorithm: str,
                                          extra: list[str]) -> None:
    out = tmp_path / "run"
    args = ["train", "_banking77", *text_args(tmp_path, algorithm, *extra), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    status = RunDir(out).status()
    assert status["status"] == "complete"
    if algorithm == "linear_probe":
        assert status["iteration"] == 0 and status["reason"] == "not meta-trained"
    else:
        assert status["iteration"] == 3
    assert main(["evaluate", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["metric"] == "accuracy" and 0.0 <= result["mean"] <= 1.0


def test_text_input_errors(tmp_path: Path, capsys) -> None:
    base = ["train", "_banking77"]
    opts = ["--out", str(tmp_path / "r"), "--no-progress"]
    # A label with fewer examples than shots + queries: named in a warning when enough
    # other classes remain, in the error when too few do.
    train_ids = class_split(CLASSES, "train", 0, (4, 3, 3))
    thin_label = f"intent_{train_ids[0]}"
    rows = [r for r in sentences(CLASSES, 6) if r[1] != thin_label] + [("alpha beta", thin_label)]
    thin = write_csv(tmp_path / "thin.csv", rows)
    args = [a if not a.startswith("data_root=") else f"data_root={thin}"
            for a in text_args(tmp_path, "maml")]
    with pytest.warns(UserWarning, match=f"never sampled: '{thin_label}' \\(1\\)"):
        assert main([*base, *args, *opts]) == 0
    assert main([*base, *args, "ways=4", "shots=3", "queries=3", "--out",
                 str(tmp_path / "r2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"short: '{thin_label}' (1)" in err and "only 3 of 4 classes" in err, err
    # An empty text.
    bad = tmp_path / "bad.csv"
    bad.write_text("text,category\nhello,a\n,b\n", encoding="utf-8")
    args = [a if not a.startswith("data_root=") else f"data_root={bad}"
            for a in text_args(tmp_path, "maml")]
    assert main([*base, *args, *opts]) == 2
    assert "empty 'text' on line(s) 3" in capsys.readouterr().err
    # A model directory that lacks files.
    broken = make_model_dir(tmp_path / "broken", classes=2)
    (broken / "config.json").unlink()
    args = [a if not a.startswith("text_model=") else f"text_model={broken}"
            for a in text_args(tmp_path, "maml")]
    assert main([*base, *args, *opts]) == 2
    assert "is missing config.json" in capsys.readouterr().err
    # ProtoNet has no head, so a head-only scope leaves it nothing to train.
    assert main([*base, *text_args(tmp_path, "protonet", "adapt=head"), *opts]) == 2
    assert "protonet uses no head, so adapt='head'" in capsys.readouterr().err
    # A text model on image data, and adapt scopes on image models.
    assert main(["recipes", "show", "omniglot_5w1s_maml", "model=text"]) == 2
    err = capsys.readouterr().err
    assert "go together" in err and "(got {" not in err  # not the whole recipe after it
    assert main(["recipes", "show", "omniglot_5w1s_maml", "adapt=lora"]) == 2
    assert "adapt 'lora' is for text models" in capsys.readouterr().err


def test_build_algorithm_logs_trainable_counts(caplog) -> None:
    recipe = load_recipe("_banking77", {"text_model": str(shared_model_dir()),
                                        "adapt": "lora", "lora_r": 2})
    with caplog.at_level("DEBUG", logger="metafit.models.text"):
        algo = build_algorithm(recipe)
    trainable = sum(p.numel() for p in algo.parameters() if p.requires_grad)
    assert f"{trainable:,} of" in caplog.text and "parameters trainable" in caplog.text
    assert isinstance(algo.model.body, TextBody)


def test_adapt_and_score_on_a_fixed_label_set(tmp_path: Path) -> None:
    from metafit.data.splits import load_split
    from metafit.evaluation.test_set import adapt_and_score

    path = write_data(tmp_path, per_class=6)
    recipe = load_recipe("_banking77", {"data_root": str(path), "split_classes": False,
                                        "class_split": None, "text_model": str(shared_model_dir()),
                                        "max_length": 16, "algorithm": "linear_probe"})
    train, test = load_split(recipe, "train"), load_split(recipe, "test")
    assert train.classes == test.classes and len(train.classes) == CLASSES  # all classes
    algo = build_algorithm(recipe)
    ids, labels = train.tokens, train.targets
    support = torch.cat([torch.nonzero(labels == c).flatten()[:3] for c in range(CLASSES)])
    rest = torch.tensor([i for i in range(len(labels)) if i not in set(support.tolist())])
    score = adapt_and_score(algo, ids[support], labels[support], ids[rest], labels[rest],
                            steps=50)
    assert score.test == len(rest) and score.predictions.shape == (len(rest),)
    assert score.accuracy == float((score.predictions == labels[rest]).float().mean())
    assert score.accuracy > 1.5 / CLASSES  # the class words are learnable from 3 shots
    with pytest.raises(ValueError, match="have no support example"):
        adapt_and_score(algo, ids[support[3:]], labels[support[3:]], ids[rest], labels[rest])
    with pytest.raises(ValueError, match="test labels must be in 0..9"):
        adapt_and_score(algo, ids[support], labels[support], ids[rest], labels[rest] + 5)


def test_predict_sorts_texts_by_length_and_returns_input_order() -> None:
    from metafit.evaluation.test_set import predict

    algo = build_algorithm(load_recipe("_banking77", {"text_model": str(shared_model_dir()),
                                                      "algorithm": "protonet"}))
    ids = mixed_length_ids(algo.model.body, 23)
    support_y = torch.arange(3).repeat(2)
    learner = algo.adapt(ids[:6], support_y)
    pad = algo.model.body.pad_id
    one_by_one = torch.cat([predict(learner, ids[i:i + 1]) for i in range(23)])  # [23, 3]
    by_length = predict(learner, ids, batch=4, pad_id=pad)  # batches of similar length
    torch.testing.assert_close(by_length, one_by_one, rtol=0, atol=1e-5)
    in_order = predict(learner, ids, batch=4)  # no pad id: file order
    torch.testing.assert_close(in_order, one_by_one, rtol=0, atol=1e-5)


def mixed_length_ids(body: TextBody, count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 16]`` token ids of 2-14 tokens each, right-padded, in no length order."""
    gen = torch.Generator().manual_seed(seed)
    vocab = int(body.encoder.config.vocab_size)
    ids = torch.full((count, 16), body.pad_id, dtype=torch.long)
    for i, n in enumerate(torch.randint(2, 15, (count,), generator=gen).tolist()):
        ids[i, :n] = torch.randint(5, vocab, (n,), generator=gen)
    return ids


def test_large_batches_run_in_length_chunks_with_the_same_outputs_and_gradients() -> None:
    model = text_model(None, shared_model_dir())
    body = model.body
    assert isinstance(body, TextBody)
    ids = mixed_length_ids(body, 21, seed=1)
    weight = next(p for n, p in body.named_parameters() if "intermediate" in n)

    def run(chunk: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        body.length_chunk = chunk
        out = body(ids)  # [21, H]
        (g,) = torch.autograd.grad(out.pow(2).sum(), weight, create_graph=True)
        (gg,) = torch.autograd.grad(g.pow(2).sum(), weight)  # second order, as MAML needs
        return out.detach(), g.detach(), gg

    whole, chunked = run(0), run(4)  # one call; 6 calls of <= 4 texts of similar length
    for a, b in zip(whole, chunked, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert float(whole[1].abs().sum()) > 0 and float(whole[2].abs().sum()) > 0


def test_building_a_text_model_is_quiet_at_info(caplog: pytest.LogCaptureFixture) -> None:
    # every `metafit predict` builds one: the parameter count is a debug line there
    # (the trainer states it once at INFO when a run starts)
    import logging

    with caplog.at_level(logging.INFO, logger="metafit"):
        text_model(3, shared_model_dir(), adapt="head")
    assert not [r for r in caplog.records if r.levelno >= logging.INFO]
    with caplog.at_level(logging.DEBUG, logger="metafit"):
        text_model(3, shared_model_dir(), adapt="head")
    assert any("parameters trainable" in r.getMessage() for r in caplog.records)
