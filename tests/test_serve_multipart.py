"""Image files as ``multipart/form-data`` (docs/serve.md, "Image files as a form"): the
same adaptations and predictions as the JSON bodies, the same limits (counted while the
form is parsed, pixels read from the headers before decoding), 413 / 415 / 422 naming the
field, 401 without a key, and the forms in the OpenAPI schema.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
httpx = pytest.importorskip("httpx")
from PIL import Image  # noqa: E402

from metafit.server import ServerSettings  # noqa: E402
from metafit.server.errors import ApiError  # noqa: E402
from metafit.server.forms import FormSpec, parse_form  # noqa: E402
from test_serve import (  # noqa: E402
    AUTH,
    LiveServer,
    queries,
    server_settings,
    support,
    trained,  # noqa: E402
)
from test_trainer import image_folder  # noqa: E402

SUPPORT = FormSpec(files=4, noun="examples", label_field="label", labels=4, paired=True,
                   steps=True, calibrate=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test_trainer's 8x8 images, and beside them (``../maml``) a 2-way MAML run."""
    root = image_folder(tmp_path_factory.mktemp("serve_multipart") / "data")
    trained(root, "maml")
    return root


@pytest.fixture
def live(data: Path, tmp_path: Path) -> Iterator[LiveServer]:
    """The MAML run behind test_serve.py's limits: 200,000-byte bodies, 20 examples,
    8 inputs, 5 steps."""
    server = LiveServer(server_settings(data.parent / "maml", tmp_path))
    yield server
    server.stop()


def file_bytes(data: Path, cls: int, i: int) -> bytes:
    return (data / f"class{cls:02d}" / f"{i}.png").read_bytes()


def files(images: list[bytes], media: str = "image/png") -> list[tuple[str, Any]]:
    return [("file", (f"{i}.png", raw, media)) for i, raw in enumerate(images)]


def support_form(data: Path, classes: tuple[int, ...] = (0, 5), shots: int = 2
                 ) -> dict[str, Any]:
    """httpx arguments: the support set of test_serve.support, as a form."""
    pairs = [(f"c{c}", file_bytes(data, c, i)) for c in classes for i in range(shots)]
    return {"data": {"label": [label for label, _ in pairs]},
            "files": files([raw for _, raw in pairs])}


def query_files(data: Path) -> list[tuple[str, Any]]:
    """The inputs of test_serve.queries, as file parts."""
    return files([file_bytes(data, c, 4) for c in (0, 5)])


def test_a_form_adapts_and_predicts_as_json_does(live: LiveServer, data: Path) -> None:
    r = live.client.post("/v1/adaptations", **support_form(data), headers=AUTH)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["labels"] == ["c0", "c5"] and made["examples"] == 4 and made["kind"] == "image"
    path = f"/v1/adaptations/{made['id']}/predict"
    as_form = live.client.post(path, files=query_files(data), headers=AUTH)
    assert as_form.status_code == 200, as_form.text
    as_json = live.client.post(path, json=queries(data), headers=AUTH)
    assert as_form.json() == as_json.json()
    for p in as_form.json()["predictions"]:
        assert sum(p["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    # the same support set as JSON: the same model, so the same predictions
    other = live.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
    again = live.client.post(f"/v1/adaptations/{other['id']}/predict", json=queries(data),
                             headers=AUTH)
    assert again.json() == as_json.json()
    r = live.client.post(path, files=query_files(data), data={"labels": ["c5"]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert [p["probabilities"] for p in r.json()["predictions"]] == [{"c5": 1.0}] * 2
    form = support_form(data)
    form["data"]["steps"] = "3"
    r = live.client.post("/v1/adaptations", **form, headers=AUTH)
    assert r.status_code == 201 and r.json()["steps"] == 3, r.text


def test_a_form_asks_for_calibration(live: LiveServer, data: Path) -> None:
    form = support_form(data, shots=3)
    plain = live.client.post("/v1/adaptations", **form, headers=AUTH).json()
    assert plain["temperature"] == 1.0
    form["data"]["calibrate"] = "true"
    r = live.client.post("/v1/adaptations", **form, headers=AUTH)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["temperature"] != pytest.approx(1.0)
    as_json = live.client.post("/v1/adaptations", json={**support(data, shots=3),
                                                        "calibrate": True}, headers=AUTH)
    assert as_json.json()["temperature"] == made["temperature"]  # the same fit
    form["data"]["calibrate"] = "false"
    assert live.client.post("/v1/adaptations", **form, headers=AUTH) \
        .json()["temperature"] == 1.0
    for bad in ("True", "1", "on", "yes", "", ["true", "true"]):
        form["data"]["calibrate"] = bad
        r = live.client.post("/v1/adaptations", **form, headers=AUTH)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "calibrate"], r.text
    r = live.client.post(f"/v1/adaptations/{made['id']}/predict", files=query_files(data),
                         data={"calibrate": "true"}, headers=AUTH)
    assert r.status_code == 422 and "Extra inputs" in str(r.json()["detail"])
    assert len(list(live.app.state.service.store.root.iterdir())) == 4


def test_a_served_model_predicts_from_a_form(live: LiveServer, data: Path,
                                             tmp_path: Path) -> None:
    settings: ServerSettings = live.app.state.service.settings
    made = live.client.post("/v1/adaptations", **support_form(data), headers=AUTH).json()
    expected = live.client.post(f"/v1/adaptations/{made['id']}/predict", json=queries(data),
                                headers=AUTH).json()
    model = LiveServer(replace(settings, target=settings.adaptations_dir / made["id"],
                               state_dir=tmp_path / "unused"))
    try:
        r = model.client.post("/v1/predict", files=query_files(data), headers=AUTH)
        assert r.status_code == 200 and r.json() == expected, r.text
    finally:
        model.stop()


def _bad_forms(data: Path) -> list[tuple[str, dict[str, Any], int, str]]:
    """(path, httpx arguments, status, a word the message must hold)."""
    one, two = file_bytes(data, 0, 0), file_bytes(data, 5, 0)
    pair = {"label": ["c0", "c5"]}
    return [
        ("/v1/adaptations", {"files": files([one, two])}, 422, "'label'"),
        ("/v1/adaptations", {"files": [("label", (None, b"c0")), ("label", (None, b"c5"))]},
         422, "'file'"),
        ("/v1/adaptations", {"data": {"label": ["c0"]}, "files": files([one, two])}, 422,
         "1 labels for 2 files"),
        ("/v1/adaptations", {"data": {**pair, "lable": "x"}, "files": files([one, two])}, 422,
         "Extra inputs"),
        ("/v1/adaptations", {"data": {"label": ["c0", " "]}, "files": files([one, two])}, 422,
         "at least 1 character"),
        ("/v1/adaptations", {"data": {**pair, "steps": "many"}, "files": files([one, two])},
         422, "'steps'"),
        ("/v1/adaptations", {"data": {**pair, "steps": "6"}, "files": files([one, two])}, 422,
         "at most 5"),
        ("/v1/adaptations", {"data": {**pair, "steps": ["1", "2"]}, "files": files([one, two])},
         422, "more than once"),
        ("/v1/adaptations", {"files": files([one] * 21)}, 422,
         "file: more than 20 support examples"),
        ("/v1/adaptations", {"data": {"label": ["c0"] * 21}, "files": files([one] * 21)}, 422,
         "label: more than 20 labels"),
        ("/v1/adaptations", {"data": pair, "files": files([one, two], "image/gif")}, 415,
         "file[0]: image/gif is not accepted"),
        ("/v1/adaptations", {"data": pair, "files": files([one, b"GIF89a not png"],
                                                          "application/octet-stream")}, 422,
         "support set: file[1]: cannot decode the image"),
        ("/v1/adaptations", {"data": {"label": ["c0", "c1", "c2"]},
                             "files": files([one, two, one])}, 422, "2-way head"),
        ("/predict", {"files": files([one] * 9)}, 422, "file: more than 8 inputs"),
        ("/predict", {"files": files([one], "text/plain")}, 415, "file[0]: text/plain"),
        ("/predict", {"files": files([one, b""])}, 422, "file[1]: cannot decode the image"),
        ("/predict", {"data": {"labels": "dog"}, "files": files([one])}, 422,
         "unknown labels ['dog']"),
        ("/predict", {"data": {"label": "c0"}, "files": files([one])}, 422, "Extra inputs"),
    ]


def test_bad_forms_get_4xx_naming_the_field(live: LiveServer, data: Path) -> None:
    made = live.client.post("/v1/adaptations", **support_form(data), headers=AUTH).json()
    for path, form, status, word in _bad_forms(data):
        url = f"/v1/adaptations/{made['id']}/predict" if path == "/predict" else path
        r = live.client.post(url, **form, headers=AUTH)
        assert r.status_code == status, (path, word, r.text)
        assert word in str(r.json()["detail"]), (word, r.text)
    for body, content_type in [(b"--x\r\nnot a form", "multipart/form-data; boundary=x"),
                               (b"anything", "multipart/form-data")]:
        r = live.client.post("/v1/adaptations", content=body,
                             headers={**AUTH, "Content-Type": content_type})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["type"] == "multipart_invalid"
    r = live.client.post("/v1/adaptations", content=b"x", headers={
        **AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    assert len(list(live.app.state.service.store.root.iterdir())) == 1  # the good one only


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_forms_keep_the_body_and_pixel_limits(live: LiveServer, data: Path,
                                              decoded: list[tuple[int, int]]) -> None:
    settings: ServerSettings = live.app.state.service.settings
    made = live.client.post("/v1/adaptations", **support_form(data), headers=AUTH).json()
    path = f"/v1/adaptations/{made['id']}/predict"
    r = live.client.post(path, files=files([b"\0" * 250_000]), headers=AUTH)
    assert r.status_code == 413 and "200000 bytes" in r.json()["detail"]
    buf = io.BytesIO()
    Image.new("1", (12000, 12000)).save(buf, "PNG")  # 144 megapixels in ~17 KB
    r = live.client.post(path, files=files([file_bytes(data, 0, 0), buf.getvalue()]),
                         headers=AUTH)
    assert r.status_code == 422
    assert r.json()["detail"] == ("file[1]: 12000x12000 pixels, over the server's limit of "
                                  "16777216 per image")
    assert (12000, 12000) not in decoded  # refused from the header
    small = LiveServer(replace(settings, max_request_pixels=100, state_dir=settings.state_dir))
    try:  # the fixture's images are 8x8: 64 pixels each
        r = small.client.post(path, files=query_files(data), headers=AUTH)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("file: more than 100 pixels in all")
    finally:
        small.stop()


def test_forms_need_the_key(live: LiveServer, data: Path) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}):
        r = live.client.post("/v1/adaptations", **support_form(data), headers=headers)
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        r = live.client.post("/v1/predict", files=query_files(data), headers=headers)
        assert r.status_code == 401
    assert list(live.app.state.service.store.root.glob("*")) == []


def test_a_form_over_a_limit_is_refused_before_the_rest_is_parsed(data: Path) -> None:
    boundary = "b0undary"
    one = file_bytes(data, 0, 0)

    def part(name: str, payload: bytes, filename: str | None = None) -> bytes:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"'
                                                      if filename else "")
        return (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
                + payload + b"\r\n")

    content_type = f"multipart/form-data; boundary={boundary}"
    parts = b"".join(part("file", one, "a.png") for _ in range(5))
    garbage = b"--" + boundary.encode() + b"\r\nno headers at all, never a closing boundary"
    with pytest.raises(ApiError) as e:  # the 5th file is refused, the garbage never read
        parse_form(parts + garbage, content_type, SUPPORT)
    assert e.value.status == 422 and e.value.detail == \
        "file: more than 4 support examples: the server accepts at most 4"
    good = b"".join([part("label", b"a"), part("file", one, "a.png"), part("label", b"b"),
                     part("file", one), part("steps", b"2")]) + f"--{boundary}--\r\n".encode()
    upload = parse_form(good, content_type, SUPPORT)
    assert upload.labels == ["a", "b"] and upload.files == [one, one] and upload.steps == 2
    assert upload.calibrate is False
    closing = f"--{boundary}--\r\n".encode()
    upload = parse_form(good[:-len(closing)] + part("calibrate", b"true") + closing,
                        content_type, SUPPORT)
    assert upload.calibrate is True and upload.steps == 2
    with pytest.raises(ApiError) as e:  # the same form without its closing boundary
        parse_form(good[:-len(boundary) - 6], content_type, SUPPORT)
    assert e.value.detail[0]["type"] == "multipart_invalid"  # type: ignore[index]
    with pytest.raises(ApiError) as e:
        parse_form(part("label", b"\xff\xfe") + part("file", one)
                   + f"--{boundary}--\r\n".encode(), content_type, SUPPORT)
    assert e.value.detail[0]["loc"] == ["body", "label", 0]  # type: ignore[index]


def test_the_openapi_schema_documents_the_forms(live: LiveServer) -> None:
    schema = live.client.get("/openapi.json").json()
    forms = {"/v1/adaptations": "AdaptationUpload",
             "/v1/adaptations/{adaptation_id}/predict": "PredictUpload",
             "/v1/predict": "PredictUpload"}
    for path, model in forms.items():
        content = schema["paths"][path]["post"]["requestBody"]["content"]
        assert set(content) == {"application/json", "multipart/form-data"}
        form = content["multipart/form-data"]
        assert form["schema"]["$ref"] == f"#/components/schemas/{model}"
        assert form["encoding"]["file"]["contentType"] == "image/png, image/jpeg"
    upload = schema["components"]["schemas"]["AdaptationUpload"]
    assert set(upload["required"]) == {"label", "file"}
    assert upload["properties"]["file"]["items"]["format"] == "binary"
    assert upload["additionalProperties"] is False
    assert "415" in schema["paths"]["/v1/predict"]["post"]["responses"]
