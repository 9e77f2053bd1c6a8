"""Domain errors and the one place that turns them (and framework errors) into problem+json (RFC 9457)."""
from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

log = logging.getLogger("uvicorn.error.ebmm")
PROBLEM_JSON = "application/problem+json"
MAX_VALUE_CHARS = 80


def shorten(value: Any) -> Any:
    """Echo a bad value back without echoing a whole upload, as something JSON can always encode:
    non-finite floats and huge integers as text, lone surrogates escaped."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    if isinstance(value, int) and abs(value) < 2 ** 63:
        return value
    if isinstance(value, int):
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 12000 else 'over 3600'} digits"
    try:
        text = value if isinstance(value, str) else repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__} too deeply nested or too large to show>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS] + f"... ({len(text)} chars)"


class ServiceError(Exception):
    """A request the service refuses; `field` and `value` say what was wrong."""
    status = 400
    title = "Bad request"
    slug = "bad-request"

    def __init__(self, detail: str, field: str | None = None, value: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.detail, self.field, self.value, self.headers = detail, field, value, headers or {}


class Unauthorized(ServiceError):
    status, title, slug = 401, "Missing or unknown API key", "unauthorized"


class NotFound(ServiceError):
    status, title, slug = 404, "Not found", "not-found"


class Conflict(ServiceError):
    status, title, slug = 409, "Session does not match the loaded checkpoint", "checkpoint-mismatch"


class TooLarge(ServiceError):
    status, title, slug = 413, "Request too large", "too-large"


class UnsupportedMedia(ServiceError):
    status, title, slug = 415, "Unsupported media type", "unsupported-media"


class BadInput(ServiceError):
    status, title, slug = 422, "Invalid input", "invalid-input"


class Unavailable(ServiceError):
    status, title, slug = 503, "Service unavailable", "unavailable"


class StoreUnavailable(Unavailable):
    title, slug = "Session store unreachable", "store-unavailable"
    retry_after = 2      # seconds: a restarted Redis or a failed-over replica answers within a few

    def __init__(self, detail: str, field: str | None = "store", value: Any = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail, field, value, {"Retry-After": str(self.retry_after), **(headers or {})})


class Busy(Unavailable):
    title, slug = "All model workers are busy", "busy"


def _encodable(v: Any) -> Any:
    """v with every string valid UTF-8 and every number finite, so that the answer always encodes."""
    if isinstance(v, str):
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, dict):
        return {_encodable(k): _encodable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_encodable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def problem(status: int, title: str, detail: str, slug: str, instance: str,
            headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    extra = _encodable(extra)
    detail, instance = _encodable(detail), _encodable(instance)
    body = {"type": f"urn:ebmm:problem:{slug}", "title": title, "status": status, "detail": detail,
            "instance": instance, **extra}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    extra = {} if exc.field is None else {"field": exc.field, "value": shorten(exc.value)}
    return problem(exc.status, exc.title, exc.detail, exc.slug, request.url.path, exc.headers, **extra)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or ".".join(map(str, loc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": _loc(tuple(e["loc"])), "value": shorten(e.get("input")), "message": e["msg"]}
              for e in exc.errors()]
    first = errors[0] if errors else {"field": None, "value": None, "message": "invalid request"}
    detail = f"{first['field']}: {first['message']} (got {first['value']!r})"
    return problem(422, "Invalid input", detail, "invalid-input", request.url.path,
                   field=first["field"], value=first["value"], errors=errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:              # every method any route of this path takes, not the first's
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
            detail = f"{detail}; this path takes {', '.join(allowed)}"
    return problem(exc.status_code, "Method Not Allowed" if exc.status_code == 405 else detail,
                   f"{request.method} {request.url.path}: {detail}", slug, request.url.path, headers)


def _allowed_methods(request: Request) -> list[str]:
    """The methods some route of the app fully matches for this path (routers included)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        if any(r.matches(scope)[0] == Match.FULL for r in request.app.router.routes):
            allowed.append(method)
    return allowed


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "Internal server error", f"{type(exc).__name__} while handling the request",
                   "internal", request.url.path, {"Connection": "close"})


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


_EXAMPLES: dict[int, tuple[str, str, str, str, Any]] = {   # status -> slug, title, detail, field, value
    401: ("unauthorized", "Missing or unknown API key", "X-API-Key: no key was sent", "X-API-Key", None),
    404: ("not-found", "Not found", "session 'Zx3...' does not exist or has expired", "session_id", "Zx3..."),
    409: ("checkpoint-mismatch", "Session does not match the loaded checkpoint",
          "session was written by model 'characters32' with weights 9f2c0e1a7b3d; that model is loaded "
          "with weights 41aa07c2d9e8 on this server", "checkpoint_sha256", "9f2c0e1a7b3d..."),
    413: ("too-large", "Request too large", "files[0]: 20000x20000 = 400000000 pixels exceeds the limit "
          "of 4000000", "files[0]", "20000x20000"),
    415: ("unsupported-media", "Unsupported media type", "files[1]: not a decodable image; send PNG, JPEG, "
          "BMP, GIF, WEBP", "files[1]", "b'%PDF-1.7'"),
    422: ("invalid-input", "Invalid input", "patterns.bits[2]: expected a string of 128 characters 0/1, "
          "got 127 characters", "patterns.bits[2]", "0110..."),
    503: ("store-unavailable", "Session store unreachable", "the session store did not answer: "
          "Connection refused", "store", "redis://redis:6379/0"),
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the problem+json answers a route can give, each with its own example."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        slug, title, detail, field, value = _EXAMPLES.get(s, _EXAMPLES[422])
        example = {"type": f"urn:ebmm:problem:{slug}", "title": title, "status": s, "detail": detail,
                   "instance": "/v1/sessions", "field": field, "value": value}
        out[s] = {"description": f"{title}: problem+json (RFC 9457) naming the field and the bad value",
                  "content": {PROBLEM_JSON: {"example": example}}}
    return out
