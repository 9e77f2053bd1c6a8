"""Sessions in Redis or a Redis Cluster: one hash per session (meta JSON + safetensors weights) with
its expiry, and sorted sets (score = expiry) that count live sessions. Every change is one Lua
script (atomic on one node; a compare-and-set on the version for appends), optionally followed on
the same connection by WAIT, so that a write is acknowledged only once replicas hold it.

Key layout. A single Redis: `{prefix}session:{id}` and one index `{prefix}sessions`. A cluster: each
session id falls in one of BUCKETS buckets, and the bucket is the key's hash tag, so a session and
its bucket's index always share a slot (no CROSSSLOT) while the buckets spread over the shards:
`{prefix}{b07}:session:{id}` and `{prefix}{b07}:sessions`.

Short socket timeouts: an unreachable Redis (or shard) gives StoreUnavailable (503) quickly, and the
clients reconnect (and re-learn the cluster's slot map) when it returns."""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import StoreUnavailable
from .store import SessionMeta, SessionStore

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
BUCKETS = 256

# KEYS: session hash, its index. ARGV: meta, weights, ttl, expires_at, id, now
_PUT = """
redis.call('HSET', KEYS[1], 'meta', ARGV[1], 'weights', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[6])
return 1
"""
# the same, only if the stored record still has version ARGV[7] (a missing version reads as 0); a replay of
# a replace that already ran (the client resends after a lost reply) finds its own record and succeeds
_REPLACE = """
local raw = redis.call('HGET', KEYS[1], 'meta')
if not raw then return 0 end
if raw == ARGV[1] then return 1 end
local version = cjson.decode(raw)['version'] or 0
if tonumber(version) ~= tonumber(ARGV[7]) then return 0 end
""" + _PUT
# KEYS: session hash, its index. ARGV: id
_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""


class RedisStore(SessionStore):
    """One Redis (redis://, rediss://, unix://), with or without replicas."""
    retries = 0        # further tries of an idempotent operation after a connection error, within the budget

    def __init__(self, url: str, prefix: str, timeout: float, label: str | None = None, min_replicas: int = 0):
        self.label = label or url
        self.prefix, self.timeout, self.min_replicas = prefix, timeout, min_replicas
        self.client: Any = self._connect(url)

    def _connect(self, url: str) -> Any:
        return aioredis.Redis.from_url(
            url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=30, decode_responses=False)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    def index_of(self, session_id: str) -> str:
        return f"{self.prefix}sessions"

    def indexes(self) -> list[str]:
        return [f"{self.prefix}sessions"]

    @asynccontextmanager
    async def _guard(self, op: str) -> AsyncIterator[None]:
        """Any Redis or socket failure, or a stall past the budget, becomes StoreUnavailable."""
        try:
            async with asyncio.timeout(4 * self.timeout):
                yield
        except (RedisError, RedisClusterException, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"session store {self.label} failed on {op}: {type(e).__name__}: {e}"
                                   ) from e

    async def _retried(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """An idempotent call, tried again after a dropped connection (a cluster client closes its
        connections while it re-learns the slot map, failing calls in flight on healthy shards)."""
        for attempt in range(self.retries + 1):
            try:
                return await call()
            except (RedisConnectionError, RedisTimeoutError):
                if attempt == self.retries:
                    raise
                await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def _script_then_wait(self, client: Any, script: str, key: str, index: str, args: tuple) -> list[Any]:
        """The script and, with min_replicas, WAIT after it in one pipeline: the same connection."""
        pipe = client.pipeline(transaction=False)
        pipe.eval(script, 2, key, index, *args)
        if self.min_replicas:
            pipe.execute_command("WAIT", self.min_replicas, int(self.timeout * 500))  # within the socket timeout
        return await pipe.execute()

    async def _change(self, op: str, script: str, key: str, index: str, *args: Any, idempotent: bool = False
                      ) -> int:
        """Run one write script and, with min_replicas, WAIT on the same connection for the replicas."""
        async def run() -> list[Any]:
            return await self._script_then_wait(self.client, script, key, index, args)
        async with self._guard(op):
            results = await (self._retried(run) if idempotent else run())
        return self._acknowledged(op, results)

    def _acknowledged(self, op: str, results: list[Any]) -> int:
        for r in results:
            if isinstance(r, Exception):
                raise StoreUnavailable(f"session store {self.label} failed on {op}: {type(r).__name__}: {r}")
        if self.min_replicas and int(results[1]) < self.min_replicas:
            raise StoreUnavailable(
                f"session store {self.label}: {op} reached {int(results[1])} of {self.min_replicas} required "
                f"replicas within {self.timeout / 2} s, so it is not acknowledged")
        return int(results[0])

    def _record(self, meta: SessionMeta, weights: bytes, ttl_seconds: int) -> tuple[Any, ...]:
        return meta.to_json(), weights, ttl_seconds, meta.expires_at, meta.id, time.time()

    async def put(self, meta: SessionMeta, weights: bytes, ttl_seconds: int) -> None:
        await self._change("put", _PUT, self.key(meta.id), self.index_of(meta.id),
                           *self._record(meta, weights, ttl_seconds), idempotent=True)

    async def replace(self, meta: SessionMeta, weights: bytes, ttl_seconds: int, expected_version: int) -> bool:
        """Store the new record only if the stored one still has `expected_version` (one script, so
        nothing can change between the check and the write); False if it changed or vanished."""
        return bool(await self._change("replace", _REPLACE, self.key(meta.id), self.index_of(meta.id),
                                       *self._record(meta, weights, ttl_seconds), expected_version))

    async def get(self, session_id: str) -> tuple[SessionMeta, bytes] | None:
        async with self._guard("get"):
            raw_meta, weights = await self._retried(
                lambda: self.client.hmget(self.key(session_id), ["meta", "weights"]))
        if raw_meta is None or weights is None:
            return None
        return SessionMeta.from_json(raw_meta), weights

    async def get_meta(self, session_id: str) -> SessionMeta | None:
        async with self._guard("get_meta"):
            raw = await self._retried(lambda: self.client.hget(self.key(session_id), "meta"))
        return None if raw is None else SessionMeta.from_json(raw)

    async def delete(self, session_id: str) -> bool:
        return bool(await self._change("delete", _DELETE, self.key(session_id), self.index_of(session_id),
                                       session_id))

    async def count(self) -> int:
        async def run() -> int:
            pipe = self.client.pipeline(transaction=False)
            now = time.time()
            for index in self.indexes():
                pipe.zcount(index, now, "+inf")
            return sum(int(n) for n in await pipe.execute())
        async with self._guard("count"):
            return await self._retried(run)

    async def ping(self) -> None:
        async with self._guard("ping"):
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """`redis+cluster://[user:password@]host:port[,host:port...]` (rediss+ for TLS) -> the startup
    nodes and the client's credentials and TLS flag."""
    scheme, rest = url.split("://", 1)
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    auth, _, hosts = netloc.rpartition("@")
    nodes = []
    for part in hosts.split(","):
        parsed = urlsplit(f"//{part}")
        if not parsed.hostname:
            raise ValueError(f"store_url {url!r}: {part!r} is not host:port")
        nodes.append((parsed.hostname, parsed.port or 6379))
    options: dict[str, Any] = {"ssl": scheme.startswith("rediss")}
    if auth:
        user, colon, password = auth.partition(":")
        options["username"] = unquote(user) or None
        options["password"] = unquote(password) if colon else None
    return nodes, options


class RedisClusterStore(RedisStore):
    """A Redis Cluster (redis+cluster://host:port,...): sessions spread over the shards by bucket."""
    retries = 2

    def _connect(self, url: str) -> Any:
        nodes, options = cluster_nodes(url)
        self._options, self._direct = options, {}
        # require_full_coverage=False: when one shard is down, keys on the others still answer
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes], require_full_coverage=False,
            socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 1), cluster_error_retry_attempts=2, decode_responses=False, **options)

    @staticmethod
    def bucket(session_id: str) -> int:
        return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=2).digest(), "big") % BUCKETS

    def key(self, session_id: str) -> str:
        return f"{self.prefix}{{b{self.bucket(session_id):02x}}}:session:{session_id}"

    def index_of(self, session_id: str) -> str:
        return f"{self.prefix}{{b{self.bucket(session_id):02x}}}:sessions"

    def indexes(self) -> list[str]:
        return [f"{self.prefix}{{b{b:02x}}}:sessions" for b in range(BUCKETS)]

    def _node_client(self, host: str, port: int) -> Any:
        """A single-node client of one primary, with no retries of its own: a change and its WAIT go to the
        node that owns the key, on one connection, and are never replayed elsewhere behind our back."""
        if (host, port) not in self._direct:
            self._direct[(host, port)] = aioredis.Redis(
                host=host, port=port, socket_timeout=self.timeout, socket_connect_timeout=self.timeout,
                retry=Retry(NoBackoff(), 0), decode_responses=False, **self._options)
        return self._direct[(host, port)]

    async def _change(self, op: str, script: str, key: str, index: str, *args: Any, idempotent: bool = False
                      ) -> int:
        """The script on the key's primary through its own client (then WAIT on the same connection); a
        moved slot or a dropped node makes the cluster client re-learn the slot map, and fails this try."""
        async def run() -> list[Any]:
            await self.client.initialize()                         # the slot map, learned on first use
            node = self.client.get_node_from_key(key)
            try:
                return await self._script_then_wait(self._node_client(node.host, node.port), script, key, index,
                                                    args)
            except ResponseError as e:
                if not str(e).startswith(("MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN")):
                    raise
                await self.client.nodes_manager.initialize()
                raise RedisConnectionError(f"{node.host}:{node.port} no longer serves this key: {e}") from e
            except (RedisConnectionError, RedisTimeoutError):
                await asyncio.shield(self._relearn())
                raise
        async with self._guard(op):
            results = await (self._retried(run) if idempotent else run())
        return self._acknowledged(op, results)

    async def _relearn(self) -> None:
        try:
            await self.client.nodes_manager.initialize()
        except (RedisError, RedisClusterException, OSError):
            pass                                                   # the next call tries again

    async def close(self) -> None:
        for direct in self._direct.values():
            await direct.aclose()
        await super().close()

    async def ping(self) -> None:
        """Ready while any primary answers: a session on a shard that is down gets its own 503."""
        async with self._guard("ping"):
            await self.client.initialize()
            primaries = self.client.get_primaries()
            answers = await asyncio.gather(*(self.client.execute_command("PING", target_nodes=n)
                                             for n in primaries), return_exceptions=True)
        if not any(a is True or a == b"PONG" for a in answers):
            raise StoreUnavailable(f"session store {self.label}: no primary answers "
                                   f"({type(answers[0]).__name__ if answers else 'no primaries'})")
