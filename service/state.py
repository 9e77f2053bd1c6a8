"""What the app holds between requests: settings, loaded models, the store, the pool, metrics."""
from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

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

    def model(self, name: str | None, field: str = "model") -> LoadedModel:
        chosen = self.default_model if name in (None, "") else name
        if chosen not in self.models:
            raise BadInput(f"{field}: unknown model {chosen!r}; loaded: {', '.join(self.models)}",
                           field, chosen)
        return self.models[chosen]


def get_state(request: Request) -> AppState:
    return request.app.state.ebmm
