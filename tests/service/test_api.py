"""The HTTP API in-process (httpx over ASGI, lifespan run): shapes of answers and every refusal."""
from __future__ import annotations

import asyncio
import base64
import io
import shutil
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from service.bench import _server_timing
from service.config import Settings
from service.main import create_app
from service.state import AppState

pytestmark = pytest.mark.anyio
KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"


@asynccontextmanager
async def running(checkpoint_dir: Path, **overrides: Any) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """The app on an in-process transport; batched reads in the server's own process unless a test asks for
    model processes (each is a fresh interpreter: seconds of CPU a test would rarely use)."""
    app = create_app(Settings(checkpoint_dir=checkpoint_dir, **{"model_process": False, **overrides}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app.state.ebmm


def bits(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 128)) >= 0.5).astype(np.uint8)


def as_strings(x: np.ndarray) -> list[str]:
    return ["".join(map(str, row)) for row in x]


def png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((x * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    if field is not None:
        assert body["field"] == field and "value" in body, body
    return body


async def test_models_list_cards_and_falls_back_to_first_model(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        models = (await c.get("/v1/models")).json()["models"]
    assert [m["name"] for m in models] == ["binary128", "colour8", "shapes16"]
    first = models[0]
    assert first["default"] and first["kind"] == "binary" and first["input_shape"] == [128]
    assert first["memory_floats"] == 128 * 129 // 2 and first["default_read_steps"] == 5
    assert first["capacity_patterns"] is None                     # a quadratic memory has no slot count
    # the card's evaluation is the list of protocol cells that `ebmm evaluate --update-card` writes
    assert isinstance(first["evaluation"], list) and first["evaluation"][0]["metric"] == "error_bits"
    assert first["evaluation"][0]["memory_floats"] == 8256


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
async def test_models_say_which_reads_were_compiled_at_start_up(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir, compile_reads="binary128") as (c, _):
        models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        w = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(bits(8))}})
        r = await c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve",
                         json={"queries": {"bits": as_strings(bits(1, seed=1))}})
        assert r.status_code == 200, r.text
        after = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}["binary128"]["compiled_reads"]
    served = {(k["masked"], k["energies"]): k["reads"] for k in after}
    assert served[(False, "all")] == 1 and sum(served.values()) == 1      # the retrieve ran compiled
    kinds = models["binary128"]["compiled_reads"]
    assert sorted((k["masked"], k["energies"]) for k in kinds) == [(False, "all"), (False, "last"), (True, "all"),
                                                                   (True, "last")]
    assert {(k["batch"], k["steps"], k["status"], k["reason"], k["reads"]) for k in kinds} == {(1, 5, "used", None, 0)}
    assert models["shapes16"]["compiled_reads"] is None and models["colour8"]["compiled_reads"] is None


async def test_a_memory_without_slots_never_warns_about_capacity(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        w = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(bits(100))}})
    assert w.status_code == 201 and w.json()["warnings"] == [] and w.json()["patterns"] == 100, w.text


async def test_write_then_retrieve_bit_strings(checkpoint_dir: Path) -> None:
    x = bits(16)
    q = x.copy()
    q[:, :8] ^= 1                                                  # 8 of 128 bits flipped
    async with running(checkpoint_dir) as (c, _):
        w = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(x)}})
        assert w.status_code == 201, w.text
        s = w.json()
        assert len(s["session_id"]) >= 43 and s["patterns"] == 16 and s["input_shape"] == [128]
        assert s["memory_bytes"] == 4 * 128 * 129 // 2 and len(s["writing_losses"]) == 5
        timing = _server_timing(w.headers["server-timing"])
        assert {"body", "route", "parse", "model", "model-cpu", "store", "total"} <= timing.keys(), timing
        # total runs from the request's arrival: it holds the body, the routing and every stage after them
        assert timing["total"] >= timing["body"] + timing["route"] + timing["parse"] + timing["model"] - 0.05
        assert w.headers["location"].endswith(s["session_id"])
        r = await c.post(f"/v1/sessions/{s['session_id']}/retrieve",
                         json={"queries": {"bits": as_strings(q)}, "trajectory": True, "steps": 7})
        assert r.status_code == 200, r.text
        body = r.json()
    assert body["output"] == "bits" and body["steps"] == 7 and not body["masked"]
    restored = [res["pattern"] for res in body["results"]]
    assert sum(a == b for a, b in zip(restored, as_strings(x), strict=False)) >= 15
    first = body["results"][0]
    assert len(first["energies"]) == 8 and len(first["trajectory"]) == 8 and first["energy"] == first["energies"][-1]
    assert first["trajectory"][0] == as_strings(q)[0]


async def test_multipart_images_with_mask_inpaint(checkpoint_dir: Path) -> None:
    x = (np.random.default_rng(1).random((8, 16, 16)) >= 0.5).astype(np.float32)
    q = x.copy()
    q[:, 8:] = 0
    mask = np.zeros((16, 16), np.float32)
    mask[:8] = 1
    async with running(checkpoint_dir) as (c, _):
        w = await c.post("/v1/sessions", data={"model": "shapes16"},
                         files=[("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(x)])
        assert w.status_code == 201, w.text
        sid = w.json()["session_id"]
        r = await c.post(f"/v1/sessions/{sid}/retrieve", data={"output": "array", "steps": "10"},
                         files=[("files", (f"{i}.png", png(p), "image/png")) for i, p in enumerate(q)]
                         + [("masks", ("m.png", png(mask), "image/png"))])
        assert r.status_code == 200, r.text
        as_png = await c.post(f"/v1/sessions/{sid}/retrieve", json={
            "queries": {"images": [base64.b64encode(png(q[0])).decode()]}})
    out = np.array([res["pattern"] for res in r.json()["results"]])[:, 0]   # (B, H, W)
    assert r.json()["masked"] and np.array_equal(out[:, :8], x[:, :8])      # known pixels kept
    assert np.abs(out - x).mean() < 0.25 * np.abs(q - x).mean()
    decoded = Image.open(io.BytesIO(base64.b64decode(as_png.json()["results"][0]["pattern"])))
    assert decoded.size == (16, 16) and as_png.json()["output"] == "png"


async def test_get_and_delete_session(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        sid = (await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(2))}})).json()["session_id"]
        meta = (await c.get(f"/v1/sessions/{sid}")).json()
        assert meta["model"] == "binary128" and meta["patterns"] == 2 and meta["expires_at"] > meta["created_at"]
        assert (await c.delete(f"/v1/sessions/{sid}")).status_code == 204
        problem(await c.get(f"/v1/sessions/{sid}"), 404, "session_id")
        problem(await c.delete(f"/v1/sessions/{sid}"), 404, "session_id")


async def test_api_keys_guard_routes_and_sessions_belong_to_their_key(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir, api_keys=[KEY_A, KEY_B]) as (c, _):
        assert (await c.get("/healthz")).status_code == 200
        problem(await c.get("/v1/models"), 401, "X-API-Key")
        problem(await c.get("/v1/models", headers={"X-API-Key": "wrong-key-0123456789"}), 401, "X-API-Key")
        problem(await c.get("/metrics"), 401)
        a, b = {"X-API-Key": KEY_A}, {"Authorization": f"Bearer {KEY_B}"}
        w = await c.post("/v1/sessions", headers=a, json={"patterns": {"bits": as_strings(bits(2))}})
        sid = w.json()["session_id"]
        problem(await c.get(f"/v1/sessions/{sid}", headers=b), 404, "session_id")
        problem(await c.post(f"/v1/sessions/{sid}/retrieve", headers=b,
                             json={"queries": {"bits": as_strings(bits(1))}}), 404, "session_id")
        problem(await c.delete(f"/v1/sessions/{sid}", headers=b), 404, "session_id")
        assert (await c.get(f"/v1/sessions/{sid}", headers=a)).status_code == 200
        assert (await c.get("/metrics", headers=b)).status_code == 200


async def test_checkpoint_mismatch_is_a_conflict_and_keeps_the_session(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, state):
        sid = (await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(2))}})).json()["session_id"]
        meta, blob = await state.store.get(sid)  # type: ignore[misc]
        await state.store.put(replace(meta, checkpoint_sha256="0" * 64), blob, 60)
        problem(await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"bits": as_strings(bits(1))}}),
                409, "checkpoint_sha256")
        assert (await c.get(f"/v1/sessions/{sid}")).status_code == 200


async def test_unreachable_redis_is_503_and_health_stays_up(checkpoint_dir: Path) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with running(checkpoint_dir, store_url=f"redis://127.0.0.1:{port}/0", store_timeout_seconds=0.5) as (c, _):
        r = await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(1))}})
        body = problem(r, 503, "store")
        assert body["type"].endswith("store-unavailable") and int(r.headers["retry-after"]) >= 1
        r = await c.get("/v1/sessions/" + "x" * 43)
        problem(r, 503)
        assert int(r.headers["retry-after"]) >= 1
        assert (await c.get("/healthz")).status_code == 200
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["store_ok"] is False
        assert int(ready.headers["retry-after"]) >= 1
        assert 'ebmm_store_errors_total{op="put"} 1.0' in (await c.get("/metrics")).text


async def test_saturated_pool_answers_503_with_retry_after(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir, pool_size=1, pool_queue=0) as (c, state):
        gate = threading.Event()
        held = asyncio.ensure_future(state.runner.run(gate.wait))
        await asyncio.sleep(0)
        try:
            r = await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(1))}})
            problem(r, 503)
            assert r.headers["retry-after"] == "1"
        finally:
            gate.set()
            await held
        assert (await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(1))}})).status_code == 201


def big_png(w: int, h: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


BAD_REQUESTS = [  # (path suffix ("" = write), request kwargs, status, field)
    ("", {"json": {"patterns": {"bits": ["0" * 128] * 5}}}, 413, "patterns.bits"),
    ("", {"content": b"{" + b" " * 9000 + b"}", "headers": {"content-type": "application/json"}}, 413, "body"),
    ("", {"json": {"model": "shapes16", "patterns": {"images": [big_png(400, 300)]}}}, 413, "patterns.images[0]"),
    ("", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "content-type"),
    ("", {"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "body"),
    ("", {"json": {"model": "nope", "patterns": {"bits": ["0" * 128]}}}, 422, "model"),
    ("", {"json": {"patterns": {"bits": ["0" * 127]}}}, 422, "patterns.bits[0]"),
    ("", {"json": {"patterns": {"bits": "0" * 128}}}, 422, "patterns.bits"),
    ("", {"json": {"model": "shapes16", "patterns": {"images": ["!!!"]}}}, 422, "patterns.images[0]"),
    ("", {"json": {"model": "shapes16", "patterns": {"images": [base64.b64encode(b"GIF89a-junk").decode()]}}},
     415, "patterns.images[0]"),
    ("", {"json": {"model": "shapes16", "patterns": {"images": [big_png(16, 16), big_png(8, 16)]}}},
     422, "patterns.images[1]"),
    ("", {"data": {"model": "shapes16"}, "files": [("other", ("a.png", b"x", "image/png"))]}, 422, "other"),
    ("/retrieve", {"json": {"queries": {"bits": ["0" * 128]}, "steps": 101}}, 422, "steps"),
    ("/retrieve", {"json": {"queries": {"bits": ["0" * 128]}, "steps": 0}}, 422, "steps"),
    ("/retrieve", {"json": {"queries": {"bits": ["0" * 128]}, "output": "png"}}, 422, "output"),
    ("/retrieve", {"json": {"queries": {"arrays": [[0.5] * 64]}}}, 422, "queries.arrays[0]"),
    ("/retrieve", {"json": {"queries": {"bits": ["0" * 128] * 2}, "mask": {"bits": ["1" * 128] * 3}}},
     422, "mask.bits"),
]


@pytest.mark.parametrize("suffix, kwargs, status, field", BAD_REQUESTS)
async def test_bad_requests_are_named_and_lose_nothing(checkpoint_dir: Path, suffix: str, kwargs: dict[str, Any],
                                                       status: int, field: str) -> None:
    async with running(checkpoint_dir, max_patterns=4, max_body_bytes=8192, max_pixels=100_000) as (c, state):
        x = as_strings(bits(4))
        sid = (await c.post("/v1/sessions", json={"patterns": {"bits": x}})).json()["session_id"]
        before = await state.store.get(sid)
        path = "/v1/sessions" + (f"/{sid}{suffix}" if suffix else "")
        problem(await c.post(path, **kwargs), status, field)
        assert await state.store.get(sid) == before and await state.store.count() == 1


async def test_metrics_count_requests_by_route_and_status(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        await c.post("/v1/sessions", json={"patterns": {"bits": as_strings(bits(1))}})
        await c.get("/v1/sessions/" + "y" * 43)
        text = (await c.get("/metrics")).text
    assert 'ebmm_http_requests_total{method="POST",route="/v1/sessions",status="201"} 1.0' in text
    assert 'route="/v1/sessions/{session_id}",status="404"' in text
    assert "ebmm_sessions_stored 1.0" in text and 'ebmm_model_seconds_count{model="binary128",op="write"} 1.0' in text


async def test_openapi_documents_every_body_and_every_field_has_an_example(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        spec = (await c.get("/openapi.json")).json()
    body = spec["paths"]["/v1/sessions"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data", "application/x-npy"}
    assert "Accept: application/x-npy" in body["application/x-npy"]["schema"]["description"]
    schemas = spec["components"]["schemas"]
    for name in ("WriteRequest", "RetrieveRequest", "PatternBatch", "WriteResponse", "RetrieveResponse",
                 "SessionInfo", "ModelInfo", "Retrieved", "Readiness"):
        for prop, sub in schemas[name]["properties"].items():
            has_example = "examples" in sub or "example" in sub or "$ref" in sub or sub.get("type") == "array" \
                and "$ref" in sub.get("items", {})
            assert has_example, f"{name}.{prop} has no example"


async def test_startup_fails_clearly_when_no_checkpoint_loads(tmp_path: Path) -> None:
    from service.registry import StartupError
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text('{"card_version": 1}')
    app = create_app(Settings(checkpoint_dir=tmp_path))
    with pytest.raises(StartupError, match="no checkpoint could be loaded from .*broken.*no model.safetensors"):
        async with app.router.lifespan_context(app):
            pass


SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


def _characters_or_skip():
    from model import data
    try:
        return data.load("characters", "test")
    except data.MissingDataError:
        pytest.skip("characters data not fetched: `make test` fetches it, or run `ebmm data fetch characters`")



@pytest.mark.skipif(not (SHIPPED / "characters32" / "card.json").exists(), reason="no shipped checkpoints")
async def test_shipped_checkpoints_serve_and_restore_characters() -> None:
    """What `make run` serves: every shipped card lists, and the default model restores occluded images."""
    async with running(SHIPPED) as (c, _):
        r = await c.get("/v1/models")
        assert r.status_code == 200, r.text
        models = {m["name"]: m for m in r.json()["models"]}
        assert {"binary128", "characters32", "characters32-span16k", "photos32"} <= set(models)
        # the default: the slot memory (the span memory fails on one-colour blocks; results/explore/*-fill-blocks)
        assert models["characters32"]["default"] and models["characters32"]["evaluation"]
        assert not models["characters32-span16k"]["default"]
        assert models["characters32-span16k"]["architecture"] == "subspace_span"
        from model import data
        from model.distortions import block
        # 16 different held-out characters (the test split holds 10 jittered copies of each)
        x = data.sample_episodes(_characters_or_skip(), 16, 1, torch.Generator().manual_seed(0))[0]
        q = block(x, 16, "bits", torch.Generator().manual_seed(0)).x
        files = [("files", (f"{i}.png", png(x[i, 0].numpy()), "image/png")) for i in range(16)]
        sid = (await c.post("/v1/sessions", files=files)).json()["session_id"]
        qfiles = [("files", (f"{i}.png", png(q[i, 0].numpy()), "image/png")) for i in range(16)]
        out = (await c.post(f"/v1/sessions/{sid}/retrieve", files=qfiles, data={"output": "array"})).json()
    restored = torch.tensor([res["pattern"] for res in out["results"]])
    err = ((restored > 0.5).float() != x).flatten(1).sum(1).float().mean()
    query_err = (q != x).flatten(1).sum(1).float().mean()
    assert err < 0.1 * query_err, (float(err), float(query_err))


@pytest.mark.skipif(not (SHIPPED / "characters32" / "card.json").exists(), reason="no shipped checkpoints")
async def test_shipped_characters_keep_near_duplicates_apart_and_warn_past_capacity() -> None:
    """The 10 jittered renders of one character are 10 memories, not one blend; a write past the
    model's 64 slots is stored but says that recall will blend."""
    from model.distortions import block
    ds = _characters_or_skip()
    same = ds.images[ds.labels == ds.labels[0]][:10].float()                    # (10, 1, 32, 32)
    q = block(same, 16, "bits", torch.Generator().manual_seed(1)).x
    async with running(SHIPPED) as (c, _):
        info = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}["characters32"]
        assert info["capacity_patterns"] == 64
        arrays = {"arrays": [img[0].tolist() for img in same]}
        w = await c.post("/v1/sessions", json={"model": "characters32", "patterns": arrays})
        assert w.status_code == 201 and w.json()["warnings"] == [], w.text
        r = await c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve",
                         json={"queries": {"arrays": [img[0].tolist() for img in q]}, "output": "array"})
        restored = torch.tensor([res["pattern"] for res in r.json()["results"]]).view_as(same)
        many = ds.images[:65].float()
        w65 = await c.post("/v1/sessions", json={"model": "characters32",
                                                  "patterns": {"arrays": [img[0].tolist() for img in many]}})
    err = ((restored > 0.5).float() != same).flatten(1).sum(1).float().mean()
    query_err = (q != same).flatten(1).sum(1).float().mean()
    siblings = (same[:, None] != same[None]).flatten(2).sum(-1).float()
    assert err < 0.25 * siblings[siblings > 0].mean(), (float(err), float(query_err))
    assert w65.status_code == 201, w65.text
    assert len(w65.json()["warnings"]) == 1 and "64" in w65.json()["warnings"][0]


async def test_a_mask_of_another_size_is_resized_and_the_response_says_so(checkpoint_dir: Path) -> None:
    x = (np.random.default_rng(0).random((2, 16, 16)) >= 0.5).astype(np.float32)
    big_mask = np.ones((32, 32), dtype=np.float32)
    async with running(checkpoint_dir) as (c, _):
        files = [("files", (f"{i}.png", png(x[i]), "image/png")) for i in range(2)]
        sid = (await c.post("/v1/sessions", data={"model": "shapes16"}, files=files)).json()["session_id"]
        r = await c.post(f"/v1/sessions/{sid}/retrieve",
                         files=[("files", ("q.png", png(x[0]), "image/png")),
                                ("masks", ("m.png", png(big_mask), "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["masked"] is True
    assert any(n.startswith("mask: resized 32x32 to 16x16") for n in r.json()["conversions"]), r.json()


async def test_openapi_documents_each_error_with_its_own_problem_example(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        spec = (await c.get("/openapi.json")).json()
    responses = spec["paths"]["/v1/sessions/{session_id}/retrieve"]["post"]["responses"]
    examples = {s: r["content"]["application/problem+json"]["example"] for s, r in responses.items()
                if s[0] in "45" and "application/problem+json" in r.get("content", {})}
    assert {"404", "409", "422"} <= set(examples), sorted(examples)
    assert len({e["detail"] for e in examples.values()}) == len(examples)   # not one example relabelled
    assert all(e["status"] == int(s) and e["field"] for s, e in examples.items())


async def test_every_result_says_how_familiar_its_query_is(checkpoint_dir: Path) -> None:
    stored, never = bits(16, seed=21), bits(16, seed=22)
    q = stored.copy()
    q[:, :6] ^= 1
    async with running(checkpoint_dir) as (c, _):
        sid = (await c.post("/v1/sessions", json={"model": "binary128",
                                                  "patterns": {"bits": as_strings(stored)}})).json()["session_id"]
        r = (await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"bits": as_strings(q)}})).json()
        n = (await c.post(f"/v1/sessions/{sid}/retrieve",
                          json={"queries": {"bits": as_strings(never)}, "match_threshold": 0.9})).json()
        bad = await c.post(f"/v1/sessions/{sid}/retrieve",
                           json={"queries": {"bits": as_strings(q)}, "match_threshold": 1.5})
    # the fixture card has no calibrated threshold: match is null unless the request gives one
    assert r["match_threshold"] is None and all(x["match"] is None for x in r["results"])
    fam_stored = [x["familiarity"] for x in r["results"]]
    fam_never = [x["familiarity"] for x in n["results"]]
    assert all(0 <= f <= 1 for f in fam_stored + fam_never)
    assert min(fam_stored) > max(fam_never)
    assert n["match_threshold"] == 0.9 and not any(x["match"] for x in n["results"])
    problem(bad, 422, "match_threshold")


async def test_append_adds_patterns_and_says_how_it_appends(checkpoint_dir: Path) -> None:
    x = bits(12, seed=31)
    async with running(checkpoint_dir) as (c, _):
        sid = (await c.post("/v1/sessions", json={"model": "binary128",
                                                  "patterns": {"bits": as_strings(x[:8])}})).json()["session_id"]
        a = await c.post(f"/v1/sessions/{sid}/patterns", json={"patterns": {"bits": as_strings(x[8:])}})
        assert a.status_code == 200, a.text
        body = a.json()
        assert body["patterns"] == 12 and body["version"] == 1 and body["session_id"] == sid
        assert not any("further write steps" in w for w in body["warnings"])   # exact: from the append state
        info = (await c.get(f"/v1/sessions/{sid}")).json()
        assert info["patterns"] == 12 and info["version"] == 1
        r = (await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"bits": as_strings(x[8:])}})).json()
        assert sum(res["pattern"] == s for res, s in zip(r["results"], as_strings(x[8:]), strict=True)) >= 3
        problem(await c.post(f"/v1/sessions/{sid}/patterns",
                             json={"model": "shapes16", "patterns": {"bits": as_strings(x[:1])}}), 422, "model")
        problem(await c.post(f"/v1/sessions/{sid}/patterns",
                             json={"patterns": {"bits": ["01"]}}), 422, "patterns.bits[0]")
        problem(await c.post("/v1/sessions/" + "y" * 43 + "/patterns",
                             json={"patterns": {"bits": as_strings(x[:1])}}), 404, "session_id")
        assert (await c.get(f"/v1/sessions/{sid}")).json()["patterns"] == 12      # refusals lost nothing


async def appended_answers_as_written_at_once(c: httpx.AsyncClient, model: str, x: np.ndarray, flips: int,
                                              rtol: float) -> dict[str, Any]:
    """Write 8 of the bit strings x, append the rest, and check that queries (x with its first `flips` bits
    flipped) retrieve from it what they retrieve from all of x written at once, without the warning of an
    append by further write steps. -> the appended session's info (before the append)."""
    q = x.copy()
    q[:, :flips] = 1 - q[:, :flips]
    whole = (await c.post("/v1/sessions", json={"model": model, "patterns": {"bits": as_strings(x)}})).json()
    part = (await c.post("/v1/sessions", json={"model": model, "patterns": {"bits": as_strings(x[:8])}})).json()
    a = await c.post(f"/v1/sessions/{part['session_id']}/patterns", json={"patterns": {"bits": as_strings(x[8:])}})
    assert a.status_code == 200, a.text
    assert not any("further write steps" in w for w in a.json()["warnings"])
    ra, rw = [(await c.post(f"/v1/sessions/{s}/retrieve", json={"queries": {"bits": as_strings(q)}})).json()
              for s in (part["session_id"], whole["session_id"])]
    assert [r["pattern"] for r in ra["results"]] == [r["pattern"] for r in rw["results"]]
    assert np.allclose([r["energy"] for r in ra["results"]], [r["energy"] for r in rw["results"]], rtol=rtol)
    return part


async def test_a_quadratic_session_appended_to_answers_as_one_written_at_once(checkpoint_dir: Path) -> None:
    """8 written then 4 appended retrieve what 12 written at once do; the append state counts in
    stored_bytes, not memory_bytes; a session without the state (an older export) appends by write steps."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save
    x = bits(12, seed=32)
    async with running(checkpoint_dir) as (c, _):
        part = await appended_answers_as_written_at_once(c, "binary128", x, flips=12, rtol=1e-4)
        assert part["memory_bytes"] == 8256 * 4 and part["stored_bytes"] > part["memory_bytes"] + 8256 * 4
        # an export without the append state (as older servers wrote them) still imports, reads and appends
        from service.transfer import _header
        blob = (await c.get(f"/v1/sessions/{part['session_id']}/export")).content
        old = st_save({n: t for n, t in st_load(blob).items() if not n.startswith("append.")},
                      metadata=_header(blob)["__metadata__"])
        imp = await c.post("/v1/sessions/import", content=old, headers={"content-type": "application/octet-stream"})
        assert imp.status_code == 201, imp.text
        a2 = await c.post(f"/v1/sessions/{imp.json()['session_id']}/patterns",
                          json={"patterns": {"bits": as_strings(x[:2])}})
        assert a2.status_code == 200 and any("further write steps" in w for w in a2.json()["warnings"]), a2.text


async def test_racing_appends_never_lose_either(checkpoint_dir: Path) -> None:
    x = bits(24, seed=32)
    async with running(checkpoint_dir, pool_size=2) as (c, _):
        sid = (await c.post("/v1/sessions", json={"model": "binary128",
                                                  "patterns": {"bits": as_strings(x[:8])}})).json()["session_id"]
        answers = await asyncio.gather(*[
            c.post(f"/v1/sessions/{sid}/patterns", json={"patterns": {"bits": as_strings(x[8 + 4 * i:12 + 4 * i])}})
            for i in range(4)])
        final = (await c.get(f"/v1/sessions/{sid}")).json()
    ok = [a for a in answers if a.status_code == 200]
    assert all(a.status_code in (200, 409) for a in answers) and ok
    assert final["patterns"] == 8 + 4 * len(ok) and final["version"] == len(ok)
    assert sorted(a.json()["version"] for a in ok) == list(range(1, len(ok) + 1))


async def test_top_k_and_samples_come_with_familiarity_and_refuse_bad_counts(checkpoint_dir: Path) -> None:
    x = bits(16, seed=41)
    q = x.copy()
    q[:, :5] ^= 1
    async with running(checkpoint_dir) as (c, _):
        sid = (await c.post("/v1/sessions", json={"model": "binary128",
                                                  "patterns": {"bits": as_strings(x)}})).json()["session_id"]
        r = (await c.post(f"/v1/sessions/{sid}/retrieve", json={
            "queries": {"bits": as_strings(q[:3])}, "top_k": 3, "samples": 4, "match_threshold": 0.9})).json()
        for field, value in (("top_k", 0), ("top_k", 17), ("samples", 65), ("temperature", 0)):
            problem(await c.post(f"/v1/sessions/{sid}/retrieve",
                                 json={"queries": {"bits": as_strings(q[:1])}, field: value}), 422, field)
    for res in r["results"]:
        cands = res["candidates"]
        assert 1 <= len(cands) <= 3 and len(res["samples"]) == 4
        fams = [cand["familiarity"] for cand in cands]
        assert fams == sorted(fams, reverse=True) and len({cand["pattern"] for cand in cands}) == len(cands)
        assert all(cand["match"] == (cand["familiarity"] >= 0.9) for cand in cands + res["samples"])
    assert [res["candidates"][0]["pattern"] for res in r["results"]] == as_strings(x[:3])


@pytest.mark.skipif(not (SHIPPED / "characters32" / "card.json").exists(), reason="no shipped checkpoints")
async def test_shipped_characters_sample_both_halves_of_an_ambiguous_query() -> None:
    """A query made of the left half of one stored character and the right half of another: top-2
    names both, and samples find both (the deterministic read picks one)."""
    from model import data
    x = data.sample_episodes(_characters_or_skip(), 64, 1, torch.Generator().manual_seed(0))[0]   # (64, 1, 32, 32)
    q = torch.cat([x[0, :, :, :16], x[1, :, :, 16:]], -1)                    # (1, 32, 32)
    async with running(SHIPPED) as (c, _):
        w = await c.post("/v1/sessions", json={"model": "characters32",
                                               "patterns": {"arrays": [img[0].tolist() for img in x]}})
        r = (await c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve", json={
            "queries": {"arrays": [q[0].tolist()]}, "output": "array", "top_k": 2, "samples": 16})).json()
    res = r["results"][0]

    def nearest(pattern: list) -> tuple[int, float]:
        d = ((torch.tensor(pattern) > 0.5).float() != x[:2]).flatten(1).sum(1)
        return int(d.argmin()), float(d.min())

    tops = [nearest(cand["pattern"]) for cand in res["candidates"]]
    assert sorted(i for i, _ in tops) == [0, 1] and all(d < 12 for _, d in tops), tops
    found = [nearest(s["pattern"]) for s in res["samples"]]
    assert {i for i, d in found if d < 12} == {0, 1}, found


async def test_masked_top_k_is_ranked_on_the_whole_query(checkpoint_dir: Path) -> None:
    """A masked read keeps the known pixels; candidates are still ranked (not all scored 1)."""
    x = bits(16, seed=51)
    q = x.copy()
    q[:, 64:] = 0
    async with running(checkpoint_dir) as (c, _):
        sid = (await c.post("/v1/sessions", json={"model": "binary128",
                                                  "patterns": {"bits": as_strings(x)}})).json()["session_id"]
        r = (await c.post(f"/v1/sessions/{sid}/retrieve", json={
            "queries": {"bits": as_strings(q[:2])}, "mask": {"bits": ["1" * 64 + "0" * 64]},
            "top_k": 3, "samples": 3})).json()
    for res in r["results"]:
        fams = [cand["familiarity"] for cand in res["candidates"]]
        assert fams == sorted(fams, reverse=True) and all(f < 1.0 for f in fams)
        assert len(res["samples"]) == 3


async def test_head_on_healthz_answers_like_get(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        r = await c.head("/healthz")
    assert r.status_code == 200 and r.content == b""


@pytest.mark.skipif(not (SHIPPED / "characters32-span16k" / "card.json").exists(), reason="no shipped checkpoints")
async def test_candidates_of_a_span_memory_carry_no_match_the_card_threshold_does_not_calibrate() -> None:
    """A span memory's card threshold is on its own query score (1e-6 there); its candidates are ranked by
    their agreement with the query, another scale: their `match` is null unless the request sets a threshold."""
    async with running(SHIPPED) as (c, _):
        x = np.zeros((3, 1, 32, 32), dtype=np.float32)
        x[0, 0, 4:28, 10:14] = 1
        x[1, 0, 10:14, 4:28] = 1
        x[2, 0, 4:28, 4:8] = 1
        patterns = x.reshape(3, 32, 32).tolist()
        for model, expect_bool in (("characters32-span16k", False), ("characters32", True)):
            w = await c.post("/v1/sessions", json={"model": model, "patterns": {"arrays": patterns}})
            assert w.status_code == 201, w.text
            r = await c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve",
                             json={"queries": {"arrays": patterns[:1]}, "top_k": 2})
            assert r.status_code == 200, r.text
            cands = r.json()["results"][0]["candidates"]
            assert cands and all(isinstance(k["match"], bool) == expect_bool for k in cands), (model, cands)
            r = await c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve",
                             json={"queries": {"arrays": patterns[:1]}, "top_k": 2, "match_threshold": 0.5})
            assert all(isinstance(k["match"], bool) for k in r.json()["results"][0]["candidates"])


@pytest.mark.skipif(not (SHIPPED / "characters32-span16k" / "card.json").exists(), reason="no shipped checkpoints")
async def test_a_masked_retrieve_on_a_span_memory_fills_a_one_colour_block_and_knows_its_patterns() -> None:
    """A block of zeros hides from the span memory's own search for the damaged window; with the mask it is
    told where the unknown pixels are, restores them, and scores familiarity on that recall."""
    from model import data
    g = torch.Generator().manual_seed(3)
    both = data.sample_episodes(data.load("characters", "test"), 32, 1, g)[0].numpy()   # (32, 1, 32, 32)
    x, new = both[:16], both[16:]                                                        # stored, never stored
    q, mask = x.copy(), np.ones_like(x)
    q[:, :, 8:24, 4:20] = 0.0
    mask[:, :, 8:24, 4:20] = 0.0
    async with running(SHIPPED) as (c, _):
        w = await c.post("/v1/sessions", json={"model": "characters32-span16k",
                                               "patterns": {"arrays": x[:, 0].tolist()}})
        assert w.status_code == 201, w.text
        url = f"/v1/sessions/{w.json()['session_id']}/retrieve"
        out = {}
        for kind, extra in (("masked", {"mask": {"arrays": mask[:, 0].tolist()}}), ("unmasked", {})):
            r = await c.post(url, json={"queries": {"arrays": q[:, 0].tolist()}, "output": "array", **extra})
            assert r.status_code == 200, r.text
            out[kind] = r.json()["results"]
        fresh = new.copy()
        fresh[:, :, 8:24, 4:20] = 0.0
        r = await c.post(url, json={"queries": {"arrays": fresh[:, 0].tolist()},
                                    "mask": {"arrays": mask[:, 0].tolist()}})
        assert r.status_code == 200, r.text
        assert sum(res["match"] for res in r.json()["results"]) <= 2, r.json()["results"]
    restored = lambda res: np.array([r["pattern"] for r in res]).reshape(16, 32, 32) > 0.5   # noqa: E731
    wrong = {k: (restored(v) != (x[:, 0] > 0.5)).sum((1, 2)) for k, v in out.items()}
    assert wrong["masked"].mean() < 1.0 and wrong["unmasked"].mean() > 20, wrong
    assert sum(r["match"] for r in out["masked"]) >= 14, [r["familiarity"] for r in out["masked"]]
