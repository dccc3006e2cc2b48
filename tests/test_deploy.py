"""Adapting a trained run to a user's examples, predicting, and model directories: the
CLI on an image folder and a CSV, probabilities equal to every algorithm's own, clear
errors for bad support sets and inputs, atomic and verified model directories (simulated
crashes), thread-safe adaptation, compression."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deploy_fixtures import SIZE, image_run, pattern, support_folder, text_recipe, text_run
from metafit.algorithms import list_algorithms
from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.data.image_folder import ImageFolder
from metafit.deploy import (
    AdaptedModel,
    Adapter,
    InputError,
    ModelDirError,
    SupportError,
    load_support,
)
from metafit.deploy import modeldir as modeldir_module
from metafit.deploy.compress import prune, quantize, sparsity, state_size
from test_trainer import classification_recipe
from text_fixtures import sentences, write_csv


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> AdaptedModel:
    root = support_folder(tmp_path_factory.mktemp("support"))
    inputs, labels = load_support(root, "image")
    return Adapter.from_run(image_run()).adapt(inputs, labels)


# -- the command line ----------------------------------------------------------------------
def test_adapt_and_predict_cli_on_an_image_folder(tmp_path: Path, capsys) -> None:
    support = support_folder(tmp_path / "support", size=2 * SIZE)  # resized as in training
    out = tmp_path / "model"
    assert main(["adapt", str(image_run()), "--support", str(support), "--out", str(out)]) == 0
    assert "3 classes from 6 examples" in capsys.readouterr().out
    files = [str(p) for p in sorted(support.glob("*/*.png"))]
    assert main(["predict", str(out), *files, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in rows] == files
    model = AdaptedModel.load(out)
    for row, expected in zip(rows, model.predict(files), strict=True):
        assert row["label"] == expected["label"] in model.label_names
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-7)
    assert main(["predict", str(out), str(support / "label_1")]) == 0  # a folder, as a table
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("input") and len(table) == 3 and "label_" in table[1]


def test_adapt_and_predict_cli_on_a_csv(tmp_path: Path, capsys) -> None:
    rows = sentences(4, 3, seed=5)
    support = write_csv(tmp_path / "support.csv", rows)
    out = tmp_path / "model"
    assert main(["adapt", str(text_run()), "--support", str(support), "--out", str(out),
                 "--steps", "60", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["labels"] == [f"intent_{c}" for c in range(4)] and summary["steps"] == 60
    assert summary["support_accuracy"] == 1.0
    texts = [t for t, _ in rows]
    assert main(["predict", str(out), *texts[:2], "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert [p["label"] for p in predicted] == ["intent_0", "intent_0"]
    assert (out / "encoder" / "tokenizer.json").is_file()  # the tokenizer travels along


def test_cli_errors_are_one_line(tmp_path: Path, capsys) -> None:
    single = support_folder(tmp_path / "single", classes=1)
    assert main(["adapt", str(image_run()), "--support", str(single), "--out",
                 str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metafit: error: the support set has a single class ('label_0')")
    assert not (tmp_path / "m").exists()
    assert main(["predict", str(tmp_path), "x.png"]) == 2
    assert "has no manifest.json" in capsys.readouterr().err


# -- probabilities, preprocessing, persistence ---------------------------------------------
@pytest.mark.parametrize("algorithm", list_algorithms())
def test_probabilities_equal_the_algorithms_own(algorithm: str) -> None:
    """batch_norm='batch' reproduces the learner on a query batch; 'support' reproduces it
    on the support set (its statistics are frozen in) and predicts each input alone."""
    recipe = classification_recipe(Path("unused"), algorithm, ways=3, eval_inner_steps=3)
    algo = build_algorithm(recipe, num_train_classes=8)
    adapter = Adapter(recipe, algo)
    x = torch.rand(9, 1, SIZE, SIZE)  # [S, 1, 8, 8]
    y = torch.tensor([0, 1, 2] * 3)
    queries = torch.rand(7, 1, SIZE, SIZE)
    learner = adapter.learner(x, y)
    with torch.no_grad():
        own_q, own_s = learner(queries).softmax(-1), learner(x).softmax(-1)  # [7, 3], [9, 3]
    batch = adapter.adapt_tensors(x, y, ["a", "b", "c"], batch_norm="batch")
    torch.testing.assert_close(batch.logits(queries).softmax(-1), own_q, rtol=0, atol=1e-6)
    frozen = adapter.adapt_tensors(x, y, ["a", "b", "c"])
    torch.testing.assert_close(frozen.logits(x).softmax(-1), own_s, rtol=0, atol=1e-5)
    one_by_one = torch.cat([frozen.logits(q[None]) for q in queries])  # [7, 3]
    torch.testing.assert_close(one_by_one, frozen.logits(queries), rtol=0, atol=1e-5)


@pytest.mark.parametrize("algorithm", ["maml", "protonet", "protonet-cosine"])
def test_text_model_with_lora_merged_equals_the_learner(algorithm: str, tmp_path: Path) -> None:
    extra: dict[str, Any] = {}
    if algorithm == "protonet-cosine":
        algorithm, extra = "protonet", {"distance": "cosine", "distance_scale": 20.0}
    algo = build_algorithm(text_recipe(algorithm, **extra))
    with torch.no_grad():
        for n, p in algo.named_parameters():
            if "lora_B" in n:  # non-zero adapters, so that merging them matters
                p.normal_(0, 0.1)
    adapter = Adapter(text_recipe(algorithm, **extra), algo)
    rows = sentences(3, 3, seed=2)
    model = adapter.adapt([t for t, _ in rows], [label for _, label in rows])
    assert not any("lora" in k for k in model.module.state_dict())
    assert model.support is not None
    x, y = model.support
    with torch.no_grad():
        own = adapter.learner(x, y)(x).softmax(-1)
    texts = [t for t, _ in rows]
    torch.testing.assert_close(model.predict_proba(texts), own, rtol=0, atol=1e-5)
    # the head's distance travels with the model directory
    loaded = AdaptedModel.load(model.save(tmp_path / "m"))
    torch.testing.assert_close(loaded.predict_proba(texts), own, rtol=0, atol=1e-5)


def test_images_are_preprocessed_like_the_training_data(tmp_path: Path) -> None:
    root = support_folder(tmp_path / "s", size=20, mode="RGB")  # other size and mode
    data = ImageFolder(root, image_size=SIZE, channels=1, cache=False)
    adapter = Adapter.from_run(image_run())
    x = adapter.preprocessor([str(f) for f in data.files])
    assert torch.equal(x, data.gather(torch.arange(len(data))))
    as_bytes = adapter.preprocessor([Path(f).read_bytes() for f in data.files])
    arrays = adapter.preprocessor([(255 * x[i, 0]).round().byte().numpy()
                                   for i in range(len(x))])
    assert torch.equal(as_bytes, x) and torch.equal(arrays, x)


def test_save_load_round_trip_gives_identical_probabilities(image_model, tmp_path) -> None:
    queries = [pattern(c, 9) for c in range(3)]
    image_model.save(tmp_path / "m")
    loaded = AdaptedModel.load(tmp_path / "m")
    assert loaded.label_names == image_model.label_names == ["label_0", "label_1", "label_2"]
    assert torch.equal(loaded.predict_proba(queries), image_model.predict_proba(queries))
    spec = json.loads((tmp_path / "m" / "model.json").read_text())
    assert spec["preprocessing"]["image_size"] == SIZE and spec["metafit_version"]
    assert spec["architecture"]["batch_norm"] == "support"


# -- errors --------------------------------------------------------------------------------
def test_bad_support_sets_are_named(image_model) -> None:
    adapter = Adapter.from_run(image_run())
    img = [pattern(c, 0) for c in range(3)]
    cases = [
        (img[:1], ["a"], r"single class \('a'\)"),
        ([], [], "support set is empty"),
        (img, ["a", "b", "c"], None),  # fine: protonet takes any number of ways
        (img, ["a", "b"], "3 inputs but 2 labels"),
        (img, ["a", "b", ""], "example 2: the label must be a non-empty string"),
        ([img[0], np.zeros((5, 5), np.uint8), img[2]], ["a", "b", "c"],
         r"input 1: image of shape \(5, 5, 1\), but the model takes 8x8 with 1 channel"),
        ([img[0], np.zeros((8, 8, 3), np.uint8), img[2]], ["a", "b", "c"],
         r"input 1: image of shape \(8, 8, 3\)"),
        ([img[0], b"not a png", img[2]], ["a", "b", "c"], "input 1: cannot decode the image"),
        ([img[0], "/no/such.png", img[2]], ["a", "b", "c"],
         r"input 1 \(/no/such.png\): no such image file"),
    ]
    for inputs, labels, message in cases:
        if message is None:
            adapter.adapt(inputs, labels)
            continue
        with pytest.raises(SupportError, match=message):
            adapter.adapt(inputs, labels)
    with pytest.raises(SupportError, match=r"unknown label\(s\) \['z'\]"):
        adapter.adapt(img, ["a", "b", "z"], classes=["a", "b", "c"])
    with pytest.raises(SupportError, match=r"too few examples: class\(es\) 'c' \(0\)"):
        adapter.adapt(img[:2], ["a", "b"], classes=["a", "b", "c"])
    adapter.min_shots = 2
    with pytest.raises(SupportError, match=r"too few examples: class\(es\) 'a' \(1\)"):
        adapter.adapt(img + img[1:], ["a", "b", "c", "b", "c"])
    with pytest.raises(InputError, match="input 0: image of shape"):
        image_model.predict([np.zeros((3, 3), np.uint8)])


def test_fixed_head_and_text_errors(tmp_path: Path) -> None:
    maml = Adapter.from_run(image_run("maml"))  # meta-trained with a 2-way head
    with pytest.raises(SupportError, match="2-way head, so the support set needs exactly 2"):
        maml.adapt([pattern(c, 0) for c in range(3)], ["a", "b", "c"])
    text = Adapter.from_run(text_run())
    with pytest.raises(SupportError, match="input 1: empty text"):
        text.adapt(["card alpha0", "  ", "beta1 help"], ["x", "y", "y"])
    with pytest.raises(SupportError, match="a text must be a string"):
        text.adapt(["card alpha0", 7], ["x", "y"])  # type: ignore[list-item]
    with pytest.raises(SupportError, match=r"missing or empty 'category' on line\(s\) 3"):
        csv = tmp_path / "bad.csv"
        csv.write_text("text,category\nhello alpha0,x\nworld beta1,\n", encoding="utf-8")
        load_support(csv, "text")


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _bump_version(path: Path) -> None:
    path.write_text(path.read_text().replace('"format_version": 2', '"format_version": 99'))


DAMAGE = [  # (file, what is done to it, the error)
    ("manifest.json", Path.unlink, "no manifest.json: .* incomplete"),
    ("weights.safetensors", _flip_a_byte, "weights.safetensors does not match its checksum"),
    ("model.json", Path.unlink, "model.json is missing"),
    ("manifest.json", _bump_version, "format version 99 is not supported"),
]


def test_corrupt_and_incomplete_model_directories_do_not_load(image_model, tmp_path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        AdaptedModel.load(tmp_path / "nothing")
    for i, (name, damage, message) in enumerate(DAMAGE):
        damage(image_model.save(tmp_path / str(i)) / name)
        with pytest.raises(ModelDirError, match=message):
            AdaptedModel.load(tmp_path / str(i))
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(ModelDirError, match="not a metafit model directory .* refusing"):
        image_model.save(other)
    assert (other / "keep.txt").read_text() == "mine"


# -- atomic writes -------------------------------------------------------------------------
def _temp_dirs(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if ".tmp-" in p.name]


def test_failure_mid_write_keeps_the_previous_model(image_model, tmp_path, monkeypatch) -> None:
    path = tmp_path / "model"
    image_model.save(path)
    before = AdaptedModel.load(path).predict_proba([pattern(0, 5)])
    other = prune(image_model, 0.5)
    real = modeldir_module._write_synced

    def crash(p: Path, data: bytes) -> None:
        real(p, data[: len(data) // 2])  # half written, then the "disk" fails
        if p.name == "weights.safetensors":
            raise OSError("disk full")

    monkeypatch.setattr(modeldir_module, "_write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        other.save(path)
    monkeypatch.undo()
    assert torch.equal(AdaptedModel.load(path).predict_proba([pattern(0, 5)]), before)
    assert _temp_dirs(tmp_path) == []
    with pytest.raises(OSError, match="disk full"):  # a fresh path: nothing appears
        monkeypatch.setattr(modeldir_module, "_write_synced", crash)
        other.save(tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists() and _temp_dirs(tmp_path) == []


def test_a_killed_writer_leaves_the_previous_model_loadable(image_model, tmp_path) -> None:
    """A real crash (os._exit, no cleanup) after half of weights.safetensors: the target still
    holds the previous model; the leftover temporary directory does not load."""
    path = tmp_path / "model"
    image_model.save(path)
    script = textwrap.dedent(f"""
        import os
        from metafit.deploy import AdaptedModel
        from metafit.deploy import modeldir
        real = modeldir._write_synced
        def crash(p, data):
            if p.name == "weights.safetensors":
                real(p, data[: len(data) // 2])
                os._exit(9)
            real(p, data)
        modeldir._write_synced = crash
        AdaptedModel.load({str(path)!r}).save({str(path)!r})
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert done.returncode == 9
    AdaptedModel.load(path)
    leftovers = _temp_dirs(tmp_path)
    assert len(leftovers) == 1 and (leftovers[0] / "weights.safetensors").is_file()
    with pytest.raises(ModelDirError, match="no manifest.json"):
        AdaptedModel.load(leftovers[0])


def test_replacement_without_atomic_exchange_always_leaves_a_model(image_model, tmp_path,
                                                                   monkeypatch) -> None:
    """Where renameat2 is missing: a crash between the two renames leaves no directory at
    the target, and the loader reads the previous model from .NAME.previous."""
    path = tmp_path / "model"
    image_model.save(path)
    before = AdaptedModel.load(path).predict_proba([pattern(1, 5)])
    monkeypatch.setattr(modeldir_module, "_exchange", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst) -> None:  # noqa: ANN001
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("power cut")
        real_rename(src, dst)

    monkeypatch.setattr(modeldir_module.os, "rename", rename)
    with pytest.raises(OSError, match="power cut"):
        prune(image_model, 0.3).save(path)
    assert not path.exists()
    assert torch.equal(AdaptedModel.load(path).predict_proba([pattern(1, 5)]), before)
    monkeypatch.setattr(modeldir_module.os, "rename", real_rename)
    prune(image_model, 0.3).save(path)  # a later save completes the replacement
    assert AdaptedModel.load(path).compression["prune"]["amount"] == 0.3


# -- concurrency ---------------------------------------------------------------------------
def test_concurrent_adapt_calls_equal_serial_ones() -> None:
    adapter = Adapter.from_run(image_run("maml"))
    sets = [([pattern(c, i + k) for c in range(2) for i in range(2)], ["a", "a", "b", "b"])
            for k in range(8)]
    serial = [adapter.adapt(i, lab, steps=8).predict_proba(i) for i, lab in sets]
    results: list[torch.Tensor | None] = [None] * len(sets)

    def work(k: int) -> None:
        inputs, labels = sets[k]
        for _ in range(3):  # overlap for longer (shared modules fail this within a few calls)
            results[k] = adapter.adapt(inputs, labels, steps=8).predict_proba(inputs)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(sets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, serial, strict=True):
        assert got is not None and torch.equal(got, want)


# -- compression ---------------------------------------------------------------------------
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_pruning_reaches_the_sparsity(image_model, scope: str) -> None:
    pruned = prune(image_model, 0.6, scope)
    assert sparsity(image_model.module) < 0.01
    assert sparsity(pruned.module) == pytest.approx(0.6, abs=0.01)
    assert image_model.support is not None
    x, y = image_model.support
    change = float((pruned.logits(x).argmax(-1) == y).float().mean()
                   - (image_model.logits(x).argmax(-1) == y).float().mean())
    assert np.isfinite(change) and -1.0 <= change <= 1.0
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune(image_model, 1.0)


def test_quantization_shrinks_the_text_model_and_round_trips(tmp_path: Path) -> None:
    adapter = Adapter.from_run(text_run())
    rows = sentences(3, 2, seed=3)
    texts = [t for t, _ in rows]
    model = adapter.adapt(texts, [label for _, label in rows])
    small = quantize(model, embeddings=True)
    assert state_size(small.module)[0] < state_size(model.module)[0]  # tiny: pickle overhead
    linear = small.module.body.encoder.encoder.layer[0].attention.self.query
    assert linear.weight().dtype == torch.qint8
    assert (small.predict_proba(texts) - model.predict_proba(texts)).abs().max() < 0.1
    small.save(tmp_path / "q")
    loaded = AdaptedModel.load(tmp_path / "q")
    assert torch.equal(loaded.predict_proba(texts), small.predict_proba(texts))
    with pytest.raises(ValueError, match="cannot prune a quantized model"):
        prune(small, 0.5)
    # an input's answer depends on it alone: the same as when it is sent by itself
    together = small.predict_proba(texts)
    for i, text in enumerate(texts):
        assert torch.equal(small.predict_proba([text])[0], together[i])


def test_quantizing_a_model_without_linear_layers_warns(image_model) -> None:
    with pytest.warns(UserWarning, match="no Linear layer: int8 dynamic quantization changes"):
        same = quantize(image_model)  # ProtoNet's conv4: convolutions only
    x = image_model.support[0] if image_model.support else None
    assert x is not None and torch.equal(same.logits(x), image_model.logits(x))


def test_compress_cli_reports_size_latency_and_test_episode_accuracy(image_model, tmp_path,
                                                                      capsys) -> None:
    source = image_model.save(tmp_path / "model")
    out = tmp_path / "pruned"
    assert main(["compress", str(source), "--prune", "0.5", "--out", str(out), "--episodes",
                 "4", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert figures["before"]["bytes"] > 0 and figures["after"]["ms_batch1"] > 0
    test = figures["test_episodes"]
    assert test["episodes"] == 4 and test["run"] == str(image_run())
    for row in (test["float"], test["compressed"]):
        assert 0.0 <= row["accuracy"] <= 1.0 and np.isfinite(row["delta"])
    assert test["float"]["delta"] == 0.0
    assert AdaptedModel.load(out).compression["prune"]["sparsity"] == figures["sparsity"]
    assert main(["compress", str(source), "--out", str(tmp_path / "x")]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_compress_cli_prints_a_table_not_python_dicts(image_model, tmp_path, capsys) -> None:
    source = image_model.save(tmp_path / "model")
    assert main(["compress", str(source), "--prune", "0.5", "--out", str(tmp_path / "p"),
                 "--episodes", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    text = "\n".join(lines)
    assert "{" not in text and "}" not in text and "'" not in text
    assert lines[0].endswith("(pruned 50% of the conv/linear weights (global))")
    assert lines[1].split() == ["before", "after", "change"]
    rows = {ln.split("  ")[1].strip(): ln for ln in lines[2:6]}
    assert set(rows) == {"weights", "weights, gzipped", "latency, batch 1", "latency, batch 32"}
    assert "sparsity: 50.0% of the conv/linear weights are zero" in text
    assert any(ln.strip().startswith("float ") and "+-" in ln for ln in lines)
    assert any(ln.strip().startswith("compressed ") and "change" in ln for ln in lines)


def test_compress_figures_as_lines() -> None:
    from metafit.cli.compress_table import describe_compression, figures_lines

    figures = {"before": {"bytes": 4096, "gzip_bytes": 3000, "ms_batch1": 0.5, "ms_batch32": 2.0},
               "after": {"bytes": 1024, "gzip_bytes": 900, "ms_batch1": 0.25, "ms_batch32": 2.0},
               "sparsity": 0.25, "support_agreement": 1.0, "support_max_prob_change": 0.01}
    lines = figures_lines(figures)
    assert lines[1].split() == ["weights", "4.00", "KiB", "1.00", "KiB", "-75.0%"]
    assert lines[3].split() == ["latency,", "batch", "1", "0.500", "ms", "0.250", "ms", "-50.0%"]
    assert lines[4].endswith("+0.0%")
    assert describe_compression({"quantize": "int8", "quantize_embeddings": True,
                                 "prune": None}) == \
        "int8 dynamic quantization of the linear layers and embedding tables"
    assert describe_compression({"quantize": None, "prune": None}) == "not compressed"
