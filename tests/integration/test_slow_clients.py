"""Slow and stalled clients against a real uvicorn: a body that stalls is answered 408 and closed after
EBMM_BODY_TIMEOUT_SECONDS, and many stalled connections never stop the service answering others."""
from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(server_factory: Callable, checkpoint_dir: Any) -> Any:
    return server_factory(checkpoint_dir=checkpoint_dir, body_timeout_seconds=1.5)


def stalled_post(port: int, sent: bytes = b'{"', announced: int = 100) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: " + str(announced).encode() + b"\r\n\r\n" + sent)
    return s


def read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def test_a_stalled_body_is_answered_408_and_closed(server: Any) -> None:
    t0 = time.monotonic()
    s = stalled_post(server.port)
    reply = read_all(s)                          # returns only once the server closes the connection
    s.close()
    took = time.monotonic() - t0
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"connection: close" in head.lower()
    problem = json.loads(body)
    assert problem["status"] == 408 and problem["field"] == "body" and problem["value"] == 2
    assert 1.0 < took < 8.0, took


def test_many_stalled_connections_do_not_stop_the_service(server: Any) -> None:
    held = [stalled_post(server.port) for _ in range(200)]
    try:
        t0 = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=5) as c:
            for _ in range(10):
                assert c.get("/healthz").status_code == 200
            w = c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": ["01" * 64]}})
            assert w.status_code == 201, w.text
        assert time.monotonic() - t0 < 5.0
        time.sleep(2.5)                         # past the body timeout: every stalled one has been cut
        cut = 0
        for s in held:
            s.settimeout(5)
            if read_all(s).startswith(b"HTTP/1.1 408"):
                cut += 1
        assert cut == len(held)
    finally:
        for s in held:
            s.close()
