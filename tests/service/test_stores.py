"""Session stores: the same behaviours from the in-process store and from Redis."""
from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis
import torch

from service.errors import StoreUnavailable
from service.memory_store import MemoryStore
from service.redis_store import RedisStore
from service.store import SessionMeta, SessionStore, pack_weights, unpack_weights

pytestmark = pytest.mark.anyio


def meta(sid: str, owner: str = "") -> SessionMeta:
    now = time.time()
    return SessionMeta(sid, "binary128", "ab" * 32, owner, [128], 3, 33024, 33100, -1.5, now, now + 60)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemoryStore(max_sessions=10, max_bytes=1 << 20)
        return
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    s = RedisStore(url, prefix, timeout=1.0)
    try:
        yield s
    finally:
        await s.close()


def test_weights_round_trip_through_safetensors_bytes() -> None:
    w = {"energy.memory_triu": torch.randn(10), "energy.memory_b": torch.randn(2, 3)}
    blob = pack_weights(w)
    assert isinstance(blob, bytes) and not blob.startswith(b"\x80")      # not a pickle
    back = unpack_weights(blob)
    assert set(back) == set(w) and all(torch.equal(back[n], w[n]) for n in w)


async def test_put_get_meta_delete(store: SessionStore) -> None:
    m = meta("session-aaaaaaaaaaaaaaaaaaaa", owner="owner1")
    await store.put(m, b"weights-bytes", ttl_seconds=60)
    assert await store.get(m.id) == (m, b"weights-bytes")
    assert await store.get_meta(m.id) == m
    assert await store.count() >= 1
    assert await store.delete(m.id) is True
    assert await store.get(m.id) is None and await store.get_meta(m.id) is None
    assert await store.delete(m.id) is False


async def test_replace_is_a_compare_and_set_on_the_version(store: SessionStore) -> None:
    from dataclasses import replace
    m = meta("session-vvvvvvvvvvvvvvvvvvvv")
    await store.put(m, b"v0", ttl_seconds=60)
    v1 = replace(m, patterns=5, version=1)
    assert await store.replace(v1, b"v1", 60, expected_version=0) is True
    assert await store.get(m.id) == (v1, b"v1")
    # a writer that read version 0 loses: nothing it sends is stored
    assert await store.replace(replace(m, patterns=9, version=1), b"stale", 60, expected_version=0) is False
    assert await store.get(m.id) == (v1, b"v1")
    await store.delete(m.id)
    assert await store.replace(replace(v1, version=2), b"gone", 60, expected_version=1) is False
    assert await store.get(m.id) is None


def test_records_without_a_version_read_as_version_zero() -> None:
    import json
    data = json.loads(meta("old-rrrrrrrrrrrrrrrrrrrrrr").to_json())
    del data["version"]
    assert SessionMeta.from_json(json.dumps(data)).version == 0


async def test_unknown_session_is_none(store: SessionStore) -> None:
    assert await store.get("nobody-bbbbbbbbbbbbbbbbbbbb") is None
    await store.ping()


async def test_redis_sets_the_expiry_with_the_record(redis_url: str, redis_prefix: str) -> None:
    s = RedisStore(redis_url, redis_prefix, timeout=1.0)
    try:
        await s.put(meta("ttl-cccccccccccccccccccccc"), b"w", ttl_seconds=30)
        client = redis.Redis.from_url(redis_url)
        ttl = client.ttl(s.key("ttl-cccccccccccccccccccccc"))
        client.close()
        assert 0 < ttl <= 30
    finally:
        await s.close()


async def test_memory_store_expires_sessions() -> None:
    now = [1000.0]
    s = MemoryStore(10, 1 << 20, clock=lambda: now[0])
    await s.put(meta("exp-dddddddddddddddddddddd"), b"w", ttl_seconds=5)
    now[0] += 4.9
    assert await s.get_meta("exp-dddddddddddddddddddddd") is not None
    now[0] += 0.2
    assert await s.get_meta("exp-dddddddddddddddddddddd") is None
    assert await s.count() == 0


async def test_memory_store_evicts_least_recently_used_by_count_and_bytes() -> None:
    s = MemoryStore(max_sessions=2, max_bytes=1 << 20)
    for sid in ("a" * 22, "b" * 22):
        await s.put(meta(sid), b"w", 60)
    await s.get("a" * 22)                       # a is now the most recently used
    await s.put(meta("c" * 22), b"w", 60)
    assert await s.get("b" * 22) is None and await s.get("a" * 22) is not None
    small = MemoryStore(max_sessions=10, max_bytes=1 << 20)
    await small.put(meta("d" * 22), b"x" * 700_000, 60)
    await small.put(meta("e" * 22), b"x" * 700_000, 60)
    assert await small.get("d" * 22) is None and small.bytes_held == 700_000


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]            # nothing listens once the socket is closed


@pytest.mark.parametrize("op", ["put", "get", "get_meta", "delete", "count", "ping"])
async def test_unreachable_redis_raises_store_unavailable(op: str) -> None:
    s = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", "ebmm-test:", timeout=0.5)
    args = {"put": (meta("f" * 22), b"w", 60), "count": (), "ping": ()}.get(op, ("f" * 22,))
    try:
        with pytest.raises(StoreUnavailable, match=op):
            await getattr(s, op)(*args)
    finally:
        await s.close()
