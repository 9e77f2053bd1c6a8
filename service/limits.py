"""Body limits as pure ASGI middleware: refuse by Content-Length, or once a stream passes the size
limit (413), or when the whole body has not arrived within the timeout (408: a stalled or trickling
client is cut instead of holding a connection forever)."""
from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import PROBLEM_JSON

ARRIVED = "ebmm.arrived"              # scope keys: perf_counter() when the request reached this middleware,
BODY_SECONDS = "ebmm.body_seconds"    # and the seconds until its whole body had arrived


class BodyLimitMiddleware:
    """Reads the body (at most max_bytes, within timeout_seconds) before the app sees it; larger bodies
    get 413, slower ones 408, both with Connection: close."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_seconds: float = 30.0):
        self.app, self.max_bytes, self.timeout = app, max_bytes, timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, send, int(length))
            return
        arrived = time.perf_counter()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    more = message.get("more_body", False)
                    if size > self.max_bytes:
                        await self._refuse(scope, send, size)
                        return
        except TimeoutError:
            await self._problem(scope, send, 408, "request-timeout", "Request body timed out",
                                f"the request body did not arrive within {self.timeout:g} s ({size} bytes "
                                "came); EBMM_BODY_TIMEOUT_SECONDS sets the limit", size)
            return
        body, sent = b"".join(chunks), False
        # for the route's Server-Timing: when the request came, and how long its body took to arrive
        scope[ARRIVED], scope[BODY_SECONDS] = arrived, time.perf_counter() - arrived

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send, size: int) -> None:
        await self._problem(scope, send, 413, "too-large", "Request too large", f"request body of {size} "
                            f"bytes or more exceeds the limit of {self.max_bytes} bytes (EBMM_MAX_BODY_BYTES)",
                            size)

    @staticmethod
    async def _problem(scope: Scope, send: Send, status: int, slug: str, title: str, detail: str,
                       size: int) -> None:
        body = json.dumps({"type": f"urn:ebmm:problem:{slug}", "title": title, "status": status,
                           "detail": detail, "instance": scope["path"], "field": "body", "value": size}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", PROBLEM_JSON.encode()), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
