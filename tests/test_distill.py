"""Distillation of an adapted model into a smaller student (``metafit compress --distill``):
the student directory loads and predicts (an ordinary model directory: ONNX export is
not repeated here, it costs 10 s of imports), training brings it closer to the teacher than
it started, ``layers:N`` keeps N layers of the teacher's own encoder, the teacher's
temperature and reject threshold are refitted, and bad inputs give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_fixtures import pattern, support_folder, text_recipe
from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.deploy import AdaptedModel, Adapter, InputError, load_support
from metafit.deploy.distill import DistillSettings, distill, parse_student, read_unlabelled
from metafit.deploy.reject import RejectSetting
from metafit.models.text import transformer_layers
from test_trainer import classification_recipe
from text_fixtures import make_model_dir, sentences, write_csv


@pytest.fixture(scope="module")
def text_teacher() -> AdaptedModel:
    """A linear probe on the tiny 2-layer BERT, adapted to 3 intents."""
    recipe = text_recipe("linear_probe", eval_inner_steps=60)
    rows = sentences(3, 4, seed=1)
    adapter = Adapter(recipe, build_algorithm(recipe))
    return adapter.adapt([t for t, _ in rows], [label for _, label in rows])


@pytest.fixture(scope="module")
def image_teacher(tmp_path_factory: pytest.TempPathFactory) -> AdaptedModel:
    """MAML's conv4 (4 filters, 2 blocks, untrained) adapted to 3 classes of 8x8 images."""
    recipe = classification_recipe(Path("unused"), "maml", ways=3, eval_inner_steps=5)
    support = support_folder(tmp_path_factory.mktemp("support"))
    inputs, labels = load_support(support, "image")
    return Adapter(recipe, build_algorithm(recipe)).adapt(inputs, labels)


def unlabelled_texts(count: int = 60) -> list[str]:
    return [t for t, _ in sentences(3, count // 3, seed=7)]


def unlabelled_images(root: Path, per_class: int = 20) -> Path:
    for c in range(3):
        for i in range(per_class):
            Image.fromarray(pattern(c, 100 + i)).save(root / f"{c}_{i}.png")
    return root


def test_layers_student_keeps_the_teachers_first_layers_and_round_trips(text_teacher,
                                                                       tmp_path) -> None:
    texts = unlabelled_texts()
    student, report = distill(text_teacher, "layers:1", texts,
                              DistillSettings(steps=15, lr=3e-3, batch_size=16))
    layers = transformer_layers(student.module.body.encoder)
    assert len(layers) == 1 == student.module.body.encoder.config.num_hidden_layers
    assert report["layers"] == [0] and report["parameters"]["student"] < \
        report["parameters"]["teacher"]
    student.save(tmp_path / "student")
    loaded = AdaptedModel.load(tmp_path / "student")
    assert json.loads((tmp_path / "student" / "encoder" / "config.json").read_text())[
        "num_hidden_layers"] == 1
    assert torch.equal(loaded.predict_proba(texts[:5]), student.predict_proba(texts[:5]))
    assert loaded.predict(texts[:1])[0]["label"] in text_teacher.label_names
    assert loaded.compression["distill"]["student"] == "layers:1"
    # before training, the kept layer is the teacher's layer 0, weight for weight
    fresh, _ = distill(text_teacher, "layers:1", texts, DistillSettings(steps=0))
    teacher_layer = transformer_layers(text_teacher.module.body.encoder)[0]
    assert torch.equal(transformer_layers(fresh.module.body.encoder)[0].output.dense.weight,
                       teacher_layer.output.dense.weight)


def test_training_brings_the_student_closer_to_the_teacher(image_teacher, tmp_path) -> None:
    inputs = read_unlabelled(unlabelled_images(tmp_path), "image")
    settings = dict(batch_size=16, lr=3e-3, held_out=0.25, seed=1)
    untrained, before = distill(image_teacher, "mlp:16:1", inputs,
                                DistillSettings(steps=0, **settings))
    student, after = distill(image_teacher, "mlp:16:1", inputs,
                             DistillSettings(steps=80, **settings))
    assert before["kl"] == after["kl_before"]  # same seed: the same untrained student
    assert after["kl"] < 0.5 * before["kl"]
    assert after["agreement"] > before["agreement"]
    assert after["agreement"] >= 0.8
    x = image_teacher.preprocess(inputs)
    teacher = image_teacher.logits(x).argmax(-1)
    agree = (student.logits(x).argmax(-1) == teacher).float().mean()
    assert agree > (untrained.logits(x).argmax(-1) == teacher).float().mean()


def test_image_student_with_batch_norm_loads_and_predicts(image_teacher, tmp_path) -> None:
    inputs = read_unlabelled(unlabelled_images(tmp_path), "image")
    student, report = distill(image_teacher, "conv4:2", inputs,
                              DistillSettings(steps=10, batch_size=16))
    assert student.recipe.hidden == 2 and student.arch["batch_norm"] == "support"
    assert report["init"]["copied_from_teacher"] == 0  # narrower: nothing fits
    student.save(tmp_path / "s")
    loaded = AdaptedModel.load(tmp_path / "s")
    files = [str(p) for p in inputs[:4]]
    assert torch.allclose(loaded.predict_proba(files), student.predict_proba(files))
    one = loaded.predict_proba(files[:1])  # frozen statistics: alone as in a batch
    assert torch.allclose(one, loaded.predict_proba(files)[:1], atol=1e-6)


def test_encoder_student_brings_its_own_tokenizer(text_teacher, tmp_path) -> None:
    other = make_model_dir(tmp_path / "small-bert", layers=1, hidden=8)
    student, report = distill(text_teacher, str(other), unlabelled_texts(),
                              DistillSettings(steps=5, lr=1e-3))
    assert report["kind"] == "encoder" and student.arch["features"] == 8
    assert student.support is not None and text_teacher.support is not None
    assert student.support[0].shape[0] == text_teacher.support[0].shape[0]
    student.save(tmp_path / "s")
    loaded = AdaptedModel.load(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "encoder" / "config.json").read_text())[
        "hidden_size"] == 8
    assert (tmp_path / "s" / "encoder" / "tokenizer.json").is_file()
    texts = unlabelled_texts()[:3]
    assert torch.allclose(loaded.predict_proba(texts), student.predict_proba(texts))


def test_temperature_and_reject_threshold_are_refitted(text_teacher) -> None:
    info = {**text_teacher.info, "temperature": 2.0,
            "calibration": {"method": "temperature, cross-validated on the support set"}}
    teacher = text_teacher.derived(info=info, reject=RejectSetting(
        "max_logit", 0.0, 0.95, "unknown", {"how": "given"}))
    scores = teacher.reject_scores(unlabelled_texts())
    teacher = teacher.derived(reject=RejectSetting(  # rejects about a third
        "max_logit", float(scores.quantile(0.33)), 0.95, "unknown", {"how": "given"}))
    student, _ = distill(teacher, "layers:1", unlabelled_texts(90),
                         DistillSettings(steps=5, held_out=0.5))
    assert student.info["calibration"]["method"].startswith("temperature matched")
    assert student.temperature != 1.0
    fitted = student.reject.fitted
    assert fitted["how"].startswith("matched to the teacher's reject rate")
    assert 0.1 < fitted["teacher_reject_rate"] < 0.6
    assert abs(fitted["student_reject_rate"] - fitted["teacher_reject_rate"]) <= 1.5 / 45


def test_compress_cli_distills_and_reports(text_teacher, tmp_path, capsys) -> None:
    source = text_teacher.save(tmp_path / "teacher")
    table = write_csv(tmp_path / "unlabelled.csv", sentences(3, 10, seed=9))
    out = tmp_path / "student"
    assert main(["compress", str(source), "--distill", "layers:1", "--unlabelled", str(table),
                 "-o", str(out), "--distill-steps", "4", "--threads", "1", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["distill"]["trained_on"] + figures["distill"]["held_out"] == 30
    assert figures["compression"]["distill"]["steps"] == 4
    assert AdaptedModel.load(out).predict(["alpha0 please"])[0]["label"].startswith("intent_")
    assert main(["compress", str(source), "--distill", "layers:1", "--unlabelled", str(table),
                 "-o", str(tmp_path / "q"), "--distill-steps", "2", "--quantize", "int8"]) == 0
    text = capsys.readouterr().out
    assert "distilled into layers:1" in text and "int8" in text and "agrees with" in text


@pytest.mark.parametrize(("args", "message"), [
    (["--distill", "layers:2"], "has 2 layers; keep fewer"),
    (["--distill", "layers:0"], "layer count must be a positive integer"),
    (["--distill", "layers:1,0"], "distinct, increasing"),
    (["--distill", "conv4:8"], "is an image backbone, but the teacher is a text model"),
    (["--distill", "no/such/dir"], "no directory"),
    (["--distill", "layers:1"], "--distill needs --unlabelled"),
    (["--distill", "layers:1", "--unlabelled", "missing.csv"], "no such file or folder"),
    (["--distill", "layers:1", "--unlabelled", "few.csv"], "3 texts; distillation needs"),
    (["--distill", "layers:1", "--unlabelled", "few.csv", "--text-column", "body"], "body"),
    (["--distill", "layers:1", "--unlabelled", "many.csv", "--max-unlabelled", "10"],
     "more than the limit 10"),
    (["--distill", "layers:1", "--unlabelled", "many.csv", "--distill-temperature", "0"],
     "temperature must be > 0"),
    (["--unlabelled", "many.csv", "--quantize", "int8"], "--unlabelled is for --distill"),
    (["--distill", "layers:1", "--unlabelled", "many.csv", "--distill-steps", "0"],
     "--distill-steps must be >= 1"),
    (["--distill", "layers:1", "--unlabelled", "many.csv", "--text-column", "body"],
     "column(s) ['body'] not found"),  # named once, not as input and label
    (["--distill", "layers:1", "--unlabelled", "many.csv", "-o", "teacher"],
     "is the model directory"),  # the output would replace the teacher
    (["--quantize", "int8", "-o", "teacher/versions"], "is inside the model directory"),
])
def test_bad_distillation_inputs_are_clear_one_line_errors(text_teacher, tmp_path, capsys,
                                                          monkeypatch, args, message) -> None:
    source = text_teacher.save(tmp_path / "teacher")
    write_csv(tmp_path / "few.csv", sentences(1, 3))
    write_csv(tmp_path / "many.csv", sentences(3, 5))
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in source.iterdir())
    out = [] if "-o" in args else ["-o", str(tmp_path / "out")]
    assert main(["compress", str(source), *args, *out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metafit: error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in source.iterdir()) == before


def test_bad_image_inputs_and_specs(image_teacher, tmp_path) -> None:
    with pytest.raises(ValueError, match="an image student is a backbone"):
        parse_student("layers:1", image_teacher)
    with pytest.raises(ValueError, match="an image student is a backbone"):
        parse_student("vit", image_teacher)
    with pytest.raises(ValueError, match=r"width \(HIDDEN\) must be a positive integer, "
                                         r"at most 4096"):
        parse_student("conv4:100000", image_teacher)  # ~360 GB if it were built
    with pytest.raises(ValueError, match=r"depth \(DEPTH\) must be a positive integer, "
                                         r"at most 64"):
        parse_student("mlp:64:1000000", image_teacher)
    with pytest.raises(InputError, match="image inputs are a folder"):
        read_unlabelled(write_csv(tmp_path / "t.csv", sentences(2, 6)), "image")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="0 image files; distillation needs at least 10"):
        read_unlabelled(tmp_path / "empty", "image")
    bad = unlabelled_images(tmp_path / "empty", per_class=4)
    (bad / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="broken.png"):
        distill(image_teacher, "mlp", read_unlabelled(bad, "image"),
                DistillSettings(steps=1))
    with pytest.raises(ValueError, match="quantized"):
        from metafit.deploy.compress import quantize

        distill(quantize(image_teacher), "mlp", list(np.arange(10)))
