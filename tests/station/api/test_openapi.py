"""Schemathesis over the published OpenAPI document: no 5xx, and every response as the document says.

One test walks every operation (except the never-ending stream) with hypothesis, 25 examples each, as a
quality engineer, against a running station on a real SQLite store.
"""

from __future__ import annotations

import warnings
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_5xx_and_responses_match_the_schema(app_builder: Any) -> None:
    app, store, *_rest, secrets = app_builder(max_upload_bytes=100_000)
    headers = {"Authorization": f"Bearer {secrets['quality']}"}
    with TestClient(app) as client:  # runs the lifespan: the station runs while schemathesis calls
        client.post("/api/v1/batches", json={"batch_id": "LOT-1"}, headers=headers)
        schema = schemathesis.openapi.from_asgi("/api/v1/openapi.json", app).exclude(path="/api/v1/stream")
        operations = [r.ok() for r in schema.get_all_operations()]
        calls: list[int] = []
        assert len(operations) >= 18
        for op in operations:

            @given(case=op.as_strategy())
            @settings(
                max_examples=25,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                calls.append(case.call_and_validate(headers=headers, checks=CHECKS).status_code)

            try:
                run()
            except Exception as e:
                raise AssertionError(f"{op.method.upper()} {op.path}: {e}") from e
        # the walk reached past the validation layer: successes and domain 4xx both happened
        assert len(calls) >= 10 * len(operations)
        assert {200, 201, 202} & set(calls) and {404, 409} & set(calls), sorted(set(calls))
    store.close()
