"""Liveness, readiness and Prometheus metrics."""
from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..auth import Caller, State
from ..errors import StoreUnavailable
from ..schemas import Health, ModelProcessState, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Alive (no dependency checks)")
async def healthz() -> Health:
    return Health(status="ok")


@router.head("/healthz", include_in_schema=False)
async def healthz_head() -> Response:
    """What load balancers and `curl -I` send: the GET's status without a body."""
    return Response(status_code=200, media_type="application/json")


@router.get("/readyz", response_model=Readiness, summary="Models loaded and store reachable",
            responses={503: {"model": Readiness, "description": "Not ready"}})
async def readyz(state: State, response: Response) -> Readiness:
    detail = None
    try:
        await state.store.ping()
        store_ok = True
    except StoreUnavailable as e:
        store_ok, detail = False, e.detail
        state.metrics.store_errors.labels("ping").inc()
    ready = store_ok and bool(state.models)
    response.status_code = 200 if ready else 503
    if not ready:
        response.headers["Retry-After"] = str(StoreUnavailable.retry_after)
    procs = None if state.batcher is None else state.batcher.procs
    return Readiness(ready=ready, models=list(state.models), store=state.store.label,
                     store_ok=store_ok, detail=detail,
                     model_processes=None if procs is None else ModelProcessState(
                         up=procs.up(), size=procs.size, failures=procs.failures))


@router.get("/metrics", summary="Prometheus metrics (needs a key when keys are on)",
            response_class=Response)
async def metrics(state: State, _: Caller) -> Response:
    try:
        state.metrics.sessions.set(await state.store.count())
    except StoreUnavailable:
        state.metrics.store_errors.labels("count").inc()
    state.metrics.in_flight.set(state.runner.in_flight)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
