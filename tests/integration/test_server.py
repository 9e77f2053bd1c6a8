"""A real `ebmm serve` process against the real Redis: the round trip a user relies on, every
refusal over HTTP, a restart, and a second process reading the first one's sessions."""
from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from PIL import Image

pytestmark = pytest.mark.integration
KEY_A, KEY_B = "integration-key-a-0123456789", "integration-key-b-0123456789"
A, B = {"X-API-Key": KEY_A}, {"X-API-Key": KEY_B}
N_IMAGES = 64


def png(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((x * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def held_out_images(n: int = N_IMAGES, seed: int = 123) -> np.ndarray:
    """Random binary 16x16 images drawn at 32x32 (2x2 blocks): the server resizes them back to 16x16."""
    x = (np.random.default_rng(seed).random((n, 16, 16)) >= 0.5).astype(np.float32)
    return x.repeat(2, axis=1).repeat(2, axis=2)                  # (N, 32, 32)


def files(images: np.ndarray, name: str = "files") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, (f"{i}.png", png(im), "image/png")) for i, im in enumerate(images)]


@pytest.fixture(scope="module")
def settings(redis_url: str, module_prefix: str, checkpoint_dir: Path) -> dict[str, Any]:
    return {"store_url": redis_url, "store_prefix": module_prefix, "checkpoint_dir": checkpoint_dir,
            "default_model": "shapes16", "api_keys": f"{KEY_A},{KEY_B}", "max_patterns": 100,
            "max_body_bytes": 2_000_000, "max_pixels": 1_000_000, "max_read_steps": 50}


@pytest.fixture(scope="module")
def server(server_factory: Callable, settings: dict[str, Any]) -> Any:
    return server_factory(**settings)


@pytest.fixture(scope="module")
def stored(server: Any) -> dict[str, Any]:
    """64 held-out images written through multipart; the truth, the session and its answer."""
    truth = held_out_images()
    with httpx.Client(base_url=server.url, headers=A, timeout=60) as c:
        w = c.post("/v1/sessions", files=files(truth))
        assert w.status_code == 201, w.text
    return {"truth": truth[:, ::2, ::2], "session": w.json()}


def retrieve_occluded(url: str, session_id: str, truth: np.ndarray, headers: dict[str, str]) -> httpx.Response:
    q = truth.copy()
    q[:, 8:, :] = 0.0                                              # bottom half occluded
    mask = np.zeros((16, 16), np.float32)
    mask[:8] = 1.0
    big = lambda a: a.repeat(2, axis=-2).repeat(2, axis=-1)
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        return c.post(f"/v1/sessions/{session_id}/retrieve", data={"output": "array", "steps": "30"},
                      files=files(big(q)) + files(big(mask)[None], "masks"))


def test_write_64_images_and_restore_them_from_occluded_queries(server: Any, stored: dict[str, Any]) -> None:
    s = stored["session"]
    assert s["patterns"] == N_IMAGES and s["input_shape"] == [1, 16, 16] and s["model"] == "shapes16"
    assert "resized 32x32 to 16x16 (bilinear)" in s["conversions"] and "binarised at 0.5" in s["conversions"]
    r = retrieve_occluded(server.url, s["session_id"], stored["truth"], A)
    assert r.status_code == 200, r.text
    out = np.array([res["pattern"] for res in r.json()["results"]])[:, 0]     # (N, 16, 16)
    truth = stored["truth"]
    query_err = np.abs(np.where(np.arange(16)[:, None] >= 8, 0.0, truth) - truth).mean()
    restored_err = np.abs(out - truth).mean()
    assert restored_err < 0.2 * query_err, (restored_err, query_err)       # measured: ~0.02 vs 0.25
    energies = np.array([res["energies"] for res in r.json()["results"]])
    assert (energies[:, -1] < energies[:, 0]).all()                # reading descends the energy


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _image(w: int, h: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("L", (w, h)).save(buf, fmt)
    return buf.getvalue()


BAD = [  # (who, route, request kwargs, status, field)
    ("none", "write", {"json": {"patterns": {"bits": ["0" * 128]}}}, 401, "X-API-Key"),
    ("B", "retrieve", {"json": {"queries": {"arrays": [[[0.0] * 16] * 16]}}}, 404, "session_id"),
    ("A", "unknown", {"json": {"queries": {"arrays": [[[0.0] * 16] * 16]}}}, 404, "session_id"),
    ("A", "write", {"files": [("files", ("a.png", _image(16, 16), "image/png"))] * 101}, 413, "files"),
    ("A", "write", {"content": b"[" + b"0," * 1_100_000 + b"0]",
                    "headers": {"content-type": "application/json"}}, 413, "body"),
    ("A", "write", {"json": {"patterns": {"images": [_b64(_image(2000, 1000))]}}}, 413, "patterns.images[0]"),
    ("A", "write", {"content": b"x", "headers": {"content-type": "application/xml"}}, 415, "content-type"),
    ("A", "write", {"files": [("files", ("a.png", b"\x89PNG garbage", "image/png"))]}, 415, "files[0]"),
    ("A", "write", {"json": {"patterns": {"images": [_b64(_image(16, 16, "TIFF"))]}}}, 415, "patterns.images[0]"),
    ("A", "write", {"files": [("files", ("a.png", _image(16, 16), "image/png")),
                              ("files", ("b.png", _image(20, 16), "image/png"))]}, 422, "files[1]"),
    ("A", "write", {"json": {"patterns": {"arrays": [[[0.0] * 15] * 16]}}}, 422, "patterns.arrays[0]"),
    ("A", "write", {"json": {"patterns": {"images": ["%%%"]}}}, 422, "patterns.images[0]"),
    ("A", "write", {"json": {"model": "binary128", "patterns": {"bits": ["01"]}}}, 422, "patterns.bits[0]"),
    ("A", "retrieve", {"json": {"queries": {"arrays": [[[0.0] * 16] * 16]}, "steps": 51}}, 422, "steps"),
    ("A", "retrieve", {"json": {"queries": {"arrays": [[[0.0] * 16] * 16]}, "output": "bits",
                                "mask": {"arrays": [[[1.0] * 16] * 16]}, "steps": "x"}}, 422, "steps"),
]


@pytest.mark.parametrize("who, route, kwargs, status, field", BAD)
def test_refusals_name_the_field_and_lose_nothing(server: Any, stored: dict[str, Any], who: str, route: str,
                                                 kwargs: dict[str, Any], status: int, field: str) -> None:
    sid = stored["session"]["session_id"]
    path = {"write": "/v1/sessions", "retrieve": f"/v1/sessions/{sid}/retrieve",
            "unknown": "/v1/sessions/" + "u" * 43 + "/retrieve"}[route]
    headers = {"none": {}, "A": A, "B": B}[who]
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as c:
        before = c.get(f"/v1/sessions/{sid}", headers=A).json()
        r = c.post(path, **kwargs)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["field"] == field and r.json()["detail"]
        assert c.get(f"/v1/sessions/{sid}", headers=A).json() == before


def test_expired_session_is_404_and_checkpoint_mismatch_is_409(server: Any, redis_url: str,
                                                               settings: dict[str, Any]) -> None:
    client = redis.Redis.from_url(redis_url)
    key = lambda sid: f"{settings['store_prefix']}session:{sid}"
    with httpx.Client(base_url=server.url, headers=A, timeout=60) as c:
        body = {"model": "binary128", "patterns": {"bits": ["01" * 64]}}
        gone, stale = (c.post("/v1/sessions", json=body).json()["session_id"] for _ in range(2))
        client.pexpire(key(gone), 1)
        time.sleep(0.05)
        r = c.get(f"/v1/sessions/{gone}")
        assert r.status_code == 404 and r.json()["field"] == "session_id"
        meta = json.loads(client.hget(key(stale), "meta"))
        client.hset(key(stale), "meta", json.dumps({**meta, "checkpoint_sha256": "0" * 64}))
        r = c.post(f"/v1/sessions/{stale}/retrieve", json={"queries": {"bits": ["01" * 64]}})
        assert r.status_code == 409 and r.json()["field"] == "checkpoint_sha256"
    client.close()


def test_sessions_survive_a_restart_and_are_shared_between_processes(
        server_factory: Callable, settings: dict[str, Any], checkpoint_dir: Path) -> None:
    truth = held_out_images(8, seed=7)
    first = server_factory(**settings)
    with httpx.Client(base_url=first.url, headers=A, timeout=60) as c:
        sid = c.post("/v1/sessions", files=files(truth)).json()["session_id"]
    before = retrieve_occluded(first.url, sid, truth[:, ::2, ::2], A).json()["results"]
    other = server_factory(**settings)                             # a second process, same Redis
    shared = retrieve_occluded(other.url, sid, truth[:, ::2, ::2], A).json()["results"]
    first.stop()
    first.start()                                                  # the same server, restarted
    after = retrieve_occluded(first.url, sid, truth[:, ::2, ::2], A).json()["results"]
    assert before == shared == after


@pytest.mark.parametrize("client", ["httpx", "raw"])
def test_bench_service_drives_a_real_server_and_leaves_nothing_behind(server: Any, redis_url: str,
                                                                       module_prefix: str, tmp_path: Path,
                                                                       client: str) -> None:
    """`ebmm bench-service` with either client: every request answered, the stages timed, and the
    sessions it wrote deleted again."""
    import argparse

    from service.bench import run_bench
    r = redis.Redis.from_url(redis_url)
    keys = lambda: sorted(r.scan_iter(match=module_prefix + "*", count=500))  # noqa: E731
    before = keys()
    args = argparse.Namespace(url=server.url, model="shapes16", patterns=4, requests=6, payload="npy",
                              concurrency="1,2", sessions=2, skip_write=False, floor=True, api_key=KEY_A,
                              client=client, out=str(tmp_path / "b.json"), md=str(tmp_path / "b.md"), note="test")
    assert run_bench(args) == 0
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["client"] == client and [run["concurrency"] for run in res["runs"]] == [1, 2]
    for run in res["runs"]:
        assert run["write"]["statuses"] == {"201": 6}, run["write"]
        assert run["retrieve"]["statuses"] == {"200": 6} and run["healthz"]["statuses"] == {"200": 6}, run
        st = run["retrieve"]["median_ms_by_stage"]
        assert st["model"] > 0 and st["route"] >= 0 and st["body"] >= 0, st
        # the server's total covers its stages from the request's arrival; the client waited at least that
        assert st["total"] >= st["model"] + st["parse"] and st["client"] >= st["total"], st
        assert run["retrieve"]["after_server_ms_median"] >= 0
    # one client's reads are each a batch of one, read off the server's /metrics
    assert res["runs"][0]["retrieve"]["reads_per_batched_call"] == 1.0, res["runs"][0]["retrieve"]
    md = (tmp_path / "b.md").read_text()
    assert "| retrieve | 2 |" in md and "## Where the time goes" in md
    assert keys() == before
    r.close()


def test_a_real_server_reads_through_its_model_processes_and_outlives_one(server_factory: Callable,
                                                                          settings: dict[str, Any]) -> None:
    """`ebmm serve` with model processes: concurrent retrieves of many sessions are answered as without
    them and batched in a model process; a killed one costs no read and is replaced."""
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    def ready(url: str) -> dict[str, Any]:
        deadline = time.monotonic() + 120
        while True:
            procs = httpx.get(url + "/readyz", timeout=5).json()["model_processes"]
            if procs is None or procs["up"] == procs["size"]:
                return procs
            assert time.monotonic() < deadline, procs
            time.sleep(0.1)

    bits = np.random.default_rng(5).random((12, 4, 128)) >= 0.5
    answers = {}
    for use in ("false", "true"):
        srv = server_factory(**{**settings, "model_process": use})
        procs = ready(srv.url)
        assert procs == (None if use == "false" else {"up": 2, "size": 2, "failures": 0})
        with httpx.Client(base_url=srv.url, headers=A, timeout=60) as c:
            ids = [c.post("/v1/sessions", json={"model": "binary128", "patterns": {
                "bits": ["".join("1" if v else "0" for v in row) for row in b]}}).json()["session_id"] for b in bits]

            def read(i: int, c: httpx.Client = c, ids: list[str] = ids) -> Any:
                q = "".join("1" if v else "0" for v in bits[i][0])
                q = ("0" if q[0] == "1" else "1") + q[1:]
                r = c.post(f"/v1/sessions/{ids[i]}/retrieve", json={"queries": {"bits": [q]}})
                assert r.status_code == 200, r.text
                return r.json()["results"][0]["pattern"]
            with ThreadPoolExecutor(8) as pool:
                answers[use] = [list(pool.map(read, range(len(ids)))) for _ in range(3)]
            if use == "true":
                metrics = c.get("/metrics").text
                assert 'ebmm_read_batches_total{model="binary128",place="process"}' in metrics
                found = os.popen(f"pgrep -P {srv.proc.pid} -f service.model_process").read()
                children = [int(p) for p in found.split()]
                assert len(children) == 2
                os.kill(children[0], signal.SIGKILL)
                with ThreadPoolExecutor(8) as pool:                 # answered while one is replaced
                    again = list(pool.map(read, range(len(ids))))
                assert again == answers["false"][0]
                procs = ready(srv.url)
                assert procs == {"up": 2, "size": 2, "failures": 1}     # found dead, replaced
        srv.stop()
    assert answers["true"] == answers["false"]


def test_the_access_log_can_be_turned_off(server_factory: Callable, checkpoint_dir: Path) -> None:
    for on in (True, False):
        srv = server_factory(checkpoint_dir=checkpoint_dir, log_level="info", access_log=str(on).lower())
        assert httpx.get(srv.url + "/v1/models", timeout=10).status_code == 200
        srv.stop()
        assert ('"GET /v1/models HTTP/1.1" 200' in srv.log.read_text()) == on
