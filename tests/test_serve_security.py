"""`metafit serve` under attack: one regression test per exploit of issue 24 (item 3).

Unbounded metric labels, pixel bombs, over-long bodies parsed on the event loop, query
strings and forged lines in the logs, object reprs in errors, slow headers and bodies,
world-readable support sets, open key files, stale temporary directories. Each exploit
test failed on the code before the fix (see the report of issue 24). At the end, the
bodies a review of 2026-12-06 found (huge JSON integers, long multipart boundaries,
unknown keys decoded in full, lax ``steps``, concurrent additions past the total).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import stat
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

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
import uvicorn  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from PIL import Image  # noqa: E402

from metafit.cli.main import main  # noqa: E402
from metafit.server import ServerSettings, load_api_keys  # noqa: E402
from metafit.server.bodies import parse_body  # noqa: E402
from metafit.server.errors import ApiError  # noqa: E402
from metafit.server.schemas import PredictRequest  # noqa: E402
from metafit.server.store import AdaptationStore  # noqa: E402
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

BOMB_SIDE = 12000


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("serve_security") / "data")


@pytest.fixture
def settings(run: Path, tmp_path: Path) -> ServerSettings:
    """test_serve.py's limits; the new ones at their defaults."""
    return server_settings(run, tmp_path)


@pytest.fixture
def live(settings: ServerSettings) -> Iterator[LiveServer]:
    server = LiveServer(settings)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def run(data: Path) -> Path:
    """A 2-way MAML run on 8x8 images (as in test_serve.py)."""
    return trained(data, "maml")


@pytest.fixture(scope="module")
def bomb() -> str:
    """A 1-bit 12000x12000 PNG (144 megapixels in ~17 KB), base64."""
    buf = io.BytesIO()
    Image.new("1", (BOMB_SIDE, BOMB_SIDE)).save(buf, "PNG")
    assert len(buf.getvalue()) < 50_000
    return base64.b64encode(buf.getvalue()).decode()


class GuardedServer(LiveServer):
    """:class:`LiveServer` with the uvicorn configuration ``metafit serve`` uses."""

    def __init__(self, settings: ServerSettings) -> None:
        from metafit.server import create_app, runner

        self.app = create_app(settings)
        self.sock = runner.bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(runner.uvicorn_config(self.app, settings))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        self.client = httpx.Client(base_url=self.url, timeout=30)


def series(text: str) -> set[str]:
    """The sample lines' names and labels of a Prometheus text page."""
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


# 1. metric labels ------------------------------------------------------------------------

def test_random_methods_do_not_grow_the_metrics(live: LiveServer) -> None:
    rng = random.Random(0)

    def flood(n: int) -> None:
        for _ in range(n):
            method = "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=8))
            r = live.client.request(method, rng.choice(["/healthz", "/v1/predict", "/x"]))
            assert r.status_code in (401, 404, 405)

    flood(40)
    live.client.get("/metrics", headers=AUTH)  # its own series, counted after it answers
    before = live.client.get("/metrics", headers=AUTH).text
    flood(80)
    after = live.client.get("/metrics", headers=AUTH).text
    assert series(after) == series(before)  # no new series, only larger counts
    assert 'method="other"' in after
    assert not re.search(r'method="[A-Z]{8}"', after)


# 2. pixel bombs --------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_pixel_bomb_is_refused_before_decoding(live: LiveServer, data: Path, bomb: str,
                                                 decoded: list[tuple[int, int]]) -> None:
    made = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    decoded.clear()
    body = {"inputs": [{"image": png(data, 0, 1)}, {"image": bomb}]}
    r = live.client.post(f"/v1/adaptations/{made['id']}/predict", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == (f"inputs[1].image: {BOMB_SIDE}x{BOMB_SIDE} pixels, over "
                                  "the server's limit of 16777216 per image")
    r = live.client.post("/v1/adaptations", headers=AUTH, json={"examples": [
        {"image": bomb, "label": "a"}, {"image": png(data, 0, 1), "label": "b"}]})
    assert r.status_code == 422 and "examples[0].image: 12000x12000 pixels" in r.text
    assert decoded == []  # no image decoded, the small one neither
    assert len(list(live.app.state.service.store.root.iterdir())) == 1


def test_the_pixels_of_a_request_are_capped(settings: ServerSettings, data: Path,
                                            decoded: list[tuple[int, int]]) -> None:
    server = LiveServer(replace(settings, max_image_pixels=64, max_request_pixels=300))
    try:  # the fixture's images are 8x8: 64 pixels each
        made = server.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
        path = f"/v1/adaptations/{made['id']}/predict"
        assert server.client.post(path, json=queries(data), headers=AUTH).status_code == 200
        decoded.clear()
        five = {"inputs": [{"image": png(data, 0, i)} for i in range(5)]}
        r = server.client.post(path, json=five, headers=AUTH)
        assert r.status_code == 422
        assert r.json()["detail"] == ("inputs: more than 300 pixels in all (the server's "
                                      "limit per request), 320 by inputs[4].image")
        assert decoded == []
    finally:
        server.stop()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_the_library_refuses_a_pixel_bomb_before_decoding(
        bomb: str, decoded: list[tuple[int, int]]) -> None:
    from metafit.data.image_folder import decode_image
    from metafit.deploy import InputError
    from metafit.deploy.preprocess import ImagePreprocessor

    raw = base64.b64decode(bomb)
    with pytest.raises(InputError, match="input 0: 12000x12000 pixels, over the limit of"):
        ImagePreprocessor(8, 1, False)([raw])  # default cap: PIL's ~89 megapixels
    with pytest.raises(ValueError, match="12000x12000 pixels, over the limit of 1000"):
        decode_image(raw, 8, "L", max_pixels=1000)
    assert decoded == []
    small = io.BytesIO()
    Image.new("L", (40, 30), 200).save(small, "PNG")
    with pytest.raises(InputError, match="40x30 pixels, over the limit of 1000"):
        ImagePreprocessor(8, 1, False, max_pixels=1000)([small.getvalue()])
    assert ImagePreprocessor(8, 1, False, max_pixels=1200)([small.getvalue()]).shape == \
        (1, 1, 8, 8)


# 3. over-long bodies ---------------------------------------------------------------------

def test_an_over_long_body_does_not_block_the_event_loop(
        settings: ServerSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    server = LiveServer(replace(settings, max_body_bytes=16 * 2**20))
    loads = json.loads
    parsed_on: list[threading.Thread] = []

    def spy(s: Any, *args: Any, **kwargs: Any) -> Any:
        if len(s) > 2**20:
            parsed_on.append(threading.current_thread())
        return loads(s, *args, **kwargs)

    monkeypatch.setattr(json, "loads", spy)
    big = json.dumps({"inputs": [{"image": "QQ=="}] * 600_000}).encode()  # 11.4 MB
    result: dict[str, Any] = {}
    try:
        sender = threading.Thread(target=lambda: result.update(r=httpx.post(
            f"{server.url}/v1/predict", content=big, timeout=120,
            headers={**AUTH, "Content-Type": "application/json"})))
        sender.start()
        latencies = []
        while sender.is_alive() or not latencies:
            start = time.perf_counter()
            assert server.client.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - start)
        sender.join()
        assert max(latencies) < 1.0, latencies
        assert server.thread not in parsed_on  # never parsed on the event loop
        r = result["r"]
        assert r.status_code == 422, r.text[:300]
        assert r.json()["detail"] == ("more than 8 inputs: the server accepts at most 8 per "
                                      "request")
    finally:
        server.stop()


def test_the_body_parser_reads_json_as_json_loads_does() -> None:
    from metafit.server.bodies import load_object

    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(
        allow_nan=False) | st.text(), lambda children: st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=5), children, max_size=4), max_leaves=20)

    @hsettings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.dictionaries(st.sampled_from(["inputs", "labels", "x", ""]) | st.text(),
                           values, max_size=4), st.sampled_from([0, 2, None]))
    def check(obj: dict[str, Any], indent: int | None) -> None:
        text = json.dumps(obj, indent=indent, ensure_ascii=False)
        assert load_object(text.encode(), {"inputs": 100, "labels": 100}) == json.loads(text)

    check()


# 4, 5, 11. logs --------------------------------------------------------------------------

def test_client_text_cannot_forge_log_lines(live: LiveServer,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    r = live.client.get("/v1/adaptations/x%0aINFO metafit.server: forged%0d%1b[31m")
    assert r.status_code == 401
    messages = [rec.getMessage() for rec in caplog.records
                if rec.name.startswith(("metafit", "uvicorn"))]  # the server's, not httpx's
    for m in messages:
        assert "\n" not in m and "\r" not in m and "\x1b" not in m, m
    assert any("refused GET /v1/adaptations/x\\nINFO" in m for m in messages), messages


def test_cli_logs_no_query_string_and_escapes_paths(run: Path, data: Path,
                                                     tmp_path: Path) -> None:
    secret = "q5ecret-key-in-the-query"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "METAFIT_API_KEYS": KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metafit.cli", "serve", str(run), "--port", "0",
         "--state-dir", str(tmp_path / "state"), "--threads", "1"],
        stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        url = None
        while url is None:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
            url = found and found.group(1)
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.get(f"/metrics?api_key={secret}").status_code == 401  # headers only
            assert client.get(f"/metrics?api_key={KEY}").status_code == 401
            assert client.get("/v1/predict%0aINFO forged").status_code == 401
            assert client.get("/healthz?x=1").status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert secret not in log and KEY not in log and "api_key" not in log, log
    assert '"GET /metrics HTTP/1.1" 401' in log and '"GET /healthz HTTP/1.1" 200' in log, log
    assert not any(line.startswith("INFO forged") for line in log.splitlines()), log
    assert "/v1/predict\\nINFO forged" in log, log


# 6. object reprs -------------------------------------------------------------------------

def test_errors_carry_no_object_reprs(live: LiveServer, data: Path) -> None:
    junk = base64.b64encode(b"no image at all").decode()
    made = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    for path, body in [
            (f"/v1/adaptations/{made['id']}/predict", {"inputs": [{"image": junk}]}),
            ("/v1/adaptations", {"examples": [{"image": junk, "label": "a"},
                                              {"image": png(data, 0, 0), "label": "b"}]})]:
        r = live.client.post(path, json=body, headers=AUTH)
        assert r.status_code == 422
        detail = r.json()["detail"]
        assert "cannot decode the image" in detail and "not a PNG or JPEG file" in detail
        assert "0x" not in detail and "<_io" not in detail and "BytesIO" not in detail


# 7. slow clients -------------------------------------------------------------------------

def test_slow_headers_and_bodies_are_cut_off(settings: ServerSettings) -> None:
    server = GuardedServer(replace(settings, header_timeout=0.5, body_timeout=0.5,
                                   keep_alive_timeout=2, max_connections=50))
    config = server.server.config
    assert config.limit_concurrency == 50 and config.timeout_keep_alive == 2
    assert config.access_log is False
    try:
        with socket.create_connection(server.sock.getsockname(), timeout=10) as slow:
            start = time.monotonic()
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never ends the headers
            assert slow.recv(1024) == b""  # closed by the server
            assert time.monotonic() - start < 5
        with socket.create_connection(server.sock.getsockname(), timeout=10) as slow:
            slow.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100\r\nAuthorization: Bearer "
                         + KEY.encode() + b"\r\n\r\n{\"inputs\"")  # 10 of 100 bytes
            answer = slow.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408"), answer
        assert server.client.get("/healthz").status_code == 200  # others are served
    finally:
        server.stop()


# 8. stored support sets ------------------------------------------------------------------

def test_stored_adaptations_are_readable_by_their_owner_only(live: LiveServer,
                                                             data: Path) -> None:
    old = os.umask(0o022)
    try:
        r = live.client.post("/v1/adaptations", json=support(data), headers=AUTH)
    finally:
        os.umask(old)
    assert r.status_code == 201
    root = live.app.state.service.store.root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    found = list((root / r.json()["id"]).rglob("*")) + [root / r.json()["id"]]
    assert any(p.is_file() for p in found)
    for p in found:
        assert stat.S_IMODE(p.stat().st_mode) == (0o700 if p.is_dir() else 0o600), p


# 9. key files ----------------------------------------------------------------------------

def test_a_key_file_open_to_others_is_refused(run: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    for mode in (0o644, 0o640, 0o604, 0o620):
        keys.chmod(mode)
        with pytest.raises(ValueError, match=f"mode 0{mode:o}.*chmod 600 {keys}"):
            load_api_keys(keys, env="")
    assert main(["serve", str(run), "--api-key-file", str(keys), "--port", "0"]) == 2
    assert f"chmod 600 {keys}" in capsys.readouterr().err
    keys.chmod(0o600)
    assert load_api_keys(keys, env="") == {KEY}


# 10. stale temporary directories ---------------------------------------------------------

def test_stale_temporary_directories_are_removed_at_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "state"
    a, b = "a" * 32, "b" * 32
    old_tmp, new_tmp = root / f".{a}.tmp-1234abcd", root / f".{a}.tmp-5678ef00"
    backup, only_copy = root / f".{a}.previous", root / f".{b}.previous"
    for d in (root / a, old_tmp, new_tmp, backup, only_copy, root / ".other.tmp-1"):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"x")
    hour_ago = time.time() - 3600
    for d in (old_tmp, backup, only_copy, root / ".other.tmp-1"):
        os.utime(d, (hour_ago, hour_ago))
    root.chmod(0o700)
    caplog.set_level(logging.WARNING)
    AdaptationStore(root, capacity=2)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [a, new_tmp.name, only_copy.name, ".other.tmp-1"])  # young, only copy, not ours
    assert sum("interrupted save" in r.getMessage() for r in caplog.records) == 2
    root.chmod(0o755)  # a shared directory given as --state-dir: refused, left as it is
    with pytest.raises(ValueError, match=r"mode 0755\) and holds more than adaptations "
                       r"\(\.other\.tmp-1\).*chmod 700"):
        AdaptationStore(root, capacity=2)
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    shutil.rmtree(root / ".other.tmp-1")
    root.chmod(0o755)  # a store made before stores were private: made private
    AdaptationStore(root, capacity=2)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert any("restricting" in r.getMessage() for r in caplog.records)


def test_log_escaping() -> None:
    from metafit.server.logs import clean

    assert clean('/a\nINFO x\r\x1b[0m"\\ é\u2028') == \
        '/a\\nINFO x\\r\\x1b[0m\\"\\\\ \\xe9\\u2028'
    assert clean("x" * 300) == "x" * 200 + "..."


def test_the_command_line_defaults_are_the_settings_defaults() -> None:
    """`metafit serve` repeats ServerSettings' defaults in its options (the parser cannot
    import the server package without the serve extra): they must not drift apart."""
    from dataclasses import fields

    from metafit.cli.main import build_parser

    args = build_parser().parse_args(["serve", "RUN"])
    compared = 0
    for f in fields(ServerSettings):
        if hasattr(args, f.name) and f.name not in ("target", "api_keys"):
            assert getattr(args, f.name) == f.default, f.name
            compared += 1
    assert compared >= 16


# review 2026-12-06 -------------------------------------------------------------------
# Request bodies that broke `metafit serve` from outside (review of 2026-12-06): a JSON
# integer of more digits than Python converts, a multipart boundary over python-multipart's
# limit, an unknown key whose value would be decoded in full before the 422, `steps` given
# as a boolean, a string or a loosely written number, and concurrent additions of
# examples passing the per-adaptation total together. Each got a 500, took memory without
# bound, or was accepted; each is now a 422 (or a 201 within the total).

def detail(r: httpx.Response) -> list[dict[str, object]]:
    assert r.status_code == 422, r.text
    return r.json()["detail"]  # type: ignore[no-any-return]


def test_a_huge_json_integer_is_a_422_and_the_connection_lives_on(live: LiveServer,
                                                                  data: Path) -> None:
    c = live.client
    big = "9" * 5000
    for path, body in (("/v1/adaptations", '{"steps": ' + big + "}"),
                       ("/v1/adaptations", '{"examples": [' + big + "]}")):
        r = c.post(path, content=body, headers={**AUTH, "Content-Type": "application/json"})
        (error,) = detail(r)
        assert error["type"] == "json_invalid" and "4300 digits" in str(error["msg"])
    made = c.post("/v1/adaptations", json=support(data), headers=AUTH)  # same connection
    assert made.status_code == 201, made.text


def test_a_multipart_boundary_over_the_limit_is_a_422(live: LiveServer) -> None:
    body = b"--" + b"B" * 300 + b"\r\n"
    r = live.client.post("/v1/adaptations", content=body, headers={
        **AUTH, "Content-Type": "multipart/form-data; boundary=" + "B" * 300})
    (error,) = detail(r)
    assert error["type"] == "multipart_invalid" and "boundary" in str(error["msg"])


def test_an_unknown_key_is_refused_before_its_value_is_decoded() -> None:
    # The unknown key's value is not even JSON: decoded, it would be a json_invalid error.
    raw = b'{"inputs": ["a"], "x": [' + b"{}, " * 1000 + b"}'"
    with pytest.raises(ApiError) as e:
        parse_body(raw, "application/json", PredictRequest, {"inputs": 8})
    assert e.value.status == 422
    assert e.value.detail == [{"loc": ["body", "x"], "type": "extra_forbidden",
                               "msg": "Extra inputs are not permitted"}]
    ok = parse_body(b'{"inputs": ["a"]}', "application/json", PredictRequest, {"inputs": 8})
    assert ok.inputs == ["a"]


@pytest.mark.parametrize("steps", [True, "2", 2.0])
def test_json_steps_must_be_an_integer(live: LiveServer, data: Path, steps: object) -> None:
    r = live.client.post("/v1/adaptations", json={**support(data), "steps": steps},
                         headers=AUTH)
    assert [e["loc"] for e in detail(r)] == [["body", "steps"]]


@pytest.mark.parametrize("steps", ["3.0", " 3", "1_0", "+3", "٣"])
def test_form_steps_must_be_digits(live: LiveServer, data: Path, steps: str) -> None:
    files = [("file", (f"{c}{i}.png", base64.b64decode(png(data, c, i)), "image/png"))
             for c in (0, 5) for i in (0, 1)]
    form = {"label": ["c0", "c0", "c5", "c5"], "steps": steps}
    r = live.client.post("/v1/adaptations", data=form, files=files, headers=AUTH)
    assert [e["loc"] for e in detail(r)] == [["body", "steps"]]
    r = live.client.post("/v1/adaptations", data={**form, "steps": "3"}, files=files,
                         headers=AUTH)
    assert r.status_code == 201, r.text  # "3" is taken (ProtoNet then takes no steps)


def test_concurrent_additions_cannot_pass_the_total_together(live: LiveServer,
                                                             data: Path) -> None:
    c = live.client
    made = c.post("/v1/adaptations", json=support(data), headers=AUTH)  # 4 examples
    assert made.status_code == 201, made.text
    base = f"/v1/adaptations/{made.json()['id']}"
    more = {"examples": [{"image": png(data, cls, i), "label": f"c{cls}"}
                         for cls in (0, 5) for i in range(2, 6)]}  # 8 each

    def add(_: int) -> httpx.Response:
        with httpx.Client(base_url=live.url, timeout=60) as own:
            return own.post(f"{base}/examples", json=more, headers=AUTH)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(add, range(4)))
    codes = sorted(r.status_code for r in answers)
    assert codes == [201, 201, 422, 422], [r.text for r in answers]
    for r in answers:
        if r.status_code == 422:
            assert "20 per adaptation" in json.dumps(r.json())
    served = c.post(f"{base}/predict", json=queries(data), headers=AUTH)
    assert served.status_code == 200
    versions = c.get(f"{base}/versions", headers=AUTH).json()["versions"]
    assert max(v["examples"] for v in versions) == 20
