"""A bounded schemathesis run: cases generated from the service's own OpenAPI document, for every
operation, valid (positive) and invalid (negative), against unknown session ids and against a real
session, sent to a real server (fixture checkpoints, in-process store). No case may answer 5xx.
Bounded by EBMM_SCHEMATHESIS_EXAMPLES per operation and mode (default 100: about 2,600 cases, 30 s)."""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = pytest.mark.integration
EXAMPLES = int(os.environ.get("EBMM_SCHEMATHESIS_EXAMPLES", "100"))


def test_no_generated_request_answers_5xx(server_factory: Callable, checkpoint_dir: Path) -> None:
    server = server_factory(checkpoint_dir=checkpoint_dir, default_model="binary128", max_patterns=32,
                            max_read_steps=20, pool_queue=64)
    write = httpx.post(server.url + "/v1/sessions", json={"model": "binary128", "patterns": {"bits": ["01" * 64]}})
    assert write.status_code == 201, write.text
    session = write.json()["session_id"]
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    statuses: Counter[str] = Counter()
    for operation in operations:
        ids = [None, session] if "{session_id}" in operation.path else [None]
        for mode in GenerationMode:
            for sid in ids:
                fixed = {"session_id": sid} if sid else None
                if operation.method.upper() == "DELETE" and sid:
                    continue                        # keep the real session for the other operations

                @given(case=operation.as_strategy(mode, path_parameters=fixed))
                @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                          suppress_health_check=list(HealthCheck))
                def call(case: schemathesis.Case) -> None:
                    response = case.call(timeout=60)
                    statuses[f"{case.operation.label} {response.status_code}"] += 1
                    assert response.status_code < 500, (
                        f"{case.operation.label} -> {response.status_code}: {response.text[:500]}\n"
                        f"{case.as_curl_command()}")
                try:
                    call()
                except Unsatisfiable:
                    if mode is GenerationMode.POSITIVE:
                        raise
                    statuses[f"{operation.label} has nothing to make invalid"] += 0
    print(sum(statuses.values()), sorted(statuses.items()))
    assert sum(statuses.values()) >= 10 * len(operations)
    assert any(k.startswith("POST /v1/sessions/{session_id}/retrieve 200") for k in statuses), statuses
