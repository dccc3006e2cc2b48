"""The page of `metafit serve` over HTTP: ``GET /`` without a key, its static files, the
Content-Security-Policy and nosniff headers, nothing loaded from another host, no inline
script, the files shipped as package data, Swagger UI and ReDoc off (they use a CDN).

The page driven in a real browser: tests/test_serve_browser.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from metafit.server.page import PAGE_CSP, STATIC_FILES  # noqa: E402
from test_serve import AUTH, LiveServer, server_settings, trained  # noqa: E402
from test_trainer import image_folder  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "src" / "metafit" / "server" / "static"
#: The one absolute URL the static files may hold: SVG's namespace name (never fetched).
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(image_folder(tmp_path_factory.mktemp("serve_page") / "data"), "maml")


@pytest.fixture
def live(run: Path, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(run, tmp_path))
    yield server
    server.stop()


def test_the_page_is_served_at_the_root_without_a_key(live: LiveServer) -> None:
    r = live.client.get("/")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == PAGE_CSP
    assert "default-src 'self'" in PAGE_CSP and "unsafe-inline" not in PAGE_CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert '<script src="/static/app.js"' in r.text
    assert r.text == (STATIC / "index.html").read_text(encoding="utf-8")
    for name, media in STATIC_FILES.items():
        f = live.client.get(f"/static/{name}")
        assert f.status_code == 200, name
        assert f.headers["content-type"] == media
        assert f.headers["x-content-type-options"] == "nosniff"
        assert f.content == (STATIC / name).read_bytes()


def test_other_paths_still_need_the_key(live: LiveServer) -> None:
    for path in ("/static/secret.txt", "/static/../server/app.py", "/docs", "/redoc",
                 "/static/", "/index.html"):
        r = live.client.get(path)
        assert r.status_code == 401, path
        assert r.headers["x-content-type-options"] == "nosniff"  # refusals too
    # with the key: Swagger UI and ReDoc are off (their pages load a CDN's scripts), and
    # nothing but the listed files is served from /static/
    for path in ("/docs", "/redoc", "/static/secret.txt", "/static/..%2Fapp.py"):
        assert live.client.get(path, headers=AUTH).status_code == 404, path
    health = live.client.get("/healthz")
    assert health.headers["content-security-policy"] == "default-src 'none'; frame-ancestors " \
        "'none'"
    paths = live.client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and "/static/{name}" not in paths  # not the API


class _Tags(HTMLParser):
    """Every start tag of a document and its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data


def test_the_page_loads_nothing_from_another_host_and_has_no_inline_code() -> None:
    files = sorted(STATIC.iterdir())
    assert {f.name for f in files} == set(STATIC_FILES)
    for f in files:
        text = f.read_text(encoding="utf-8")
        urls = set(re.findall(r"[a-z][a-z0-9+.-]*://[^\s\"'<>)]*", text, re.I))
        assert urls <= {SVG_NAMESPACE}, (f.name, urls)
        assert not re.search(r"""(src|href|action)\s*=\s*["']?\s*//""", text), f.name
        assert not re.search(r"@import|url\(\s*['\"]?(?!/|#)", text), f.name
    parser = _Tags()
    parser.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert parser.tags, "no tags parsed"
    assert parser.script_text.strip() == ""  # no inline script
    for tag, attrs in parser.tags:
        assert "style" not in attrs and not any(a.startswith("on") for a in attrs), (tag, attrs)
        for name in ("src", "href"):
            value = attrs.get(name)
            assert value is None or value.startswith("/"), (tag, attrs)
        if tag == "script":
            assert attrs.get("src") == "/static/app.js"
    assert "<style" not in (STATIC / "index.html").read_text(encoding="utf-8")
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                   "new Function", "localStorage", "?api_key", "location.search"):
        assert unsafe not in script, unsafe
    assert 'headers["X-API-Key"] = state.key' in script  # the key goes in a header


def test_the_static_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["metafit"]
    for name in STATIC_FILES:
        path = f"server/static/{name}"
        assert any(fnmatch.fnmatch(path, p) for p in patterns), (path, patterns)
