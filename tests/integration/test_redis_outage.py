"""Redis goes away and comes back: clear 503s meanwhile, the process stays up, then it recovers.
Uses a throwaway redis-server of its own, never the shared one."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration
WRITE = {"model": "binary128", "patterns": {"bits": ["0110" * 32]}}


def test_store_outage_gives_503_then_recovers(server_factory: Callable, throwaway_redis: Any,
                                              checkpoint_dir: Path) -> None:
    server = server_factory(store_url=throwaway_redis.url, store_prefix="ebmm-outage:",
                            checkpoint_dir=checkpoint_dir, store_timeout_seconds=0.5)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        sid = c.post("/v1/sessions", json=WRITE).json()["session_id"]
        throwaway_redis.stop()
        for r in (c.post("/v1/sessions", json=WRITE), c.get(f"/v1/sessions/{sid}"),
                  c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"bits": ["0" * 128]}})):
            assert r.status_code == 503, r.text
            assert r.json()["type"].endswith("store-unavailable") and "ebmm-outage" not in r.text
        assert c.get("/readyz").status_code == 503 and c.get("/healthz").status_code == 200
        throwaway_redis.start()                                    # same port, empty (nothing on disk)
        deadline = time.monotonic() + 15
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "service did not recover after Redis came back"
            time.sleep(0.2)
        w = c.post("/v1/sessions", json=WRITE)
        assert w.status_code == 201, w.text
        r = c.post(f"/v1/sessions/{w.json()['session_id']}/retrieve", json={"queries": {"bits": ["0" * 128]}})
        assert r.status_code == 200, r.text
        assert 'ebmm_store_errors_total{op="put"}' in c.get("/metrics").text
    assert server.proc.poll() is None
