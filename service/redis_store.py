"""Sessions in Redis: one hash per session (meta JSON + safetensors weights), set with its expiry in
one MULTI/EXEC, plus a sorted set (score = expiry) to count live sessions. Short socket timeouts:
an unreachable Redis gives StoreUnavailable (503) quickly, and the pool reconnects when it returns."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from .errors import StoreUnavailable
from .store import SessionMeta, SessionStore


class RedisStore(SessionStore):
    def __init__(self, url: str, prefix: str, timeout: float, label: str | None = None):
        self.label = label or url
        self.prefix, self.timeout = prefix, timeout
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1), health_check_interval=30, decode_responses=False)

    def key(self, session_id: str) -> str:
        return f"{self.prefix}session:{session_id}"

    @property
    def index(self) -> str:
        return f"{self.prefix}sessions"

    @asynccontextmanager
    async def _guard(self, op: str) -> AsyncIterator[None]:
        """Any Redis or socket failure, or a stall past the budget, becomes StoreUnavailable."""
        try:
            async with asyncio.timeout(4 * self.timeout):
                yield
        except (RedisError, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"session store {self.label} failed on {op}: {type(e).__name__}: {e}"
                                   ) from e

    async def put(self, meta: SessionMeta, weights: bytes, ttl_seconds: int) -> None:
        async with self._guard("put"), self.client.pipeline(transaction=True) as pipe:
            pipe.hset(self.key(meta.id), mapping={"meta": meta.to_json(), "weights": weights})
            pipe.expire(self.key(meta.id), ttl_seconds)
            pipe.zadd(self.index, {meta.id: meta.expires_at})
            pipe.zremrangebyscore(self.index, "-inf", time.time())
            await pipe.execute()

    async def replace(self, meta: SessionMeta, weights: bytes, ttl_seconds: int, expected_version: int) -> bool:
        """WATCH the session's hash, check its version, then MULTI/EXEC the new record: a concurrent
        change between the check and EXEC aborts the transaction (WatchError) and returns False."""
        key = self.key(meta.id)
        async with self._guard("replace"), self.client.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                raw = await pipe.hget(key, "meta")
                if raw is None or SessionMeta.from_json(raw).version != expected_version:
                    await pipe.unwatch()
                    return False
                pipe.multi()
                pipe.hset(key, mapping={"meta": meta.to_json(), "weights": weights})
                pipe.expire(key, ttl_seconds)
                pipe.zadd(self.index, {meta.id: meta.expires_at})
                await pipe.execute()
                return True
            except WatchError:
                return False

    async def get(self, session_id: str) -> tuple[SessionMeta, bytes] | None:
        async with self._guard("get"):
            raw_meta, weights = await self.client.hmget(self.key(session_id), ["meta", "weights"])
        if raw_meta is None or weights is None:
            return None
        return SessionMeta.from_json(raw_meta), weights

    async def get_meta(self, session_id: str) -> SessionMeta | None:
        async with self._guard("get_meta"):
            raw = await self.client.hget(self.key(session_id), "meta")
        return None if raw is None else SessionMeta.from_json(raw)

    async def delete(self, session_id: str) -> bool:
        async with self._guard("delete"), self.client.pipeline(transaction=True) as pipe:
            pipe.delete(self.key(session_id))
            pipe.zrem(self.index, session_id)
            deleted, _ = await pipe.execute()
        return bool(deleted)

    async def count(self) -> int:
        async with self._guard("count"):
            return int(await self.client.zcount(self.index, time.time(), "+inf"))

    async def ping(self) -> None:
        async with self._guard("ping"):
            await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
