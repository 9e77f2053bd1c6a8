"""The probe's classes of hostile JSON bodies: each answers a 422 naming the problem, never a 500, and
loses nothing already stored (service/bodies.py parse_json, service/errors.py _encodable)."""
from __future__ import annotations

from pathlib import Path

import pytest

from test_api import as_strings, bits, problem, running

pytestmark = pytest.mark.anyio

HOSTILE = {
    "nan": b'{"model": NaN, "patterns": {"bits": ["0"]}}',
    "infinity": b'{"patterns": {"bits": ["0"]}, "steps": Infinity}',
    "minus-infinity": b'{"queries": {"arrays": [[[-Infinity]]]}}',
    "overflowing float": b'{"queries": {"bits": ["0"]}, "steps": 1e999}',
    "deep nesting": b"[" * 5000,
    "deep valid nesting": b'{"queries": {"arrays": ' + b"[" * 900 + b"]" * 900 + b"}}",
    "integer past the digit limit": b'{"model": ' + b"1" * 5000 + b"}",
    "lone surrogate value": b'{"model": "\\ud800", "patterns": {"bits": ["0"]}}',
    "lone surrogate key": b'{"\\udfff": 1}',
    "huge integer in arrays": (b'{"patterns": {"arrays": [[[' + b"9" * 400 + b']]]}, "queries": {"arrays": [[['
                               + b"9" * 400 + b"]]]}}"),
    "huge integer option": b'{"queries": {"bits": ["0"]}, "top_k": ' + b"9" * 400 + b"}",
    "not utf-8": b'{"model": "\xff\xfe"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_json_is_a_422_and_keeps_sessions(checkpoint_dir: Path, name: str) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(bits(4))}})
        assert r.status_code == 201, r.text
        sid = r.json()["session_id"]
        for path in ("/v1/sessions", f"/v1/sessions/{sid}/retrieve", f"/v1/sessions/{sid}/patterns"):
            r = await c.post(path, content=HOSTILE[name], headers={"content-type": "application/json"})
            body = problem(r, 422)
            assert body["field"], body
            assert "connection" not in r.headers or r.headers["connection"] != "close"
        r = await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"bits": as_strings(bits(4))}})
        assert r.status_code == 200, r.text


async def test_non_finite_values_are_named_not_echoed_raw(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.post("/v1/sessions", content=HOSTILE["overflowing float"].replace(b"queries", b"patterns"),
                         headers={"content-type": "application/json"})
        body = problem(r, 422, "steps")
        assert body["value"] == "inf", body
