"""Versions over HTTP and several servers on one store.

``POST /v1/adaptations/{id}/examples`` (a new version: existing and new classes, the
calibration refitted, JSON and forms, the body limits), ``GET .../versions``, ``POST
.../rollback``, predictions naming their version; then two real ``metafit serve``
processes sharing one ``--state-dir``: created on one, served by the other, updated on
either, concurrent updates from both, rollback and deletion seen by the other.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from metafit.deploy import AdaptedModel  # noqa: E402
from metafit.deploy.versions import set_current  # noqa: E402
from metafit.server import ServerSettings  # noqa: E402
from test_serve import (  # noqa: E402
    AUTH,
    LiveServer,
    png,
    queries,
    server_settings,
    support,
    trained,
)
from test_trainer import image_folder  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("serve_versions") / "data")


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    """A head-free run: new classes can be added."""
    return trained(data, "protonet")


@pytest.fixture
def settings(run: Path, tmp_path: Path) -> ServerSettings:
    """The test servers' settings (one key, small limits: 20 examples)."""
    return server_settings(run, tmp_path)


@pytest.fixture
def live(settings: ServerSettings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    yield server
    server.stop()


def examples(data: Path, classes: tuple[int, ...], shots: tuple[int, ...]) -> dict:
    return {"examples": [{"image": png(data, c, i), "label": f"c{c}"}
                         for c in classes for i in shots]}


def test_examples_make_a_version_that_predictions_name(live: LiveServer, data: Path,
                                                       settings: ServerSettings) -> None:
    c = live.client
    made = c.post("/v1/adaptations", json={**support(data), "calibrate": True},
                  headers=AUTH).json()
    assert made["version"] == 1 and made["parent"] is None
    base = f"/v1/adaptations/{made['id']}"
    r = c.post(f"{base}/predict", json=queries(data), headers=AUTH)
    assert r.status_code == 200 and r.json()["version"] == 1
    r = c.post(f"{base}/examples", json=examples(data, (0, 7), (2, 3)), headers=AUTH)
    assert r.status_code == 201, r.text
    new = r.json()
    assert (new["version"], new["parent"], new["examples"]) == (2, 1, 8)
    assert new["labels"] == ["c0", "c5", "c7"] and new["id"] == made["id"]
    stored = AdaptedModel.load(settings.adaptations_dir / made["id"])
    assert stored.info["calibration"]["held_out"] == 8  # refitted on the union
    r = c.post(f"{base}/predict", json=queries(data), headers=AUTH)
    assert r.json()["version"] == 2
    assert set(r.json()["predictions"][0]["probabilities"]) == {"c0", "c5", "c7"}
    assert c.get(base, headers=AUTH).json()["version"] == 2
    listed = c.get(f"{base}/versions", headers=AUTH).json()
    assert listed["current"] == 2 and listed["id"] == made["id"]
    assert [(v["version"], v["parent"], v["added"], v["examples"], v["current"])
            for v in listed["versions"]] == [(1, None, None, 4, False), (2, 1, 4, 8, True)]
    r = c.post(f"{base}/rollback", json={"version": 1}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["labels"] == ["c0", "c5"]
    assert c.post(f"{base}/predict", json=queries(data), headers=AUTH).json()["version"] == 1
    # a form of image files, built on the version served now (1)
    files = [("file", (f"{i}.png", base64.b64decode(png(data, 5, i)), "image/png"))
             for i in (2, 3)]
    r = c.post(f"{base}/examples", data={"label": ["c5", "c5"]}, files=files, headers=AUTH)
    assert r.status_code == 201, r.text
    assert (r.json()["version"], r.json()["parent"], r.json()["examples"]) == (3, 1, 6)


def test_bad_examples_and_rollbacks_are_refused(live: LiveServer, data: Path) -> None:
    c = live.client
    made = c.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    base = f"/v1/adaptations/{made['id']}"
    unknown = "0" * 32
    ok = examples(data, (0,), (2,))
    assert c.post(f"/v1/adaptations/{unknown}/examples", json=ok,
                  headers=AUTH).status_code == 404
    assert c.post(f"{base}/examples", json=ok).status_code == 401
    cases = [{"examples": []}, {"examples": [{"image": png(data, 0, 2)}]},
             {**ok, "calibrate": True}, {**ok, "steps": 99}, {**ok, "reject": {}},
             {"examples": [{"image": "bm90IGFuIGltYWdl", "label": "c0"}]},
             {"examples": [{"text": "a sentence", "label": "c0"}]}]
    for body in cases:
        r = c.post(f"{base}/examples", json=body, headers=AUTH)
        assert r.status_code == 422, (body.keys(), r.text)
    # the server's 20 examples per adaptation count the stored ones (4)
    r = c.post(f"{base}/examples", json=examples(data, (0, 5, 7), tuple(range(6))),
               headers=AUTH)
    assert r.status_code == 422 and "holds 4 examples" in r.text
    files = [("file", ("a.png", base64.b64decode(png(data, 0, 2)), "image/png"))]
    r = c.post(f"{base}/examples", data={"label": "c0", "reject": "{}"}, files=files,
               headers=AUTH)
    assert r.status_code == 422 and "reject" in r.text
    for body, status in [({"version": 2}, 404), ({"version": "1"}, 422), ({"version": 0}, 422),
                         ({}, 422), ({"version": 1, "x": 1}, 422)]:
        r = c.post(f"{base}/rollback", json=body, headers=AUTH)
        assert r.status_code == status, (body, r.text)
    assert c.get(f"/v1/adaptations/{unknown}/versions", headers=AUTH).status_code == 404
    assert c.post(f"/v1/adaptations/{unknown}/rollback", json={"version": 1},
                  headers=AUTH).status_code == 404
    assert c.get(f"{base}/versions", headers=AUTH).json()["current"] == 1
    paths = c.get("/openapi.json").json()["paths"]
    assert {"/v1/adaptations/{adaptation_id}/examples",
            "/v1/adaptations/{adaptation_id}/versions",
            "/v1/adaptations/{adaptation_id}/rollback"} <= set(paths)
    body = paths["/v1/adaptations/{adaptation_id}/examples"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "multipart/form-data"}


def test_a_model_server_follows_the_versions_of_its_directory(
        settings: ServerSettings, data: Path, tmp_path: Path) -> None:
    first = LiveServer(settings)
    try:
        made = first.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
        first.client.post(f"/v1/adaptations/{made['id']}/examples",
                          json=examples(data, (7,), (0, 1)), headers=AUTH)
    finally:
        first.stop()
    model_dir = settings.adaptations_dir / made["id"]
    server = LiveServer(replace(settings, target=model_dir, state_dir=tmp_path / "s2"))
    try:
        r = server.client.post(f"/v1/adaptations/{made['id']}/examples",
                               json=examples(data, (0,), (2,)), headers=AUTH)
        assert r.status_code == 409  # a model server cannot adapt
        r = server.client.post("/v1/predict", json=queries(data), headers=AUTH)
        assert r.json()["version"] == 2
        assert set(r.json()["predictions"][0]["probabilities"]) == {"c0", "c5", "c7"}
        set_current(model_dir, 1)  # `metafit versions MODEL --use 1` in another process
        r = server.client.post("/v1/predict", json=queries(data), headers=AUTH)
        assert r.json()["version"] == 1
        assert set(r.json()["predictions"][0]["probabilities"]) == {"c0", "c5"}
    finally:
        server.stop()
