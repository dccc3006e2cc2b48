""""None of these" in the deployment path: the reject setting fitted on held-out support
folds, the unknown label in predict, model.json round trip and strict validation, the
CLI (adapt --reject, predict, evaluate with out-of-scope rows), the server and the ONNX
export's ``reject_score`` output."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from deploy_fixtures import image_run, support_folder
from metafit.cli.main import build_parser, main
from metafit.deploy import AdaptedModel, Adapter, ModelDirError, load_support
from metafit.deploy.calibrate import fit_on_support, fit_reject, held_out
from metafit.deploy.reject import (
    DEFAULT_RECALL,
    DEFAULT_REJECT_SCORE,
    DEFAULT_UNKNOWN_LABEL,
    RejectRequest,
    RejectSetting,
)
from metafit.evaluation.openset import REJECT_SCORES, score_open_set

#: An input far from every class of the tiny image runs: a white square.
FAR = np.full((8, 8), 255, np.uint8)


@pytest.fixture(scope="module")
def adapter() -> Adapter:
    return Adapter.from_run(image_run("protonet"))


@pytest.fixture(scope="module")
def support(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[str]]:
    return load_support(support_folder(tmp_path_factory.mktemp("s"), classes=3,
                                       per_class=4), "image")


@pytest.fixture(scope="module")
def model(adapter: Adapter, support: tuple[list[Any], list[str]]) -> AdaptedModel:
    return adapter.adapt(*support)


@pytest.mark.parametrize("score", REJECT_SCORES)
def test_the_threshold_keeps_the_target_recall_of_the_held_out_scores(
        adapter: Adapter, model: AdaptedModel, score: str) -> None:
    held = held_out(model, adapter.adapt_tensors, features=True)
    fitted = fit_reject(model, adapter.adapt_tensors, RejectRequest(score, recall=0.8),
                        held=held)
    setting = fitted.reject
    assert setting is not None and setting.threshold is not None
    scores = held.scores(score, model.temperature)  # [12]
    assert len(scores) == setting.fitted["held_out"] == 12
    kept = (scores >= setting.threshold).double().mean().item()
    assert kept >= 0.8 and kept == pytest.approx(setting.fitted["held_out_recall"])
    # the largest such threshold: any higher one keeps less than the target
    above = scores[scores > setting.threshold]
    if len(above):
        assert (scores >= above.min()).double().mean().item() < 0.8


def test_calibration_and_reject_share_one_pass_of_refits(adapter: Adapter,
                                                         model: AdaptedModel) -> None:
    calls = []

    def refit(*args: Any) -> AdaptedModel:
        calls.append(1)
        return adapter.adapt_tensors(*args)

    both = fit_on_support(model, refit, True, RejectRequest("energy"))
    folds = both.info["calibration"]["folds"]
    assert len(calls) == folds == both.reject.fitted["folds"]  # type: ignore[union-attr]
    # the energy threshold was fitted with the calibrated temperature
    assert both.reject.fitted["temperature"] == both.temperature != 1.0  # type: ignore[union-attr]
    calls.clear()
    given = fit_on_support(model, refit, reject=RejectRequest(threshold=0.5))
    assert calls == [] and given.reject == RejectSetting(DEFAULT_REJECT_SCORE, 0.5, None,
                                                         "unknown", {"how": "given"})


def test_a_far_input_gets_the_unknown_label_and_support_inputs_do_not(
        adapter: Adapter, model: AdaptedModel, support: tuple[list[Any], list[str]],
        tmp_path: Path) -> None:
    fitted = fit_on_support(model, adapter.adapt_tensors,
                            reject=RejectRequest("nearest", label="none of these"))
    far, first = fitted.predict([FAR, support[0][0]])
    assert far["label"] == "none of these" and far["rejected"] is True
    assert far["score"] < fitted.reject.threshold  # type: ignore[union-attr]
    assert set(far["probabilities"]) == set(model.label_names)  # classes only
    rows = fitted.predict(support[0])
    assert not any(r["rejected"] for r in rows)  # nearest: each is its own neighbour
    assert [r["label"] for r in rows] == [r["label"] for r in model.predict(support[0])]
    assert all(r["score"] == pytest.approx(1.0, abs=1e-5) for r in rows)
    # without a reject setting the output keeps its two fields
    assert set(model.predict([FAR])[0]) == {"label", "probabilities"}
    # the scores depend on the input only, and survive a round trip
    loaded = AdaptedModel.load(fitted.save(tmp_path / "m"))
    assert loaded.reject == fitted.reject
    torch.testing.assert_close(loaded.reject_scores([FAR, *support[0]]),
                               fitted.reject_scores([FAR, *support[0]]))
    torch.testing.assert_close(fitted.reject_scores([FAR]), fitted.reject_scores([FAR] * 3)[:1])


def test_one_example_per_class_fits_no_threshold_and_says_why(
        adapter: Adapter, support: tuple[list[Any], list[str]], caplog) -> None:
    one_shot = adapter.adapt(support[0][::4], support[1][::4])
    with caplog.at_level(logging.WARNING, logger="metafit.deploy.calibrate"):
        fitted = fit_on_support(one_shot, adapter.adapt_tensors, reject=RejectRequest())
    setting = fitted.reject
    assert setting is not None and setting.threshold is None
    assert setting.recall == DEFAULT_RECALL and setting.fitted["how"] == "none"
    assert "nothing to hold out" in setting.fitted["reason"]
    assert "no threshold was fitted" in caplog.text
    row = fitted.predict([FAR])[0]
    assert row["rejected"] is False and isinstance(row["score"], float)


def _rewrite(model_dir: Path, edit: Any) -> None:
    """Edit model.json and update its manifest entry (as a forger could)."""
    spec = json.loads((model_dir / "model.json").read_text())
    edit(spec)
    data = json.dumps(spec).encode()
    (model_dir / "model.json").write_bytes(data)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["files"]["model.json"] = {"bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest()}
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("score", "distance", "reject.score must be one of max_prob"),
    ("threshold", float("inf"), "reject.threshold must be a finite number"),
    ("threshold", "0.5", "reject.threshold must be a finite number"),
    ("recall", 1.5, r"reject.recall must be a number in \(0, 1\]"),
    ("label", "label_1", "reject.label 'label_1' is also a class name"),
    ("label", "", "reject.label must be a non-empty string"),
    ("fitted", [], "reject.fitted must be a JSON object"),
    ("extra", 1, r"reject must have exactly the fields .*unknown \['extra'\]"),
])
def test_a_stored_reject_setting_is_checked_field_by_field(
        adapter: Adapter, model: AdaptedModel, tmp_path: Path, field: str, value: Any,
        message: str) -> None:
    saved = fit_on_support(model, adapter.adapt_tensors,
                           reject=RejectRequest(threshold=0.5)).save(tmp_path / "m")
    _rewrite(saved, lambda spec: spec["reject"].__setitem__(field, value))
    with pytest.raises(ModelDirError, match=f"model.json: {message}"):
        AdaptedModel.load(saved)


def test_bad_requests_and_settings_are_refused(model: AdaptedModel) -> None:
    with pytest.raises(ValueError, match="score must be one of"):
        RejectRequest("distance")
    with pytest.raises(ValueError, match="not both"):
        RejectRequest(recall=0.9, threshold=0.1)
    with pytest.raises(ValueError, match="finite"):
        RejectRequest(threshold=float("nan"))
    with pytest.raises(ValueError, match="also a class name"):
        model.derived(reject=RejectSetting("max_prob", 0.5, None, "label_0"))
    with pytest.raises(ValueError, match="has none stored"):
        model.derived(support=None, reject=RejectSetting("prototype", 0.5, None, "unknown"))


def test_the_cli_help_names_the_library_defaults() -> None:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    text = sub.choices["adapt"].format_help()  # type: ignore[attr-defined]
    flat = " ".join(text.split())
    assert all(name in flat for name in REJECT_SCORES)
    assert f"default {DEFAULT_RECALL}" in flat and f"default '{DEFAULT_UNKNOWN_LABEL}'" in flat


def _test_folder(root: Path) -> Path:
    """The three support classes plus a fourth, out-of-scope class folder."""
    support_folder(root, classes=4, per_class=3)
    return root


def test_adapt_predict_and_evaluate_on_the_command_line(tmp_path: Path, capsys) -> None:
    support = support_folder(tmp_path / "s", classes=3, per_class=4)
    out = tmp_path / "m"
    assert main(["adapt", str(image_run("protonet")), "--support", str(support), "--out",
                 str(out), "--reject", "prototype", "--reject-recall", "0.9",
                 "--calibrate", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reject"]["score"] == "prototype" and summary["reject"]["recall"] == 0.9
    assert summary["reject"] == AdaptedModel.load(out).reject.to_dict()  # type: ignore[union-attr]
    far = tmp_path / "far.png"
    Image.fromarray(FAR).save(far)
    assert main(["predict", str(out), str(far), str(support / "label_0" / "0.png"),
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["label"] == "unknown" and rows[0]["rejected"] is True
    assert rows[1]["label"] == "label_0" and rows[1]["rejected"] is False
    assert main(["predict", str(out), str(far)]) == 0
    table = capsys.readouterr().out
    assert "[reject score]" in table and "unknown  [" in table
    test = _test_folder(tmp_path / "t")
    assert main(["evaluate", str(out), "--test", str(test), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    open_set = report["open_set"]
    assert report["examples"] == open_set["in_scope"] == 9 and open_set["out_of_scope"] == 3
    assert open_set["threshold"] == summary["reject"]["threshold"]
    assert 0.0 <= open_set["out_of_scope_recall_low"] <= open_set["out_of_scope_recall"] \
        <= open_set["out_of_scope_recall_high"] <= 1.0
    assert 0.0 <= open_set["auroc"] <= 1.0 and open_set["recall"] == 0.95
    assert main(["evaluate", str(out), "--test", str(test)]) == 0
    assert "none of these (prototype): out-of-scope recall" in capsys.readouterr().out
    # a run adapted in memory on --support, with --reject, scores the same rows
    assert main(["evaluate", str(image_run("protonet")), "--support", str(support),
                 "--test", str(test), "--reject", "prototype", "--reject-recall", "0.9",
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)["open_set"]
    assert again["out_of_scope"] == 3 and again["auroc"] == pytest.approx(open_set["auroc"])
    assert main(["evaluate", str(out), "--test", str(test), "--reject"]) == 2
    assert "already adapted" in capsys.readouterr().err


def test_the_cli_refuses_reject_options_it_cannot_honour(tmp_path: Path, capsys) -> None:
    support = support_folder(tmp_path / "s", classes=3, per_class=2)
    base = ["adapt", str(image_run("protonet")), "--support", str(support), "--out",
            str(tmp_path / "m")]
    assert main([*base, "--reject-recall", "0.9"]) == 2
    assert "--reject-recall need(s) --reject" in capsys.readouterr().err
    assert main([*base, "--reject", "--reject-label", "label_1"]) == 2
    assert "'label_1' is also a class name" in capsys.readouterr().err
    assert main([*base, "--reject", "cosine"]) == 2
    assert "score must be one of max_prob" in capsys.readouterr().err
    assert main(base) == 0  # no reject setting: out-of-scope test rows stay an error
    capsys.readouterr()
    test = _test_folder(tmp_path / "t")
    assert main(["evaluate", str(tmp_path / "m"), "--test", str(test)]) == 2
    assert "label(s) 'label_3' are not classes" in capsys.readouterr().err


def test_open_set_figures_count_rows_at_the_threshold() -> None:
    report = score_open_set("max_prob", torch.tensor([0.9, 0.8, 0.7, 0.2]),
                            torch.tensor([0.1, 0.75, 0.3]),
                            torch.tensor([True, False, True, True]), threshold=0.5)
    assert report.in_scope_recall == 0.75 and report.accepted_accuracy == 0.5
    assert report.out_of_scope_recall == pytest.approx(2 / 3)
    assert report.auroc == pytest.approx(9 / 12)  # in-scope above out-of-scope: 9 pairs
    # 95% of 4 in-scope rows keeps all four: threshold 0.2 accepts 0.75 and 0.3
    assert report.false_accepts == pytest.approx(2 / 3)
    assert report.false_accepts_low < 2 / 3 < report.false_accepts_high
    # the printed summary gives the accuracy of predict's answers (rejections wrong)
    assert "(a rejected one counts as wrong, as predict answers) 50.0%" in report.summary()
    none = score_open_set("energy", torch.tensor([1.0]), torch.tensor([0.0]),
                          torch.tensor([True]), threshold=None)
    assert none.out_of_scope_recall is None and "no threshold" in none.summary()


def test_the_onnx_export_outputs_the_reject_score(adapter: Adapter, model: AdaptedModel,
                                                  tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from metafit.deploy import onnx_export

    fitted = fit_on_support(model, adapter.adapt_tensors, reject=RejectRequest("prototype"))
    report = onnx_export.export_onnx(fitted, tmp_path / "onnx")
    assert report.max_score_diff is not None and report.max_score_diff <= 1e-4
    spec = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert spec["outputs"] == ["logits", "reject_score"]
    assert spec["reject"] == fitted.reject.to_dict()  # type: ignore[union-attr]
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    x = fitted.preprocess([FAR, FAR, FAR])  # a batch size never exported
    logits, scores = session.run(["logits", "reject_score"], {"images": x.numpy()})
    np.testing.assert_allclose(scores, fitted.reject_scores([FAR] * 3).numpy(), atol=1e-5)
    assert scores.shape == (3,) and logits.shape == (3, 3)
    int8 = onnx_export.export_onnx(fitted, tmp_path / "onnx8", quantize="int8")
    assert int8.quantized_max_score_diff is not None  # reported beside the logits'
    assert 0 <= int8.quantized_max_score_diff < float("inf")


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_the_server_adapts_with_a_reject_setting_and_answers_unknown(
        support: tuple[list[Any], list[str]], tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from test_serve import AUTH, LiveServer, server_settings

    examples = [{"image": base64.b64encode(Path(p).read_bytes()).decode(), "label": label}
                for p, label in zip(*support, strict=True)]
    server = LiveServer(server_settings(image_run("protonet"), tmp_path))
    try:
        post = server.client.post
        for bad, message in [({"score": "cosine"}, "literal_error"),
                             ({"recall": 0.9, "threshold": 0.1}, "not both"),
                             ({"threshold": "Infinity"}, "finite"),
                             ({"label": "label_0"}, "also a class name")]:
            r = post("/v1/adaptations", json={"examples": examples, "reject": bad},
                     headers=AUTH)
            assert r.status_code == 422 and message in r.text, r.text
        r = post("/v1/adaptations", json={"examples": examples,
                                          "reject": {"score": "nearest", "label": "other"}},
                 headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["reject"]["score"] == "nearest" and made["reject"]["label"] == "other"
        assert made["reject"]["fitted"]["held_out"] == 12
        r = post(f"/v1/adaptations/{made['id']}/predict",
                 json={"inputs": [{"image": _png(FAR)}, {"image": examples[0]["image"]}],
                       "labels": ["label_1", "label_2"]}, headers=AUTH)
        assert r.status_code == 200, r.text
        far, first = r.json()["predictions"]
        assert far["label"] == "other" and far["rejected"] is True
        assert far["score"] < made["reject"]["threshold"]
        assert first["rejected"] is False and first["label"] in ("label_1", "label_2")
        metrics = server.client.get("/metrics", headers=AUTH).text
        assert "metafit_predictions_unknown_total 1.0" in metrics  # the far input only
        r = post("/v1/adaptations", json={"examples": examples}, headers=AUTH)
        plain = r.json()
        assert plain["reject"] is None
        r = post(f"/v1/adaptations/{plain['id']}/predict",
                 json={"inputs": [{"image": _png(FAR)}]}, headers=AUTH)
        assert r.json()["predictions"][0]["score"] is None
        files = [("file", ("a.png", base64.b64decode(e["image"]), "image/png"))
                 for e in examples]
        form = {"label": [e["label"] for e in examples]}
        r = post("/v1/adaptations", files=files,
                 data={**form, "reject": '{"threshold": 0.5}'}, headers=AUTH)
        assert r.status_code == 201 and r.json()["reject"]["threshold"] == 0.5, r.text
        r = post("/v1/adaptations", files=files, data={**form, "reject": '{"score": 3}'},
                 headers=AUTH)
        assert r.status_code == 422 and "reject" in r.text
    finally:
        server.stop()


def test_the_mlflow_pyfunc_returns_the_unknown_label(adapter: Adapter, model: AdaptedModel,
                                                     tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    from metafit.deploy.mlflow_pyfunc import AdaptedPyfunc

    fitted = fit_on_support(model, adapter.adapt_tensors, reject=RejectRequest("nearest"))
    far = tmp_path / "far.png"
    Image.fromarray(FAR).save(far)
    wrapper = AdaptedPyfunc()
    wrapper.model = fitted
    frame = wrapper.predict(None, [str(far)])
    assert list(frame.columns) == ["label", "reject_score", "rejected", *model.label_names]
    assert frame.loc[0, "label"] == "unknown" and bool(frame.loc[0, "rejected"])
    wrapper.model = model  # no reject setting: the columns of before
    assert list(wrapper.predict(None, [str(far)]).columns) == ["label", *model.label_names]


def test_a_text_models_reject_score_exports_with_parity(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from deploy_fixtures import text_recipe
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.deploy import onnx_export
    from text_fixtures import sentences

    recipe = text_recipe("protonet", distance="cosine", distance_scale=20.0)
    rows = sentences(3, 2, seed=5)
    adapter = Adapter(recipe, build_algorithm(recipe))
    model = adapter.adapt([t for t, _ in rows], [lab for _, lab in rows])
    fitted = fit_on_support(model, adapter.adapt_tensors, reject=RejectRequest("nearest"))
    assert fitted.reject is not None and fitted.reject.fitted["held_out"] == 6
    report = onnx_export.export_onnx(fitted, tmp_path / "onnx")
    assert report.max_score_diff is not None and report.max_score_diff <= 1e-4
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    texts = ["please help with my card alpha2 gamma2", "why delta0"]  # other lengths
    feeds = onnx_export.onnx_feeds("text", fitted.preprocess(texts), pad_id=0)
    scores = session.run(["reject_score"], feeds)[0]
    np.testing.assert_allclose(scores, fitted.reject_scores(texts).numpy(), atol=1e-5)
