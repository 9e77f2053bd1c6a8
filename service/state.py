"""What the app holds between requests: settings, loaded models, the store, the pool, metrics."""
from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from fastapi import Request

from .batching import ReadBatcher
from .config import Settings
from .errors import BadInput
from .metrics import Metrics
from .registry import LoadedModel
from .runner import ModelRunner
from .store import SessionStore


@dataclass
class AppState:
    settings: Settings
    models: dict[str, LoadedModel]
    default_model: str
    store: SessionStore
    runner: ModelRunner
    metrics: Metrics
    # decoding and encoding (PNG, JSON arrays) run on their own bounded threads: concurrent uploads
    # wait for a slot instead of all decoding at once
    codec_threads: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))
    batcher: ReadBatcher | None = None             # batching across requests (EBMM_BATCH_READS)

    def model(self, name: str | None, field: str = "model") -> LoadedModel:
        chosen = self.default_model if name in (None, "") else name
        if chosen not in self.models:
            raise BadInput(f"{field}: unknown model {chosen!r}; loaded: {', '.join(self.models)}",
                           field, chosen)
        return self.models[chosen]


async def get_state(request: Request) -> AppState:
    """The app's state (async: FastAPI would run a plain function on its thread pool, a hop per request)."""
    return request.app.state.ebmm
