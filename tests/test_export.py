"""ONNX export: parity with PyTorch in onnxruntime (images; text with dynamic batch and
sequence axes), a failed parity check or a quantized model leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deploy_fixtures import image_run, pattern, support_folder, text_recipe, text_run
from metafit.algorithms.from_recipe import build_algorithm
from metafit.cli.main import main
from metafit.deploy import (
    AdaptedModel,
    Adapter,
    ExportError,
    ModelDirError,
    load_support,
    onnx_export,
)
from metafit.deploy.compress import prune, quantize
from metafit.deploy.modeldir import read_model_dir
from text_fixtures import sentences

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> AdaptedModel:
    inputs, labels = load_support(support_folder(tmp_path_factory.mktemp("s")), "image")
    return Adapter.from_run(image_run("maml")).adapt(inputs[:4], labels[:4])  # 2-way head


def test_image_export_matches_pytorch_in_onnxruntime(image_model, tmp_path, capsys) -> None:
    source = image_model.save(tmp_path / "model")
    out = tmp_path / "onnx"
    assert main(["export", str(source), "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_abs_diff"] <= 1e-4 and report["batches"] == [[4, 1, 8, 8], [1, 1, 8, 8]]
    manifest, _ = read_model_dir(out, "onnx")
    assert {"model.onnx", "model.json", "export.json"} <= set(manifest["files"])
    session = onnx_export.onnx_session(out / "model.onnx")
    queries = [pattern(c, 7) for c in range(2)] * 3  # a batch size never exported
    x = image_model.preprocess(queries)
    logits = session.run(["logits"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(logits, image_model.logits(x).numpy(), rtol=0, atol=1e-4)
    spec = json.loads((out / "model.json").read_text())
    assert spec["labels"] == image_model.label_names and spec["inputs"] == ["images"]
    assert spec["temperature"] == 1.0 and "/ temperature" in spec["probabilities"]


def test_text_export_has_dynamic_batch_and_sequence_axes(tmp_path: Path) -> None:
    rows = sentences(3, 2, seed=4)
    model = Adapter.from_run(text_run()).adapt([t for t, _ in rows], [lab for _, lab in rows])
    report = onnx_export.export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= 1e-4
    assert report.batches[0][0] == 6 and report.batches[1][0] == 1
    assert report.batches[0][1] != report.batches[1][1]  # another sequence length
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    texts = ["please help with my card alpha2 gamma2", "why delta0"]
    ids = model.preprocess(texts)
    feeds = onnx_export.onnx_feeds("text", ids, pad_id=0)
    got = torch.from_numpy(session.run(["logits"], feeds)[0]).softmax(-1)
    torch.testing.assert_close(got, model.predict_proba(texts), rtol=0, atol=1e-5)
    assert (tmp_path / "onnx" / "encoder" / "tokenizer.json").is_file()


def test_cosine_protonet_text_model_exports_with_parity(tmp_path: Path) -> None:
    recipe = text_recipe("protonet", distance="cosine", distance_scale=20.0)
    rows = sentences(3, 2, seed=5)
    model = Adapter(recipe, build_algorithm(recipe)).adapt([t for t, _ in rows],
                                                           [lab for _, lab in rows])
    report = onnx_export.export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= 1e-4
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    texts = ["please help with my card alpha2 gamma2", "why delta0"]
    feeds = onnx_export.onnx_feeds("text", model.preprocess(texts), pad_id=0)
    logits = torch.from_numpy(session.run(["logits"], feeds)[0])
    assert float(logits.abs().max()) <= 20.0 + 1e-4  # scaled cosines, not distances
    torch.testing.assert_close(logits.softmax(-1), model.predict_proba(texts), rtol=0,
                               atol=1e-5)


def test_text_model_with_a_logistic_head_exports_with_parity(tmp_path: Path) -> None:
    recipe = text_recipe("protonet", distance="cosine", distance_scale=20.0,
                         classifier="logistic")
    rows = sentences(3, 2, seed=6)
    model = Adapter(recipe, build_algorithm(recipe)).adapt([t for t, _ in rows],
                                                           [lab for _, lab in rows])
    assert model.arch["head"] == "logistic"
    report = onnx_export.export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= 1e-4
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    texts = ["please help with my card alpha2 gamma2", "why delta0", "x"]
    feeds = onnx_export.onnx_feeds("text", model.preprocess(texts), pad_id=0)
    logits = torch.from_numpy(session.run(["logits"], feeds)[0])  # the normalisation too
    torch.testing.assert_close(logits.softmax(-1), model.predict_proba(texts), rtol=0,
                               atol=1e-5)


def test_a_failed_parity_check_writes_nothing(image_model, tmp_path, monkeypatch) -> None:
    real = onnx_export.onnx_session

    class Drifting:  # an ONNX runtime whose logits drift by 1e-3
        def __init__(self, path: Any) -> None:
            self.session = real(path)

        def run(self, names: Any, feeds: Any) -> list[np.ndarray]:
            return [out + 1e-3 for out in self.session.run(names, feeds)]

    monkeypatch.setattr(onnx_export, "onnx_session", Drifting)
    with pytest.raises(ExportError, match=r"parity check failed: logits differ .* by up to "
                       r"0\.001 > 0\.0001"):
        onnx_export.export_onnx(image_model, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists() and list(tmp_path.iterdir()) == []


def test_quantized_models_are_refused_and_pruned_ones_export(image_model, tmp_path) -> None:
    with pytest.raises(ExportError, match="int8-quantized PyTorch models cannot be exported"):
        onnx_export.export_onnx(quantize(image_model), tmp_path / "q")
    assert not (tmp_path / "q").exists()
    report = onnx_export.export_onnx(prune(image_model, 0.5), tmp_path / "p")
    assert report.max_abs_diff <= 1e-4
    with pytest.raises(ModelDirError, match="holds a 'onnx' model, not 'adapted'"):
        AdaptedModel.load(tmp_path / "p")


def test_onnxruntime_int8_export_is_smaller_and_reported(tmp_path: Path, capsys) -> None:
    rows = sentences(3, 2, seed=6)
    model = Adapter.from_run(text_run()).adapt([t for t, _ in rows], [lab for _, lab in rows])
    model.save(tmp_path / "m")
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "float")]) == 0
    assert main(["export", str(tmp_path / "m"), "--quantize", "int8", "--out",
                 str(tmp_path / "int8"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["quantized"] == "int8" and report["max_abs_diff"] <= 1e-4
    assert 0 < report["quantized_max_abs_diff"] < 1.0
    sizes = [(tmp_path / d / "model.onnx").stat().st_size for d in ("float", "int8")]
    assert sizes[1] < sizes[0]
    spec = json.loads((tmp_path / "int8" / "model.json").read_text())
    assert spec["onnx_quantization"] == "int8"
    # an --out naming the model itself would replace it with its export: refused
    assert main(["export", str(tmp_path / "m"), "--out", str(tmp_path / "m")]) == 2
    assert "is the model directory" in capsys.readouterr().err
    assert AdaptedModel.load(tmp_path / "m").label_names == model.label_names


def test_trimmed_vocabulary_exports_with_its_token_map(tmp_path: Path) -> None:
    from metafit.deploy.vocabulary import trim_vocabulary

    rows = sentences(3, 2, seed=4)
    model = Adapter.from_run(text_run()).adapt([t for t, _ in rows], [lab for _, lab in rows])
    trimmed, report = trim_vocabulary(model, [t for t, _ in sentences(3, 6, seed=8)])
    assert report["kept"] < report["tokenizer"]
    assert onnx_export.export_onnx(trimmed, tmp_path / "onnx").max_abs_diff <= 1e-4
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    texts = ["please help with my card alpha2 gamma2", "why delta7 alpha9"]  # unseen words
    feeds = onnx_export.onnx_feeds("text", trimmed.preprocess(texts), pad_id=0)
    got = torch.from_numpy(session.run(["logits"], feeds)[0]).softmax(-1)
    torch.testing.assert_close(got, trimmed.predict_proba(texts), rtol=0, atol=1e-5)
    assert not torch.allclose(trimmed.predict_proba(texts[1:]), model.predict_proba(texts[1:]))
