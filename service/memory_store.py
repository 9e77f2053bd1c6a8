"""The embedded default store: in-process, with expiry and a size-bounded LRU."""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .errors import TooLarge
from .store import SessionMeta, SessionStore


class MemoryStore(SessionStore):
    """Sessions in a dict ordered by last use; the least recently used go first when full.

    Only the event loop touches it (all methods are coroutines that never await), so no lock.
    """

    def __init__(self, max_sessions: int, max_bytes: int, clock: Callable[[], float] = time.time):
        self.label = "memory://"
        self.max_sessions, self.max_bytes, self.clock = max_sessions, max_bytes, clock
        self._items: OrderedDict[str, tuple[SessionMeta, bytes, float]] = OrderedDict()
        self._bytes = 0

    def _drop(self, session_id: str) -> bool:
        item = self._items.pop(session_id, None)
        if item is not None:
            self._bytes -= len(item[1])
        return item is not None

    def _purge_expired(self) -> None:
        now = self.clock()
        for sid in [s for s, (_, _, exp) in self._items.items() if exp <= now]:
            self._drop(sid)

    def _live(self, session_id: str) -> tuple[SessionMeta, bytes, float] | None:
        item = self._items.get(session_id)
        if item is None:
            return None
        if item[2] <= self.clock():
            self._drop(session_id)
            return None
        self._items.move_to_end(session_id)
        return item

    async def put(self, meta: SessionMeta, weights: bytes, ttl_seconds: int) -> None:
        if len(weights) > self.max_bytes:
            raise TooLarge(f"a session of {len(weights)} bytes exceeds the in-process store's "
                           f"EBMM_MEMORY_MAX_BYTES={self.max_bytes}", "memory_bytes", len(weights))
        self._drop(meta.id)
        self._purge_expired()
        while self._items and (len(self._items) >= self.max_sessions
                               or self._bytes + len(weights) > self.max_bytes):
            self._drop(next(iter(self._items)))           # least recently used
        self._items[meta.id] = (meta, weights, self.clock() + ttl_seconds)
        self._bytes += len(weights)

    async def replace(self, meta: SessionMeta, weights: bytes, ttl_seconds: int, expected_version: int) -> bool:
        item = self._live(meta.id)           # no await between the check and the write: atomic here
        if item is None or item[0].version != expected_version:
            return False
        await self.put(meta, weights, ttl_seconds)
        return True

    async def get(self, session_id: str) -> tuple[SessionMeta, bytes] | None:
        item = self._live(session_id)
        return None if item is None else (item[0], item[1])

    async def get_meta(self, session_id: str) -> SessionMeta | None:
        item = self._live(session_id)
        return None if item is None else item[0]

    async def delete(self, session_id: str) -> bool:
        return self._drop(session_id)

    async def count(self) -> int:
        self._purge_expired()
        return len(self._items)

    async def ping(self) -> None:
        return None

    @property
    def bytes_held(self) -> int:
        return self._bytes
