"""The session store interface, the session record, and the safetensors codec for written weights."""
from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, fields

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from .config import Settings


@dataclass(frozen=True)
class SessionMeta:
    """Everything about a session except its weights; stored beside them as JSON."""
    id: str
    model: str
    checkpoint_sha256: str
    owner: str                 # a digest of the API key that wrote it ("" when keys are off)
    input_shape: list[int]
    patterns: int
    memory_bytes: int          # bytes of the written tensors (float32)
    stored_bytes: int          # bytes of the serialised record held by the store
    writing_loss: float        # the last writing loss
    created_at: float          # unix seconds
    expires_at: float          # unix seconds
    version: int = 0           # bumped by every append; appends compare and set it
    # random, new with every stored set of weights (write, append, import): what the model processes' caches
    # key a session's weights by (service/model_process.py: session_key); "" in records from before it
    weights_token: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> SessionMeta:
        """Fields added by a later version are ignored, so old and new servers can share a store."""
        data = json.loads(text)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def new_weights_token() -> str:
    """A fresh `SessionMeta.weights_token`: no two stored sets of weights share one, even where the store
    rolled a session back (a Redis restored from a snapshot or failed over loses its latest appends, and the
    next append reuses their version number)."""
    return secrets.token_hex(12)


def pack_weights(weights: dict[str, Tensor]) -> bytes:
    """Written weights -> safetensors bytes (never pickle)."""
    return st_save({n: t.detach().cpu().contiguous() for n, t in weights.items()})


def unpack_weights(blob: bytes) -> dict[str, Tensor]:
    return st_load(blob)


class SessionStore(ABC):
    """Holds (meta, weights blob) per session id with an expiry; errors as StoreUnavailable."""
    label: str

    @abstractmethod
    async def put(self, meta: SessionMeta, weights: bytes, ttl_seconds: int) -> None: ...

    @abstractmethod
    async def get(self, session_id: str) -> tuple[SessionMeta, bytes] | None: ...

    @abstractmethod
    async def get_meta(self, session_id: str) -> SessionMeta | None: ...

    @abstractmethod
    async def replace(self, meta: SessionMeta, weights: bytes, ttl_seconds: int, expected_version: int) -> bool:
        """Store meta and weights only if the stored session still has `expected_version` (atomic);
        False if it changed or vanished meanwhile."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool: ...

    @abstractmethod
    async def count(self) -> int: ...

    @abstractmethod
    async def ping(self) -> None: ...

    async def close(self) -> None:
        return None


def open_store(settings: Settings) -> SessionStore:
    """The store named by settings.store_url: memory://, redis://, rediss://, unix:// or a cluster
    (redis+cluster://, rediss+cluster://)."""
    if settings.store_url.startswith("memory://"):
        from .memory_store import MemoryStore
        return MemoryStore(settings.memory_max_sessions, settings.memory_max_bytes)
    from .redis_store import CLUSTER_SCHEMES, RedisClusterStore, RedisStore
    kind = RedisClusterStore if settings.store_url.startswith(CLUSTER_SCHEMES) else RedisStore
    return kind(settings.store_url, settings.store_prefix, settings.store_timeout_seconds,
                label=settings.store_label, min_replicas=settings.store_min_replicas)
