"""The page of `metafit serve` in a real browser: Playwright driving Debian's Chromium,
headless, against a live server on a loopback port.

Image run: enter the key, drop and pick a few PNGs per class, adapt (a multipart form),
classify two images, read the probabilities table (it sums to 1, its top row is the
label shown, the same answer as the API's), an "unknown" answer when a prediction
carries one, a refused key, the key kept out of URLs and storage unless asked. Text run:
type sentences per class, adapt, classify. No request leaves the server's origin, and
the browser reports no error (a Content-Security-Policy violation would be one).

Skips only without playwright (the dev extra) or without /usr/bin/chromium (Debian's
``chromium``, which .ci/run installs). ``METAFIT_PAGE_SCREENSHOT=PATH`` also saves the
image run's screenshot there (docs/images/serve-page.png was made so).
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (the dev extra)")
CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("the browser test needs Debian's chromium at /usr/bin/chromium (apt-get "
                "install chromium; .ci/run installs it)", allow_module_level=True)

from PIL import Image, ImageDraw  # noqa: E402

from metafit.cli.main import main  # noqa: E402
from metafit.server import ServerSettings  # noqa: E402
from test_serve import AUTH, KEY, LiveServer, server_settings, trained  # noqa: E402
from test_trainer import image_folder  # noqa: E402

SHAPES = ("circle", "square", "triangle")
TIMEOUT_MS = 60_000


def shape_png(shape: str, variant: int) -> bytes:
    """A 48x48 PNG of ``shape``, its size and place varied by ``variant``."""
    image = Image.new("RGB", (48, 48), "white")
    draw = ImageDraw.Draw(image)
    m = 6 + 3 * (variant % 3)
    box = (m, m + variant % 2 * 2, 47 - m, 47 - m)
    # far apart in grey too: the fixture's model sees 8x8 grey images
    color = ("#1f3a93", "#e74c3c", "#f1c40f")[SHAPES.index(shape)]
    if shape == "circle":
        draw.ellipse(box, fill=color)
    elif shape == "square":
        draw.rectangle(box, fill=color)
    else:
        draw.polygon([(24, box[1]), (box[0], box[3]), (box[2], box[3])], fill=color)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Four PNGs per shape: three to adapt on, the fourth to classify."""
    root = tmp_path_factory.mktemp("shapes")
    out: dict[str, list[Path]] = {}
    for shape in SHAPES:
        out[shape] = []
        for i in range(4):
            path = root / f"{shape}-{i}.png"
            path.write_bytes(shape_png(shape, i))
            out[shape].append(path)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ProtoNet run (any number of classes) on test_trainer's 8x8 images."""
    return trained(image_folder(tmp_path_factory.mktemp("serve_browser") / "data"), "protonet")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


class Watched:
    """A new page whose requests and browser errors are recorded."""

    def __init__(self, browser: Any, origin: str) -> None:
        self.context = browser.new_context(viewport={"width": 1000, "height": 800},
                                           device_scale_factor=1)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.origin = origin
        self.urls: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def close(self, expected_errors: int = 0) -> None:
        """Close, checking that every request stayed on the server's origin, none carried
        the key in its URL, and the browser reported ``expected_errors`` errors."""
        self.context.close()
        assert self.urls and all(u.startswith(self.origin + "/") or u.startswith("blob:")
                                 for u in self.urls), self.urls
        assert not any(KEY in u for u in self.urls)
        assert len(self.errors) == expected_errors, self.errors


@pytest.fixture
def live(run: Path, tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(server_settings(run, tmp_path))
    yield server
    server.stop()


def drop_files(page: Any, selector: str, paths: list[Path]) -> None:
    """Drop ``paths`` on ``selector`` as a user dragging files would."""
    files = [[p.name, base64.b64encode(p.read_bytes()).decode()] for p in paths]
    transfer = page.evaluate_handle("""(files) => {
        const dt = new DataTransfer();
        for (const [name, data] of files) {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type: "image/png"}));
        }
        return dt;
    }""", files)
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def read_results(page: Any) -> list[dict[str, Any]]:
    """Each result card: the label shown and the table's {label: probability}, in order."""
    return page.eval_on_selector_all("#results article.result", """cards => cards.map(c => ({
        shown: c.querySelector(".top-label").textContent,
        top: c.querySelector("tbody tr.top th").textContent,
        first: c.querySelector("tbody tr th").textContent,
        probabilities: Object.fromEntries([...c.querySelectorAll("tbody tr")].map(r => [
            r.querySelector("th").textContent,
            Number(r.querySelector("td.p").dataset.probability)])),
        image: !!c.querySelector(".input img"),
    }))""")


def test_the_page_adapts_to_images_and_classifies(browser: Any, live: LiveServer,
                                                  shapes: dict[str, list[Path]],
                                                  tmp_path: Path) -> None:
    w = Watched(browser, live.url)
    page = w.page
    page.goto(live.url + "/")
    assert page.title() == "metafit: try a model"
    page.wait_for_selector("#server:has-text('image')")
    page.fill("#api-key", KEY)
    page.click("#use-key")
    assert "Key set" in page.text_content("#key-status")
    page.click("#add-class")
    cards = page.locator(".class-card")
    assert cards.count() == 3
    for i, shape in enumerate(SHAPES):
        cards.nth(i).locator("input.label").fill(shape)
        if i == 2:  # dragged and dropped
            drop_files(page, ".class-card:nth-child(3) .drop", shapes[shape][:3])
        else:  # picked with the file dialog
            cards.nth(i).locator("input[type=file]").set_input_files(shapes[shape][:3])
        assert cards.nth(i).locator(".thumb img").count() == 3
    page.fill("#steps", "2")
    page.click("#adapt")
    page.wait_for_selector("#adapt-status.ok, #adapt-status.error")
    status = page.text_content("#adapt-status")
    assert "Adapted to 3 classes from 9 examples" in status, status
    adaptation = page.input_value("#model")
    assert re.fullmatch(r"[0-9a-f]{32}", adaptation) and adaptation in status

    queries = [shapes["circle"][3], shapes["triangle"][3]]
    page.locator("#queries input[type=file]").set_input_files(queries)
    page.click("#classify")
    page.wait_for_selector("#classify-status.ok, #classify-status.error")
    assert page.text_content("#classify-status") == "2 classified."
    results = read_results(page)
    assert len(results) == 2
    for r in results:
        assert set(r["probabilities"]) == set(SHAPES) and r["image"]
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        best = max(r["probabilities"], key=r["probabilities"].get)
        assert r["shown"] == r["top"] == r["first"] == best
    api = httpx.post(f"{live.url}/v1/adaptations/{adaptation}/predict", headers=AUTH,
                     files=[("file", (p.name, p.read_bytes(), "image/png")) for p in queries])
    assert [p["label"] for p in api.json()["predictions"]] == [r["shown"] for r in results]
    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.format == "PNG" and image.width == 1000 and image.height > 800
    if os.environ.get("METAFIT_PAGE_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["METAFIT_PAGE_SCREENSHOT"])
    assert page.evaluate("sessionStorage.length + localStorage.length") == 0
    assert KEY not in page.url and "/v1/adaptations" in " ".join(w.urls)
    page.check("#calibrate")  # the same classes again, calibrated and rejecting
    page.check("#reject")
    page.click("#adapt")
    page.wait_for_selector("#model option:nth-child(3)", state="attached")  # one more
    page.wait_for_selector("#adapt-status.ok, #adapt-status.error")
    calibrated = page.input_value("#model")
    assert calibrated != adaptation
    made = httpx.get(f"{live.url}/v1/adaptations/{calibrated}", headers=AUTH).json()
    assert made["temperature"] != 1
    status = page.text_content("#adapt-status")
    assert f"temperature {made['temperature']:.2f}" in status, status
    assert made["reject"]["label"] == "unknown" and made["reject"]["threshold"] is not None
    assert f"none of these: {made['reject']['score']} below" in status, status
    w.close()


def test_the_page_shows_an_unknown_answer_and_a_refused_key(
        browser: Any, live: LiveServer, shapes: dict[str, list[Path]]) -> None:
    labels = {"circle": 0.2, "square": 0.7, "triangle": 0.1}
    made = httpx.post(f"{live.url}/v1/adaptations", headers=AUTH, data={
        "label": [s for s in SHAPES for _ in range(2)]}, files=[
        ("file", (p.name, p.read_bytes(), "image/png")) for s in SHAPES for p in shapes[s][:2]])
    assert made.status_code == 201, made.text
    w = Watched(browser, live.url)
    page = w.page
    page.goto(live.url + "/")
    page.wait_for_selector("#server:has-text('image')")
    page.fill("#api-key", KEY)
    page.check("#remember")  # kept in this tab's sessionStorage, and only there
    assert page.evaluate("sessionStorage.getItem('metafit.apiKey')") == KEY
    page.reload()
    assert page.input_value("#api-key") == KEY and page.is_checked("#remember")
    page.fill("#adaptation-id", made.json()["id"])
    page.click("#load")
    page.wait_for_selector("#adapt-status.ok")
    assert page.input_value("#model") == made.json()["id"]
    page.locator("#queries input[type=file]").set_input_files(shapes["square"][3])

    # a "none of these" answer (an adaptation with a reject setting), as the API sends it
    def abstaining(route: Any) -> None:
        route.fulfill(status=200, content_type="application/json", body=json.dumps(
            {"predictions": [{"label": "unknown", "probabilities": labels, "score": 0.12,
                              "rejected": True}]}))

    page.route("**/predict", abstaining)
    page.click("#classify")
    page.wait_for_selector("#results .top-label")
    assert page.text_content("#results .top-label.unknown") == "unknown"
    assert "none of these classes (reject score 0.120; closest: square)" in \
        page.text_content("#results .answer")
    page.unroute("**/predict")

    page.uncheck("#remember")
    assert page.evaluate("sessionStorage.length") == 0
    page.fill("#api-key", "wrong-key")
    page.click("#classify")
    page.wait_for_selector("#classify-status.error")
    assert "refused the API key (401)" in page.text_content("#classify-status")
    w.close(expected_errors=1)  # the browser logs the refused request


def test_the_page_adapts_a_text_run(browser: Any, tmp_path: Path, run: Path) -> None:
    pytest.importorskip("transformers")
    from test_text import text_args
    from text_fixtures import sentences

    text_run = tmp_path / "text"
    args = text_args(tmp_path, "protonet", "adapt=top", "adapt_layers=1")
    assert main(["train", "_banking77", *args, "--out", str(text_run), "--no-progress"]) == 0
    settings: ServerSettings = replace(server_settings(run, tmp_path), target=text_run)
    server = LiveServer(settings)
    try:
        r = server.client.post("/v1/adaptations", headers=AUTH, data={"label": "a"},
                               files=[("file", ("a.png", b"\x89PNG", "image/png"))])
        assert r.status_code == 415 and "send the sentences as JSON" in r.json()["detail"]
        rows = sentences(3, 4, seed=5)
        w = Watched(browser, server.url)
        page = w.page
        page.goto(server.url + "/")
        page.wait_for_selector("#server:has-text('text')")
        page.fill("#api-key", KEY)
        page.click("#add-class")
        cards = page.locator(".class-card")
        for c in range(3):
            cards.nth(c).locator("input.label").fill(f"intent_{c}")
            cards.nth(c).locator("textarea").fill("\n".join(t for t, _ in rows[4 * c:4 * c + 2]))
        page.click("#adapt")
        page.wait_for_selector("#adapt-status.ok, #adapt-status.error")
        assert "Adapted to 3 classes from 6 examples" in page.text_content("#adapt-status")
        queries = [t for t, _ in rows[2::4]]
        page.fill("#query-text", "\n".join(queries))
        page.click("#classify")
        page.wait_for_selector("#classify-status.ok, #classify-status.error")
        results = read_results(page)
        assert len(results) == 3 and page.locator("#results blockquote").count() == 3
        assert page.locator("#results blockquote").first.text_content() == queries[0]
        for r in results:
            assert set(r["probabilities"]) == {"intent_0", "intent_1", "intent_2"}
            assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert r["shown"] == max(r["probabilities"], key=r["probabilities"].get)
        w.close()
    finally:
        server.stop()
