"""Property-based: no JSON body, however odd, makes write, append or retrieve answer a 5xx; every
refusal is problem+json naming a field, and the session written first still answers afterwards."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import as_strings, bits, running

FIELDS = ["model", "patterns", "queries", "mask", "steps", "trajectory", "output", "top_k", "samples",
          "temperature", "match_threshold", "images", "arrays", "bits"]
scalars = (st.none() | st.booleans() | st.integers(min_value=-(10 ** 30), max_value=10 ** 30)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["binary128", "shapes16", "png", "bits", "array", "0110" * 32, "data:image/png;base64,"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=6), inner, max_size=4),
                      max_leaves=24)
bodies = st.dictionaries(st.sampled_from(FIELDS), values, max_size=6) | values


def encode(body: Any) -> bytes:
    """JSON text as a client might send it: NaN and Infinity written out, any unicode escaped."""
    return json.dumps(body, allow_nan=True).encode()


@pytest.fixture(scope="module")
def loop() -> Any:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def app(checkpoint_dir: Path, loop: Any) -> Any:
    ctx = running(checkpoint_dir)
    client, _ = loop.run_until_complete(ctx.__aenter__())
    r = loop.run_until_complete(client.post("/v1/sessions", json={"model": "binary128",
                                                                   "patterns": {"bits": as_strings(bits(4))}}))
    assert r.status_code == 201, r.text
    yield client, r.json()["session_id"]
    loop.run_until_complete(ctx.__aexit__(None, None, None))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies, route=st.sampled_from(["write", "retrieve", "append"]))
def test_no_body_answers_a_5xx(app: Any, loop: Any, body: Any, route: str) -> None:
    client, sid = app
    path = {"write": "/v1/sessions", "retrieve": f"/v1/sessions/{sid}/retrieve",
            "append": f"/v1/sessions/{sid}/patterns"}[route]
    r = loop.run_until_complete(client.post(path, content=encode(body), headers={"content-type": "application/json"}))
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["detail"]
    ok = loop.run_until_complete(client.post(f"/v1/sessions/{sid}/retrieve",
                                             json={"queries": {"bits": as_strings(bits(1))}}))
    assert ok.status_code == 200, ok.text
