"""Session stores: the same behaviours from the in-process store, from Redis and from a Redis Cluster."""
from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
import redis
import torch

from service.errors import StoreUnavailable
from service.memory_store import MemoryStore
from service.redis_store import BUCKETS, RedisClusterStore, RedisStore, cluster_nodes
from service.store import SessionMeta, SessionStore, pack_weights, unpack_weights

pytestmark = pytest.mark.anyio


def meta(sid: str, owner: str = "") -> SessionMeta:
    now = time.time()
    return SessionMeta(sid, "binary128", "ab" * 32, owner, [128], 3, 33024, 33100, -1.5, now, now + 60)


@pytest.fixture(params=["memory", "redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield MemoryStore(max_sessions=10, max_bytes=1 << 20)
        return
    if request.param == "cluster":       # every write acknowledged by its shard's replica
        s: RedisStore = RedisClusterStore(request.getfixturevalue("redis_cluster").url, "ebmm-test:",
                                          timeout=1.0, min_replicas=1)
    else:
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


@pytest.mark.parametrize("kind", ["redis", "cluster"])
@pytest.mark.parametrize("op", ["put", "get", "get_meta", "delete", "count", "ping"])
async def test_unreachable_redis_raises_store_unavailable(op: str, kind: str) -> None:
    if kind == "cluster":
        s: RedisStore = RedisClusterStore(f"redis+cluster://127.0.0.1:{closed_port()}", "ebmm-test:", timeout=0.5)
    else:
        s = RedisStore(f"redis://127.0.0.1:{closed_port()}/0", "ebmm-test:", timeout=0.5)
    args = {"put": (meta("f" * 22), b"w", 60), "count": (), "ping": ()}.get(op, ("f" * 22,))
    try:
        with pytest.raises(StoreUnavailable, match=op):
            await getattr(s, op)(*args)
    finally:
        await s.close()


async def test_cluster_keys_of_a_session_share_a_slot_and_sessions_spread_over_the_shards(
        redis_cluster: object) -> None:
    from redis.cluster import key_slot
    s = RedisClusterStore(redis_cluster.url, "ebmm-test:", timeout=1.0)
    try:
        ids = [f"spread-{i:03d}" + "s" * 14 for i in range(90)]
        for sid in ids:
            assert key_slot(s.key(sid).encode()) == key_slot(s.index_of(sid).encode())
            await s.put(meta(sid), b"w", 60)
        await s.client.initialize()
        shards = {s.client.get_node_from_key(s.key(sid)).port for sid in ids}
        assert shards == set(redis_cluster.primary_ports())           # all three primaries hold some
        assert len({s.bucket(sid) for sid in ids}) > 50 and max(s.bucket(sid) for sid in ids) < BUCKETS
        assert await s.count() >= 90
        for sid in ids:
            assert await s.delete(sid)
    finally:
        await s.close()


async def test_a_write_the_replicas_do_not_confirm_is_not_acknowledged(redis_url: str, redis_prefix: str,
                                                                      tmp_path: object) -> None:
    """min_replicas on a Redis without replicas: a change is refused with StoreUnavailable; with a replica
    attached it is acknowledged; with that replica frozen (still connected) it is refused again: the write
    waits for the replica's acknowledgement of it."""
    from conftest import RedisProcess
    primary = RedisProcess(tmp_path).start()
    replica = RedisProcess(tmp_path)
    s = RedisStore(primary.url, redis_prefix, timeout=0.5, min_replicas=1)
    try:
        with pytest.raises(StoreUnavailable, match="0 of 1 required replicas"):
            await s.put(meta("unrepl" + "u" * 16), b"w", 60)
        replica.start()
        client = redis.Redis(port=replica.port)
        client.replicaof("127.0.0.1", primary.port)
        deadline = time.monotonic() + 10
        primary_client = redis.Redis(port=primary.port)
        # synced on both sides: the replica's link is up and the primary counts it online (it acknowledges)
        while (client.info("replication").get("master_link_status") != "up"
               or "online" not in str(primary_client.info("replication").get("slave0", ""))):
            assert time.monotonic() < deadline, "replica did not sync"
            time.sleep(0.05)
        client.close()
        primary_client.close()
        await s.put(meta("repl" + "r" * 18), b"w", 60)
        assert (await s.get("repl" + "r" * 18))[1] == b"w"
        from dataclasses import replace
        v1 = replace(meta("repl" + "r" * 18), version=1)
        assert await s.replace(v1, b"w1", 60, expected_version=0) is True
        # a replica that stops acknowledging (frozen, still connected): the write is not acknowledged
        import signal
        replica.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(StoreUnavailable, match="0 of 1 required replicas"):
                await s.put(meta("frozen" + "f" * 16), b"w", 60)
            with pytest.raises(StoreUnavailable, match="0 of 1 required replicas"):
                await s.replace(replace(v1, version=2), b"w2", 60, expected_version=1)
        finally:
            replica.proc.send_signal(signal.SIGCONT)
    finally:
        await s.close()
        replica.stop()
        primary.stop()


def test_cluster_url_parses_nodes_credentials_and_tls() -> None:
    assert cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2") == (
        [("10.0.0.1", 7000), ("10.0.0.2", 6379)], {"ssl": False})
    assert cluster_nodes("rediss+cluster://app:p%40ss@h1:7000,h2:7001/0") == (
        [("h1", 7000), ("h2", 7001)], {"ssl": True, "username": "app", "password": "p@ss"})
    with pytest.raises(ValueError, match="not host:port"):
        cluster_nodes("redis+cluster://h1:7000,,h2:7001")
