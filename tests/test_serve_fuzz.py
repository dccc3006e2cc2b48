"""Schemathesis against a live `metafit serve` on loopback: requests generated from the
served OpenAPI schema, valid and invalid, with the API key and without.

Every response must be a documented status with a body of the documented schema and
content type, never a 5xx; bodies that break the schema must be refused (4xx); keyless
requests must be refused (401); and the server must log no error. Deterministic
(``derandomize=True``, no example database) and bounded: a few hundred requests.
"""

from __future__ import annotations

import base64
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from metafit.server import ServerSettings  # noqa: E402
from metafit.server.schemas import PNG_EXAMPLE  # noqa: E402
from test_serve import AUTH, KEY, png, support, trained  # noqa: E402
from test_serve_security import GuardedServer  # noqa: E402
from test_trainer import image_folder  # noqa: E402

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection,
          ignored_auth]
EXAMPLES = 25  # per operation and mode
# both schemes with the valid key: otherwise a generated (invalid) X-API-Key or bearer
# token beside the valid one gets the request refused before it reaches the route
KEYS = {**AUTH, "X-API-Key": KEY}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained(image_folder(tmp_path_factory.mktemp("serve_fuzz") / "data"), "maml")


def fuzz(strategy: Any, examples: int, call: Callable[[Any], None]) -> str | None:
    """Run ``call`` on ``examples`` generated cases; the failure's message, if any."""
    @hsettings(max_examples=examples, deadline=None, derandomize=True, database=None,
               phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def test(case: Any) -> None:
        call(case)

    try:
        test()
    except Unsatisfiable:  # no invalid request to make (an operation without inputs)
        return None
    except Exception as e:  # a failed check: keep going, report them all at the end
        return f"{type(e).__name__}: {e}"
    return None


def test_schemathesis_finds_no_failure(run: Path, tmp_path: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    server = GuardedServer(ServerSettings(
        target=run, state_dir=tmp_path / "state", api_keys=frozenset({KEY}),
        max_body_bytes=100_000, max_examples=20, max_inputs=8, max_steps=5))
    try:
        data = run.parent / "data"
        made = server.client.post("/v1/adaptations", json=support(data), headers=AUTH).json()
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        failures: list[str] = []
        files = [base64.b64decode(png(data, c, i)) for c in (0, 5) for i in range(2)]
        bodies = {"/v1/adaptations": [
            ("application/json", support(data)),
            ("multipart/form-data", {"label": ["c0", "c0", "c5", "c5"], "file": files})],
                  "/v1/adaptations/{adaptation_id}/predict": [
            ("application/json", {"inputs": [{"image": PNG_EXAMPLE},
                                             {"image": png(data, 0, 4)}], "labels": ["c0"]}),
            ("multipart/form-data", {"file": [base64.b64decode(PNG_EXAMPLE), files[0]],
                                     "labels": ["c0"]})],
                  "/v1/adaptations/{adaptation_id}/examples": [
            ("application/json", {"examples": support(data)["examples"][:1]}),
            ("multipart/form-data", {"label": ["c5"], "file": files[2:3]})],
                  "/v1/adaptations/{adaptation_id}/rollback": [
            ("application/json", {"version": 1})]}
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 10

        def call(headers: dict[str, str]) -> Callable[[Any], None]:
            def send(case: Any) -> None:
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                case.validate_response(response, checks=CHECKS, headers=headers,
                                       transport_kwargs={"base_url": server.url})
            return send

        own_id = {"adaptation_id": made["id"]}
        for op in operations:
            # (mode, headers, examples, fixed path parameters, fixed body and its type)
            plans: list[tuple[GenerationMode, dict[str, str], int, dict[str, str] | None,
                              Any]] = [(GenerationMode.POSITIVE, KEYS, EXAMPLES, None, None),
                                       (GenerationMode.NEGATIVE, KEYS, EXAMPLES, None, None),
                                       (GenerationMode.POSITIVE, {}, 5, None, None)]
            if "{adaptation_id}" in op.path and op.method.upper() != "DELETE":
                plans.append((GenerationMode.POSITIVE, KEYS, EXAMPLES, own_id, None))
            if op.method.upper() == "POST":  # bodies the model takes, as JSON and as a form
                plans += [(GenerationMode.POSITIVE, KEYS, 3, own_id, fixed)
                          for fixed in bodies.get(op.path, [])]
            for mode, headers, examples, path, fixed in plans:
                given_body = {} if fixed is None else {"media_type": fixed[0], "body": fixed[1]}
                strategy = op.as_strategy(generation_mode=mode, path_parameters=path,
                                          **given_body)
                failure = fuzz(strategy, examples, call(headers))
                if failure:
                    failures.append(f"{op.method.upper()} {op.path} {mode.value} "
                                    f"{'key' if headers else 'no key'}: {failure}")
        metrics = server.client.get("/metrics", headers=AUTH).text
    finally:
        server.stop()
    sent = sum(float(n) for n in re.findall(r"^metafit_http_requests_total\{.*\} (\S+)$",
                                             metrics, re.M))
    print(f"schemathesis: {sent:.0f} requests")
    print("\n".join(line for line in metrics.splitlines()
                    if line.startswith("metafit_http_requests_total")))
    assert not failures, "\n\n".join(failures)
    assert 300 <= sent <= 2000, sent
    assert not re.search(r'status="5\d\d"', metrics), metrics
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors
