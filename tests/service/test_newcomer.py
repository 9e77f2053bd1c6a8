"""What a newcomer met first: input conventions said in `warnings`, Allow headers, the urlencoded-form
refusal, /metrics labels for the docs, 422s documented as problem+json, the documented 422 example."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_api import as_strings, bits, png, problem, running

pytestmark = pytest.mark.anyio


def glyphs(n: int, white_on_black: bool, size: int = 16) -> list[tuple[str, tuple[str, bytes, str]]]:
    x = np.zeros((n, size, size), np.float32)
    for i in range(n):
        x[i, 2 + i % 6: 12, 4 + i % 5] = 1.0                        # a stroke
        x[i, 8, 2: 14 - i % 4] = 1.0
    x = x if white_on_black else 1.0 - x
    return [("files", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(x)]


async def test_dark_ink_on_light_is_warned_as_likely_inverted(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        ok = await c.post("/v1/sessions", data={"model": "shapes16"}, files=glyphs(4, True))
        assert ok.status_code == 201 and ok.json()["warnings"] == [], ok.text
        r = await c.post("/v1/sessions", data={"model": "shapes16"}, files=glyphs(4, False))
        assert r.status_code == 201, r.text
        (w,) = r.json()["warnings"]
        assert "4 of 4 images are mostly white" in w and "white strokes on black" in w
        q = await c.post(f"/v1/sessions/{ok.json()['session_id']}/retrieve", files=glyphs(1, False))
        assert q.status_code == 200 and "mostly white" in q.json()["warnings"][0], q.text


async def test_a_resize_is_a_warning_not_only_a_conversion(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.post("/v1/sessions", data={"model": "shapes16"}, files=glyphs(2, True, size=32))
        assert r.status_code == 201, r.text
        assert "resized 32x32 to 16x16 (bilinear)" in r.json()["conversions"]
        assert any("resized 32x32 to 16x16" in w and "16x16 pixels" in w for w in r.json()["warnings"])


async def test_options_and_wrong_methods_list_every_method_of_the_path(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.options("/v1/sessions/some-session-id")
        body = problem(r, 405)
        assert r.headers["allow"] == "GET, DELETE" and "GET, DELETE" in body["detail"]
        r = await c.put("/v1/sessions")
        problem(r, 405)
        assert r.headers["allow"] == "POST"


async def test_a_form_without_files_is_told_to_send_multipart(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.post("/v1/sessions", data={"model": "shapes16"})     # httpx: urlencoded
        body = problem(r, 415, "content-type")
        assert "multipart/form-data" in body["detail"] and "files" in body["detail"]


async def test_docs_and_schema_have_their_own_metrics_labels(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        for path in ("/docs", "/openapi.json", "/redoc", "/", "/ui/app.js", "/docs-assets/swagger-ui.css"):
            assert (await c.get(path)).status_code == 200, path
        text = (await c.get("/metrics")).text
        for label in ("/docs", "/openapi.json", "/redoc", "/", "/ui", "/docs-assets"):
            assert f'route="{label}",status="200"' in text.replace('method="GET",', ""), label
        assert 'route="unmatched",status="200"' not in text.replace('method="GET",', "")


async def test_every_documented_422_is_problem_json_and_matches_the_server(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        schema = (await c.get("/openapi.json")).json()
        for path, ops in schema["paths"].items():
            for method, op in ops.items():
                if "422" in op.get("responses", {}):
                    assert list(op["responses"]["422"]["content"]) == ["application/problem+json"], (path, method)
        assert "HTTPValidationError" not in schema["components"]["schemas"]
        example = schema["paths"]["/v1/sessions"]["post"]["responses"]["422"]["content"][
            "application/problem+json"]["example"]
        patterns = as_strings(bits(3))
        patterns[2] = patterns[2][:127]
        r = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": patterns}})
        assert problem(r, 422, "patterns.bits[2]")["detail"] == example["detail"]


def test_a_key_in_the_query_string_never_reaches_the_access_log() -> None:
    import logging

    from service.logs import RedactSecrets, install
    install()                                        # what the app's lifespan does before serving
    assert any(isinstance(f, RedactSecrets) for f in logging.getLogger("uvicorn.access").filters)
    rec = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                            ("127.0.0.1:5", "GET", "/v1/models?api_key=sekrit-123&x=1", "1.1", 401), None)
    RedactSecrets().filter(rec)
    line = rec.getMessage()
    assert "sekrit" not in line and "api_key=<redacted>&x=1" in line
