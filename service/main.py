"""create_app(): the FastAPI app; its lifespan loads every checkpoint once and opens the store."""
from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema

from . import docs, errors, logs, web
from .config import Settings
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .model_process import ModelProcesses
from .registry import StartupError, load_models, pick_default, resolve_device
from .routes import health, models, sessions
from .batching import ReadBatcher
from .runner import ModelRunner
from .schemas import RetrieveRequest, WriteRequest
from .state import AppState
from .store import open_store

log = logging.getLogger("uvicorn.error.ebmm")
DESCRIPTION = """Energy-Based Memory Models (Bartunov et al., ICLR 2020) as a memory service.

Write a batch of patterns into a session (the model's writable weights are fitted to them), then
restore distorted or partial patterns from that session by descending the energy.
Errors are `application/problem+json` (RFC 9457) and name the field and the bad value."""


def _lifespan(settings: Settings, metrics: Metrics):
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logs.install()                               # before the first request is logged
        # the event loop shares the GIL with decode/encode/model threads, and a torch call gives the GIL up
        # and takes it back around every op: a short switch interval lets a waiting thread take it within
        # 50 us instead of 5 ms. Without it a busy loop starves the model threads: 16 clients resending
        # refused reads at once got 20 of 2,000 reads through at 0.5 ms, 123 at 50 us
        # (results/bench_service_overload_{500,50}us.md)
        sys.setswitchinterval(settings.gil_switch_interval_us / 1e6)
        torch.set_num_threads(settings.torch_threads)
        device = resolve_device(settings.device)
        try:
            loaded = load_models(settings.checkpoint_dir, device, settings.compile_reads)
        except StartupError as e:
            log.error("ebmm service cannot start: %s", e)
            raise
        store = open_store(settings)
        runner = ModelRunner(settings.pool_size, settings.pool_queue, settings.torch_threads,
                             lanes={"batch": settings.batch_concurrency} if settings.batch_reads else None)
        app.state.ebmm = AppState(settings, loaded, pick_default(loaded, settings.default_model), store,
                                  runner, metrics)
        procs = None
        if settings.batch_reads and settings.model_process and any(m.memory.stacks_weights for m in loaded.values()):
            procs = ModelProcesses(settings.batch_concurrency, settings.checkpoint_dir, device,
                                   settings.torch_threads, {n: m.sha256 for n, m in loaded.items()},
                                   settings.compile_reads, settings.model_cache_mb << 20)
        if settings.batch_reads:
            app.state.ebmm.batcher = ReadBatcher(
                partial(runner.run, lane="batch"), settings.batch_concurrency, settings.batch_window_ms / 1000,
                settings.batch_max_queries,
                on_batch=lambda model, n: metrics.read_batch.labels(model).observe(n), procs=procs,
                on_place=lambda model, place: metrics.read_batch_place.labels(model, place).inc())
        log.info("serving %s on %s with store %s (api keys %s)", ", ".join(loaded), device,
                 store.label, "on" if settings.auth_enabled else "off")
        try:
            yield
        finally:
            if procs is not None:            # first: their pipes' EOF frees a lane thread waiting on one
                procs.close()
            runner.shutdown()
            await store.close()
    return lifespan


def _openapi(app: FastAPI) -> Any:
    """Default schema plus the JSON request bodies the session routes parse themselves."""
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            _, defs = models_json_schema([(WriteRequest, "validation"), (RetrieveRequest, "validation")],
                                         ref_template="#/components/schemas/{model}")
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
            _problem_422s(schema)
            app.openapi_schema = schema
        return app.openapi_schema
    return build


def _problem_422s(schema: dict[str, Any]) -> None:
    """Every 422 the schema documents is the service's problem+json, not FastAPI's default shape
    (path and query parameters of GET and DELETE are validated by FastAPI, answered by errors.py)."""
    ours = errors.error_responses(422)[422]
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            if isinstance(op, dict) and "422" in op.get("responses", {}):
                op["responses"]["422"] = ours
    comps = schema.get("components", {}).get("schemas", {})
    if "HTTPValidationError" in comps and "HTTPValidationError" not in str(schema.get("paths")):
        comps.pop("HTTPValidationError", None)
        if "ValidationError" not in str({k: v for k, v in comps.items() if k != "ValidationError"}):
            comps.pop("ValidationError", None)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    metrics = Metrics()
    app = FastAPI(title="ebmm memory service", version="1", description=DESCRIPTION,
                  lifespan=_lifespan(settings, metrics), docs_url=None, redoc_url=None)
    errors.install(app)
    docs.install(app)
    web.install(app)
    for r in (health.router, models.router, sessions.router):
        app.include_router(r)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_seconds=settings.body_timeout_seconds)
    app.add_middleware(MetricsMiddleware, metrics=metrics)     # outermost: sees 413s too
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app
