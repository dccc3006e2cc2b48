"""Versions over HTTP and several servers on one store.

``POST /v1/adaptations/{id}/examples`` (a new version: existing and new classes, the
calibration refitted, JSON and forms, the body limits), ``GET .../versions``, ``POST
.../rollback``, predictions naming their version; then two real ``metafit serve``
processes sharing one ``--state-dir``: created on one, served by the other, updated on
either, concurrent updates from both, rollback and deletion seen by the other.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from metafit.deploy import AdaptedModel  # noqa: E402
from metafit.deploy.versions import set_current  # noqa: E402
from metafit.server import ServerSettings  # noqa: E402
from test_serve import (  # noqa: E402
    AUTH,
    KEY,
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


def examples(data: Path, classes: tuple[int, ...], shots: tuple[int, ...]
             ) -> dict[str, Any]:
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
    cases: list[dict[str, Any]] = [{"examples": []}, {"examples": [{"image": png(data, 0, 2)}]},
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
    rollbacks: list[tuple[dict[str, Any], int]] = [
        ({"version": 2}, 404), ({"version": "1"}, 422), ({"version": 0}, 422), ({}, 422),
        ({"version": 1, "x": 1}, 422)]
    for rollback, status in rollbacks:
        r = c.post(f"{base}/rollback", json=rollback, headers=AUTH)
        assert r.status_code == status, (rollback, r.text)
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


def test_a_server_of_other_settings_cannot_update(settings: ServerSettings,
                                                  data: Path) -> None:
    """A server sharing the store with another classifier refuses the update (409),
    writing nothing, rather than mixing two heads in one adaptation."""
    first = LiveServer(settings)
    try:
        made = first.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    finally:
        first.stop()
    other = LiveServer(replace(settings, classifier="logistic"))
    try:
        r = other.client.post(f"/v1/adaptations/{made['id']}/examples",
                              json=examples(data, (0,), (2,)), headers=AUTH)
        assert r.status_code == 409 and "another run" in r.json()["detail"]
        versions = other.client.get(f"/v1/adaptations/{made['id']}/versions", headers=AUTH)
        assert len(versions.json()["versions"]) == 1
    finally:
        other.stop()


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


# -- two `metafit serve` processes on one store --------------------------------------------
@contextmanager
def serve(run: Path, state: Path, keys: Path, procs: dict[subprocess.Popen[str], bool]
          ) -> Iterator[Any]:
    """``metafit serve RUN`` in a subprocess on a free loopback port; a client for it. The
    process is added to ``procs`` (value: whether it was sent SIGTERM); it is sent SIGTERM
    on exit unless it was before (the test stops every server at once), and must then
    stop cleanly."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "METAFIT_API_KEYS": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metafit.cli", "serve", str(run), "--port", "0",
         "--api-key-file", str(keys), "--state-dir", str(state), "--threads", "1",
         "--max-examples", "40"],
        stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    procs[proc] = False
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
        with httpx.Client(base_url=url, timeout=60, headers=AUTH) as client:
            for _ in range(200):
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            yield client
        if not procs[proc]:
            proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(lines) + rest
        assert "Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_servers_share_one_store(run: Path, data: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    keys.chmod(0o600)
    state = tmp_path / "shared-state"
    procs: dict[subprocess.Popen[str], bool] = {}
    with ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda _: stack.enter_context(serve(run, state, keys, procs)),
                        range(2))
        made = a.post("/v1/adaptations", json=support(data)).json()  # created on A
        base = f"/v1/adaptations/{made['id']}"
        r = b.post(f"{base}/predict", json=queries(data))  # served by B
        assert r.status_code == 200 and r.json()["version"] == 1
        assert a.post(f"{base}/predict", json=queries(data)).json()["version"] == 1  # cached
        r = b.post(f"{base}/examples", json=examples(data, (7,), (0, 1)))  # updated on B
        assert r.status_code == 201 and r.json()["version"] == 2
        r = a.post(f"{base}/predict", json=queries(data))  # A serves the new version
        assert r.json()["version"] == 2
        assert set(r.json()["predictions"][0]["probabilities"]) == {"c0", "c5", "c7"}
        # concurrent updates from both: two distinct versions, each built on the other
        sent = [(a, examples(data, (0,), (2, 3))), (b, examples(data, (5,), (2, 3)))]
        answers = list(pool.map(lambda cb: cb[0].post(f"{base}/examples", json=cb[1]),
                                sent))
        assert [r.status_code for r in answers] == [201, 201], [r.text for r in answers]
        assert sorted(r.json()["version"] for r in answers) == [3, 4]
        listed = a.get(f"{base}/versions").json()
        assert listed == b.get(f"{base}/versions").json()
        assert [(v["version"], v["parent"], v["examples"]) for v in listed["versions"]] == [
            (1, None, 4), (2, 1, 6), (3, 2, 8), (4, 3, 10)]  # no examples lost
        for n in (1, 2, 3, 4):  # every version complete and loadable
            assert len(AdaptedModel.load(state / made["id"], n).label_names) in (2, 3)
        assert a.post(f"{base}/rollback", json={"version": 1}).status_code == 200
        assert b.post(f"{base}/predict", json=queries(data)).json()["version"] == 1
        assert b.delete(base).status_code == 204  # deleted on B: gone on A
        assert a.post(f"{base}/predict", json=queries(data)).status_code == 404
        assert a.get(f"{base}/versions").status_code == 404
        for proc in procs:  # both stop at once (each waits for its own below)
            proc.send_signal(signal.SIGTERM)
            procs[proc] = True
    assert not any(state.iterdir())
