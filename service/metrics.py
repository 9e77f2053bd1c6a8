"""Prometheus metrics (one registry per app) and the middleware that counts and times requests."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("ebmm_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("ebmm_http_request_seconds", "HTTP request latency",
                                 ["route", "method", "status"], buckets=LATENCY_BUCKETS, registry=r)
        self.model_seconds = Histogram("ebmm_model_seconds", "Model time per request (worker pool)",
                                       ["op", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram("ebmm_stage_seconds", "Time outside the model by stage",
                                       ["op", "stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.sessions = Gauge("ebmm_sessions_stored", "Live sessions in the store", registry=r)
        self.sessions_written = Counter("ebmm_sessions_written", "Sessions written", ["model"], registry=r)
        self.store_errors = Counter("ebmm_store_errors", "Session store failures", ["op"], registry=r)
        self.busy = Counter("ebmm_pool_rejections", "Requests refused because the pool was full",
                            registry=r)
        self.in_flight = Gauge("ebmm_pool_in_flight", "Model calls running or waiting", registry=r)
        self.read_batch = Histogram("ebmm_read_batch_requests", "Reads per batched model call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.read_batch_place = Counter("ebmm_read_batches", "Batched model calls by where they ran: in a "
                                        "model process, or in the server's own process", ["model", "place"],
                                        registry=r)


def route_label(scope: Scope, root_path: str | None = None) -> str:
    """The route template (/v1/sessions/{session_id}), never the raw path: bounded label values.
    Routes that are not API routes (the docs, the schema, the web page's static files) set no
    `route` in the scope; they are found by matching the app's routes."""
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return route.path
    app = scope.get("app")
    # a mount rewrites root_path in the scope it was given; match as the request first arrived
    probe = scope if root_path is None else {**scope, "root_path": root_path}
    for r in getattr(getattr(app, "router", None), "routes", ()):
        match, _ = r.matches(probe)
        if match == Match.FULL:
            return getattr(r, "path", None) or "unmatched"
    return "unmatched"


class MetricsMiddleware:
    """Pure ASGI: counts and times every HTTP request by route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status, root = time.perf_counter(), 500, scope.get("root_path", "")

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            labels = (route_label(scope, root), scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - t0)
