"""`metafit serve`: a real uvicorn server on a loopback port, driven over HTTP with httpx.

Adapt then predict, the same id after a restart, 401 without a key, 422 on malformed
bodies, 413 on oversized ones, 404 on unknown ids, 503 when the adaptation queue is full,
metrics, the OpenAPI schema, and the CLI in a subprocess (URL logged, key never logged,
graceful stop on SIGTERM).
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
import uvicorn  # noqa: E402

from metafit.cli.main import main  # noqa: E402
from metafit.deploy import AdaptedModel  # noqa: E402
from metafit.server import ServerSettings, create_app, is_loopback, load_api_keys  # noqa: E402
from metafit.server.pool import AdaptationPool, PoolFull  # noqa: E402
from metafit.server.runner import bind  # noqa: E402
from metafit.training.trainer import Trainer  # noqa: E402
from test_trainer import classification_recipe, image_folder  # noqa: E402

KEY = "test-key-5f1c0e9a7b"
AUTH = {"Authorization": f"Bearer {KEY}"}


class LiveServer:
    """``create_app(settings)`` under uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, settings: ServerSettings) -> None:
        self.app = create_app(settings)
        self.sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(20)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("serve") / "data")


def trained(data: Path, algorithm: str) -> Path:
    out = data.parent / algorithm
    Trainer(classification_recipe(data, algorithm, iterations=2, val_every=2), out,
            progress=False).fit()
    return out


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    """A 2-way MAML run (a fixed head: adapts to exactly 2 classes)."""
    return trained(data, "maml")


@pytest.fixture(scope="module")
def protonet_run(data: Path) -> Path:
    """A head-free run: it adapts to any number of classes."""
    return trained(data, "protonet")


def server_settings(run: Path, tmp_path: Path) -> ServerSettings:
    """Settings of the test servers: one key, small limits."""
    return ServerSettings(target=run, state_dir=tmp_path / "state", api_keys=frozenset({KEY}),
                          max_body_bytes=200_000, max_examples=20, max_inputs=8, max_steps=5)


@pytest.fixture
def settings(run: Path, tmp_path: Path) -> ServerSettings:
    return server_settings(run, tmp_path)


@pytest.fixture
def live(settings: ServerSettings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    yield server
    server.stop()


def png(data: Path, cls: int, i: int) -> str:
    return base64.b64encode((data / f"class{cls:02d}" / f"{i}.png").read_bytes()).decode()


def support(data: Path, classes: tuple[int, ...] = (0, 5), shots: int = 2) -> dict[str, Any]:
    return {"examples": [{"image": png(data, c, i), "label": f"c{c}"}
                         for c in classes for i in range(shots)]}


def queries(data: Path) -> dict[str, Any]:
    return {"inputs": [{"image": png(data, c, 4)} for c in (0, 5)]}


def test_adapt_predict_and_restart(settings: ServerSettings, data: Path) -> None:
    server = LiveServer(settings)
    try:
        r = server.client.post("/v1/adaptations", json={**support(data), "steps": 2},
                               headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        assert re.fullmatch(r"[0-9a-f]{32}", made["id"])
        assert made["kind"] == "image" and sorted(made["labels"]) == ["c0", "c5"]
        assert made["examples"] == 4 and made["steps"] == 2 and made["algorithm"] == "maml"
        assert r.headers["location"] == f"/v1/adaptations/{made['id']}"
        assert (settings.adaptations_dir / made["id"]).is_dir()
        r = server.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                               headers=AUTH)
        assert r.status_code == 200, r.text
        before = r.json()["predictions"]
        assert len(before) == 2
        for p in before:
            assert p["label"] in ("c0", "c5") and set(p["probabilities"]) == {"c0", "c5"}
            assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    finally:
        server.stop()
    server = LiveServer(settings)  # a new process state: the id must come from disk
    try:
        assert server.app.state.service.store._cache == {}
        r = server.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                               headers={"X-API-Key": KEY})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"] == before
        r = server.client.get(f"/v1/adaptations/{made['id']}", headers=AUTH)
        assert r.status_code == 200
        assert r.json() == {**made, "seconds": None}
        assert server.client.delete(f"/v1/adaptations/{made['id']}", headers=AUTH) \
            .status_code == 204
        assert not (settings.adaptations_dir / made["id"]).exists()
        r = server.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                               headers=AUTH)
        assert r.status_code == 404
    finally:
        server.stop()


def test_candidate_labels_restrict_the_prediction(settings: ServerSettings, data: Path,
                                                  protonet_run: Path) -> None:
    server = LiveServer(replace(settings, target=protonet_run))
    try:
        made = server.client.post("/v1/adaptations", json=support(data, (0, 5, 7)),
                                  headers=AUTH).json()
        assert made["labels"] == ["c0", "c5", "c7"]
        path = f"/v1/adaptations/{made['id']}/predict"
        full = server.client.post(path, json=queries(data), headers=AUTH).json()
        r = server.client.post(path, json={**queries(data), "labels": ["c5", "c7"]},
                               headers=AUTH)
        assert r.status_code == 200, r.text
        for p, f in zip(r.json()["predictions"], full["predictions"], strict=True):
            probs, whole = p["probabilities"], f["probabilities"]
            assert set(probs) == {"c5", "c7"}
            assert p["label"] == ("c5" if whole["c5"] >= whole["c7"] else "c7")
            assert probs["c5"] == pytest.approx(whole["c5"] / (whole["c5"] + whole["c7"]))
    finally:
        server.stop()


def test_a_served_run_adapts_with_the_chosen_classifier(settings: ServerSettings, data: Path,
                                                       protonet_run: Path) -> None:
    server = LiveServer(replace(settings, target=protonet_run, classifier="logistic",
                                classifier_penalty=0.5))
    try:
        r = server.client.post("/v1/adaptations", json=support(data, (0, 5, 7)), headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        model = AdaptedModel.load(settings.adaptations_dir / made["id"])
        assert model.arch["head"] == "logistic"
        assert model.info["source"]["classifier"] == "logistic"
        assert model.info["source"]["classifier_penalty"] == 0.5
        r = server.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                               headers=AUTH)
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"]) == 2
    finally:
        server.stop()


def test_calibrate_stores_and_applies_a_temperature(settings: ServerSettings, data: Path,
                                                   protonet_run: Path) -> None:
    server = LiveServer(replace(settings, target=protonet_run))
    try:
        body = support(data, (0, 5, 7), shots=3)
        plain = server.client.post("/v1/adaptations", json=body, headers=AUTH).json()
        assert plain["temperature"] == 1.0  # the default: not calibrated
        assert "calibration" not in AdaptedModel.load(
            settings.adaptations_dir / plain["id"]).info
        r = server.client.post("/v1/adaptations", json={**body, "calibrate": True},
                               headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        t = made["temperature"]
        assert t != pytest.approx(1.0) and made["labels"] == plain["labels"]
        model = AdaptedModel.load(settings.adaptations_dir / made["id"])
        assert model.temperature == t
        assert model.info["calibration"]["folds"] == 3  # 3 shots: 3 folds
        assert server.client.get(f"/v1/adaptations/{made['id']}", headers=AUTH) \
            .json()["temperature"] == t
        inputs = [base64.b64decode(x["image"]) for x in queries(data)["inputs"]]
        expected = torch.softmax(model.logits(model.preprocess(inputs)) / t, dim=-1)
        results = {}
        for which in (plain, made):
            r = server.client.post(f"/v1/adaptations/{which['id']}/predict",
                                   json=queries(data), headers=AUTH)
            assert r.status_code == 200, r.text
            results[which["id"]] = r.json()["predictions"]
        for p, q, row in zip(results[made["id"]], results[plain["id"]], expected.tolist(),
                             strict=True):
            assert [p["probabilities"][n] for n in made["labels"]] == pytest.approx(
                row, abs=1e-6)
            assert p["label"] == q["label"]  # a temperature never changes the label
            assert p["probabilities"] != pytest.approx(q["probabilities"], abs=1e-4)
        # with a reject setting too: one pass of folds serves both, the same T
        r = server.client.post("/v1/adaptations", json={
            **body, "calibrate": True, "reject": {"score": "max_prob"}}, headers=AUTH)
        assert r.status_code == 201, r.text
        both = r.json()
        assert both["temperature"] == pytest.approx(t, rel=1e-9)
        assert both["reject"]["score"] == "max_prob" and both["reject"]["threshold"] is not None
        assert both["reject"]["fitted"]["held_out"] == 9
        # one example per class: nothing to hold out, T stays 1 and the reason is kept
        r = server.client.post("/v1/adaptations", json={**support(data, (0, 5), 1),
                                                        "calibrate": True}, headers=AUTH)
        assert r.status_code == 201 and r.json()["temperature"] == 1.0, r.text
        one = AdaptedModel.load(settings.adaptations_dir / r.json()["id"])
        assert one.info["calibration"]["method"] == "none"
    finally:
        server.stop()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"X-API-Key": KEY + "x"}, {"Authorization": KEY}])
def test_requests_without_a_valid_key_get_401(live: LiveServer, data: Path,
                                              headers: dict[str, str]) -> None:
    for method, path, body in [("POST", "/v1/adaptations", support(data)),
                               ("POST", "/v1/predict", queries(data)),
                               ("GET", "/metrics", None),
                               ("POST", "/v1/adaptations/0123/predict", {"inputs": "junk"})]:
        r = live.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert "API key" in r.json()["detail"] and KEY not in r.text
        assert r.headers["www-authenticate"] == "Bearer"
    assert live.client.get("/healthz").json()["status"] == "ok"  # open
    assert live.client.get("/openapi.json").status_code == 200  # open
    assert list(live.app.state.service.store.root.glob("*")) == []


def _bodies(data: Path) -> list[tuple[str, Any, str]]:
    """(path, JSON body, a word the 422 message must contain)."""
    one = support(data)["examples"][0]
    return [
        ("/v1/adaptations", {"examples": []}, "at least 1"),
        ("/v1/adaptations", {}, "missing"),
        ("/v1/adaptations", {"examples": "c0"}, "list"),
        ("/v1/adaptations", {"examples": [{**one, "label": 3}]}, "string"),
        ("/v1/adaptations", {"examples": [{**one, "label": " "}]}, "at least 1"),
        ("/v1/adaptations", {"examples": [{**one, "lable": "c0"}]}, "extra"),
        ("/v1/adaptations", {**support(data), "steps": "many"}, "integer"),
        ("/v1/adaptations", {**support(data), "steps": 6}, "at most 5"),
        ("/v1/adaptations", {**support(data), "calibrate": "true"}, "valid boolean"),
        ("/v1/adaptations", {**support(data), "calibrate": 1}, "valid boolean"),
        ("/v1/adaptations", {**support(data), "calibrate": None}, "valid boolean"),
        ("/v1/adaptations", support(data, (0,), 3), "single class"),
        ("/v1/adaptations", support(data, (0, 1, 2), 1), "2-way head"),
        ("/v1/adaptations", support(data, (0, 1, 2, 3, 4, 5, 6), 3), "at most 20"),
        ("/v1/adaptations", {"examples": [{"text": "hi", "label": "a"},
                                          {"text": "yo", "label": "b"}]}, "images"),
        ("/v1/adaptations", {"examples": [{"image": "%%%", "label": "a"},
                                          {**one, "label": "b"}]}, "base64"),
        ("/v1/adaptations", {"examples": [{"image": base64.b64encode(b"no png").decode(),
                                           "label": "a"}, {**one, "label": "b"}]},
         "support set"),
        ("/v1/adaptations/{id}/predict", {"inputs": []}, "at least 1"),
        ("/v1/adaptations/{id}/predict", {"inputs": ["some text"]}, "images"),
        ("/v1/adaptations/{id}/predict", {"inputs": [
            {"image": base64.b64encode(b"no png").decode()}]}, "cannot decode the image"),
        ("/v1/adaptations/{id}/predict", {**queries(data), "labels": ["c0", "dog"]},
         "unknown labels ['dog']"),
        ("/v1/adaptations/{id}/predict", {"inputs": [{"image": png(data, 0, 0)}] * 9},
         "at most 8"),
    ]


def test_malformed_bodies_get_422(live: LiveServer, data: Path) -> None:
    made = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    for path, body, word in _bodies(data):
        r = live.client.post(path.format(id=made["id"]), json=body, headers=AUTH)
        assert r.status_code == 422, (body, r.text)
        assert word in str(r.json()["detail"]), (word, r.text)
        assert png(data, 0, 0) not in r.text  # inputs are not echoed back
    r = live.client.post("/v1/adaptations", content=b"{not json",
                         headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = live.client.post("/v1/adaptations", content=b'{"examples": []}', headers=AUTH)
    assert r.status_code == 415 and "application/json" in r.json()["detail"]
    assert len(list(live.app.state.service.store.root.iterdir())) == 1  # only the good one


def test_oversized_bodies_get_413_before_parsing(live: LiveServer, data: Path) -> None:
    big = {"examples": [{"image": "A" * 250_000, "label": "c0"}]}
    r = live.client.post("/v1/adaptations", json=big, headers=AUTH)
    assert r.status_code == 413 and "200000 bytes" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while streaming
        yield b'{"examples": [{"image": "'
        for _ in range(30):
            yield b"A" * 10_000
        yield b'", "label": "c0"}]}'

    r = live.client.post("/v1/adaptations", content=chunks(),
                         headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413
    r = live.client.post("/v1/adaptations", json=support(data), headers=AUTH)
    assert r.status_code == 201  # the server is fine afterwards


def test_unknown_ids_get_404_and_a_corrupt_one_500(live: LiveServer, data: Path) -> None:
    for bad in ("0" * 32, "..%2F..%2Fetc", "ABCDEF" + "0" * 26):
        r = live.client.post(f"/v1/adaptations/{bad}/predict", json=queries(data),
                             headers=AUTH)
        assert r.status_code == 404, (bad, r.text)
    broken = live.app.state.service.store.root / ("1" * 32)
    broken.mkdir(parents=True)
    (broken / "manifest.json").write_text("{not json")
    r = live.client.post(f"/v1/adaptations/{'1' * 32}/predict", json=queries(data),
                         headers=AUTH)
    assert r.status_code == 500 and "cannot be loaded" in r.json()["detail"]
    assert str(broken) not in r.text  # no server paths in responses


def test_keep_alive_requests_are_not_delayed(live: LiveServer) -> None:
    """TCP_NODELAY on accepted connections: without it each response on a reused
    connection waited ~40 ms (Nagle's algorithm + the client's delayed ACK)."""
    times = []
    for _ in range(15):
        start = time.perf_counter()
        assert live.client.get("/healthz").status_code == 200
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 0.02, times


def test_concurrent_adaptations_keep_their_own_labels(settings: ServerSettings,
                                                      data: Path) -> None:
    server = LiveServer(replace(settings, workers=2, queue=4))
    try:
        def adapt(i: int) -> httpx.Response:
            body = support(data)
            for e in body["examples"]:
                e["label"] = f"{e['label']}-{i}"
            return httpx.post(f"{server.url}/v1/adaptations", json=body, headers=AUTH,
                              timeout=60)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(adapt, range(6)))
        assert [r.status_code for r in answers] == [201] * 6
        for i, r in enumerate(answers):
            assert r.json()["labels"] == [f"c0-{i}", f"c5-{i}"]
            p = server.client.post(f"/v1/adaptations/{r.json()['id']}/predict",
                                   json=queries(data), headers=AUTH).json()
            assert p["predictions"][0]["label"] in (f"c0-{i}", f"c5-{i}")
        assert len({r.json()["id"] for r in answers}) == 6
    finally:
        server.stop()


def test_a_run_without_a_model_refuses_v1_predict(live: LiveServer, data: Path) -> None:
    r = live.client.post("/v1/predict", json=queries(data), headers=AUTH)
    assert r.status_code == 409 and "/v1/adaptations" in r.json()["detail"]


def test_serving_an_adapted_model(live: LiveServer, data: Path, tmp_path: Path,
                                  settings: ServerSettings) -> None:
    made = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    expected = live.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                                headers=AUTH).json()
    model = LiveServer(replace(settings, target=settings.adaptations_dir / made["id"],
                               state_dir=tmp_path / "unused"))
    try:
        assert model.client.get("/healthz").json()["mode"] == "model"
        r = model.client.post("/v1/predict", json=queries(data), headers=AUTH)
        assert r.status_code == 200 and r.json() == expected
        r = model.client.post("/v1/adaptations", json=support(data), headers=AUTH)
        assert r.status_code == 409 and "run directory" in r.json()["detail"]
    finally:
        model.stop()
    both = LiveServer(replace(settings, model_dir=settings.adaptations_dir / made["id"],
                              state_dir=tmp_path / "both"))  # a run with --model
    try:
        assert both.client.get("/healthz").json()["mode"] == "run"
        r = both.client.post("/v1/predict", json=queries(data), headers=AUTH)
        assert r.status_code == 200 and r.json() == expected
        assert both.client.post("/v1/adaptations", json=support(data),
                                headers=AUTH).status_code == 201
    finally:
        both.stop()


def test_a_full_adaptation_queue_gets_503(settings: ServerSettings, data: Path) -> None:
    server = LiveServer(replace(settings, workers=1, queue=0))
    service = server.app.state.service
    release = threading.Event()
    adapt = service.adapter.adapt

    def slow(*args: Any, **kwargs: Any) -> Any:
        release.wait(20)
        return adapt(*args, **kwargs)

    service.adapter.adapt = slow
    try:
        first: dict[str, Any] = {}
        t = threading.Thread(target=lambda: first.update(r=httpx.post(
            f"{server.url}/v1/adaptations", json=support(data), headers=AUTH, timeout=30)))
        t.start()
        while service.pool.pending == 0:
            time.sleep(0.01)
        r = server.client.post("/v1/adaptations", json=support(data), headers=AUTH)
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "busy" in r.json()["detail"]
        ok = server.client.get("/healthz")  # the event loop is not blocked
        assert ok.status_code == 200
        release.set()
        t.join(30)
        assert first["r"].status_code == 201
        text = server.client.get("/metrics", headers=AUTH).text
        assert 'metafit_adaptations_total{outcome="rejected"} 1.0' in text
        assert 'metafit_adaptations_total{outcome="ok"} 1.0' in text
    finally:
        release.set()
        server.stop()


def test_metrics_count_requests_by_route_and_status(live: LiveServer, data: Path) -> None:
    made = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    for _ in range(3):
        live.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                         headers=AUTH)
    live.client.post("/v1/predict", json=queries(data))  # 401
    r = live.client.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    route = "/v1/adaptations/{adaptation_id}/predict"
    assert f'metafit_http_requests_total{{method="POST",route="{route}",status="200"}} 3.0' \
        in text
    assert 'metafit_http_requests_total{method="POST",route="/v1/predict",status="401"} 1.0' \
        in text
    assert f'metafit_http_request_duration_seconds_count{{method="POST",route="{route}"}} 3.0' \
        in text
    assert 'metafit_adaptations_total{outcome="ok"} 1.0' in text
    assert "metafit_adaptations_in_flight 0.0" in text
    assert "metafit_predictions_total 6.0" in text
    assert made["id"] not in text  # ids are not labels: the series stay bounded


def test_openapi_schema_documents_bodies_and_keys(live: LiveServer) -> None:
    schema = live.client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/v1/adaptations", "/v1/adaptations/{adaptation_id}/predict", "/v1/predict",
            "/healthz", "/metrics"} <= set(paths)
    body = paths["/v1/adaptations"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"]["$ref"].endswith("/AdaptationRequest")
    assert {"TextExample", "ImageExample", "PredictResponse"} <= set(
        schema["components"]["schemas"])
    assert set(schema["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert "security" in paths["/v1/predict"]["post"]
    assert "security" not in paths["/healthz"]["get"]


def test_settings_are_checked(run: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        ServerSettings(target=run, workers=0)
    with pytest.raises(ValueError, match="checkpoint"):
        ServerSettings(target=run, checkpoint="first")
    with pytest.raises(ValueError, match="classifier must be one of logistic, not 'svm'"):
        ServerSettings(target=run, classifier="svm")
    with pytest.raises(ValueError, match="classifier_penalty must be a number >= 0, not -1"):
        ServerSettings(target=run, classifier="logistic", classifier_penalty=-1)
    assert ServerSettings(target=run).adaptations_dir == run / "adaptations"
    assert KEY not in repr(ServerSettings(target=run, api_keys=frozenset({KEY})))


def test_api_keys_from_file_and_environment(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# ops keys\nalpha\n\n  beta  \n")
    f.chmod(0o600)  # a key file open to others is refused (test_serve_security.py)
    assert load_api_keys(f, env="gamma, ,delta") == {"alpha", "beta", "gamma", "delta"}
    assert load_api_keys(None, env="") == frozenset()
    f.write_text("# none\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_api_keys(f, env="")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")


def test_no_keys_on_a_public_address_is_refused(run: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("METAFIT_API_KEYS", raising=False)
    assert main(["serve", str(run), "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "--insecure-no-auth" in capsys.readouterr().err
    assert main(["serve", str(run.parent / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    taken = bind("127.0.0.1", 0)
    try:
        port = str(taken.getsockname()[1])
        assert main(["serve", str(run), "--port", port, "--state-dir", str(run / "s")]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        taken.close()


def test_cli_serves_logs_the_url_never_the_key(run: Path, data: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "METAFIT_API_KEYS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metafit.cli", "-v", "serve", str(run), "--port", "0",
         "--api-key-file", str(keys), "--state-dir", str(tmp_path / "state"), "--threads", "1"],
        stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
            url = found and found.group(1)
        assert url, "".join(lines)
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(100):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            r = client.post("/v1/adaptations", json=support(data), headers=AUTH)
            assert r.status_code == 201, r.text
            assert client.post("/v1/predict", json=queries(data),
                               headers={"X-API-Key": "wrong"}).status_code == 401
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "POST /v1/adaptations" in log and "1 API key(s)" in log and "server stopped" in log
    assert KEY not in log and "wrong" not in log


def test_a_text_run_adapts_to_sentences(tmp_path: Path, settings: ServerSettings) -> None:
    pytest.importorskip("transformers")
    from test_text import text_args
    from text_fixtures import sentences

    run = tmp_path / "text"
    args = text_args(tmp_path, "protonet", "adapt=top", "adapt_layers=1")
    assert main(["train", "_banking77", *args, "--out", str(run), "--no-progress"]) == 0
    server = LiveServer(replace(settings, target=run, state_dir=tmp_path / "state"))
    try:
        assert server.client.get("/healthz").json()["kind"] == "text"
        rows = sentences(3, 4, seed=5)
        body = {"examples": [{"text": t, "label": y} for t, y in rows[0::4] + rows[1::4]]}
        r = server.client.post("/v1/adaptations", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        assert made["kind"] == "text" and made["labels"] == ["intent_0", "intent_1",
                                                             "intent_2"]
        path = f"/v1/adaptations/{made['id']}/predict"
        r = server.client.post(path, json={"inputs": [t for t, _ in rows[2::4]]},
                               headers=AUTH)
        assert r.status_code == 200, r.text
        assert [set(p["probabilities"]) for p in r.json()["predictions"]] == \
            [set(made["labels"])] * 3
        for bad, word in [({"inputs": [""]}, "at least 1"), ({"inputs": [3]}, "string"),
                          ({"inputs": [{"image": "aGk="}]}, "text")]:
            r = server.client.post(path, json=bad, headers=AUTH)
            assert r.status_code == 422 and word in str(r.json()["detail"]), r.text
        r = server.client.post("/v1/adaptations", json={"examples": [
            {"image": "aGk=", "label": "a"}, {"image": "aGk=", "label": "b"}]}, headers=AUTH)
        assert r.status_code == 422 and "classifies text" in r.json()["detail"]
        assert "this server classifies text" in server.client.post(
            path, json={"inputs": [{"image": "aGk="}]}, headers=AUTH).json()["detail"]
    finally:
        server.stop()


def test_the_pool_frees_the_slot_of_a_cancelled_job() -> None:
    pool = AdaptationPool(workers=1, queue=1)
    release = threading.Event()
    running = pool.submit(lambda: release.wait(20))
    waiting = pool.submit(lambda: "never")
    with pytest.raises(PoolFull):
        pool.submit(lambda: "refused")
    assert pool.pending == 2 and pool.retry_after() >= 1
    assert waiting.cancel()  # its client went away before a worker took it
    assert pool.pending == 1
    release.set()
    assert running.result(20) is True
    pool.shutdown()
    assert pool.pending == 0
