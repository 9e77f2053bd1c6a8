"""Sessions: write patterns into a new session, read them back, inspect, delete, export and import."""
from __future__ import annotations

import math

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Path, Request, Response

from .. import sessions as ops
from ..auth import Caller, State
from ..bodies import read_retrieve, read_write
from ..errors import error_responses
from ..gc_pause import gc_paused
from ..limits import ARRIVED, BODY_SECONDS
from ..schemas import RetrieveResponse, SessionInfo, WriteResponse

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])
SessionId = Path(description="Session id returned by POST /v1/sessions", examples=["yv1q3Jm2Y2Kx..."])


def _binary_field(description: str) -> dict[str, Any]:
    return {"type": "array", "items": {"type": "string", "format": "binary"}, "description": description}


def _body(json_ref: str, form: dict[str, Any]) -> dict[str, Any]:
    """Both accepted bodies for the OpenAPI page (the route parses them itself)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{json_ref}"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form, "required": ["files"]}},
        "application/x-npy": {"schema": {"type": "string", "format": "binary", "description": NPY_BODY}},
    }}}


NPY_BODY = ("One .npy array (numpy.save, no pickles) holding the whole batch along its first axis: (N, C, H, "
            "W), (N, H, W) for one channel or (N, D); float values in [0, 1], uint8 0-255 or bool. The other "
            "fields go in the query string (?model=... for a write; ?steps=...&trajectory=true for a "
            "retrieve). No masks with this body. Send `Accept: application/x-npy` on a retrieve to get the "
            "restored patterns back as one float32 .npy array ((K+1, N, ...) with trajectory=true) and the "
            "energies, familiarities and matches in X-EBMM-* headers; `Accept: application/x-npy; dtype=uint8` "
            "returns them as uint8, 255 x the value rounded (a quarter of the bytes).")
WRITE_FORM = {"files": _binary_field("Image files (PNG, JPEG, BMP, GIF, WebP), all the same size"),
              "model": {"type": "string", "description": "Model name (default: characters model)",
                        "example": "characters32"}}
RETRIEVE_FORM = {"files": _binary_field("Query images"),
                 "masks": _binary_field("Mask images, white = known pixel (one, or one per query)"),
                 "steps": {"type": "integer", "example": 10, "description": "Read steps"},
                 "trajectory": {"type": "boolean", "example": False, "description": "Return every iterate"},
                 "output": {"type": "string", "enum": ["png", "array", "bits"], "example": "png"}}


async def _timed(request: Request, response: Response, state: Any, parse: Callable, op: Callable) -> Any:
    """parse the body, run op(input, timings), and send every stage's time as a Server-Timing header: `body`
    (the request body arriving), `route` (from the whole body to this handler: routing, dependencies), the
    handler's stages (parse, store, decode, model, encode), and `total`, from the request's arrival to this
    handler's return (a JSON answer is serialised after it). Under load, `route` holds waiting for the loop."""
    t, t0 = ops.Timings(), time.perf_counter()
    arrived = request.scope.get(ARRIVED)
    if arrived is not None:
        body = request.scope[BODY_SECONDS]
        t.add("body", body)
        t.add("route", max(t0 - arrived - body, 0.0))
    with t.stage("parse"):
        inp = await parse(request, state.settings.max_patterns)
    out = await op(inp, t)
    t.add("total", time.perf_counter() - (t0 if arrived is None else arrived))
    response.headers["Server-Timing"] = t.header()
    return out


@router.post("", response_model=WriteResponse, status_code=201, summary="Write patterns into a new session",
             openapi_extra=_body("WriteRequest", WRITE_FORM),
             responses=error_responses(401, 413, 415, 422, 503))
async def write(request: Request, response: Response, state: State, caller: Caller) -> WriteResponse:
    out = await _timed(request, response, state, read_write, lambda inp, t: ops.write_session(state, caller, inp, t))
    response.headers["Location"] = f"/v1/sessions/{out.session_id}"
    return out


@router.post("/{session_id}/retrieve", response_model=RetrieveResponse, summary="Restore patterns from queries",
             openapi_extra=_body("RetrieveRequest", RETRIEVE_FORM),
             response_description="The restored patterns (JSON), or with `Accept: application/x-npy` one "
                                  "float32 .npy array and X-EBMM-Energies / -Familiarity / -Match headers",
             responses=error_responses(401, 404, 409, 413, 415, 422, 503))
async def retrieve(request: Request, response: Response, state: State, caller: Caller,
                   session_id: str = SessionId) -> Response:
    out = await _timed(request, response, state, read_retrieve,
                       lambda inp, t: ops.retrieve(state, caller, session_id, inp, t))
    if isinstance(out, ops.NpyAnswer):
        return Response(out.body, media_type="application/x-npy", headers={**response.headers, **out.headers})
    # a large answer is serialised off the event loop, one result at a time (each call holds the GIL
    # briefly, so other requests and /healthz keep being answered); a small one on the loop (ops.codec)
    values = len(out.results) * math.prod(state.models[out.model].input_shape)
    if any(r.trajectory is not None or r.candidates or r.samples for r in out.results):
        values = ops.INLINE_VALUES + 1
    body = await ops.codec(state, values, _json_in_pieces, out)
    return Response(body, media_type="application/json", headers=dict(response.headers))


def _json_in_pieces(out: RetrieveResponse) -> bytes:
    with gc_paused():
        head = out.model_dump_json(exclude={"results"})
        results = b",".join(r.model_dump_json().encode() for r in out.results)
        return head[:-1].encode() + b',"results":[' + results + b"]}"


@router.post("/{session_id}/patterns", response_model=WriteResponse, summary="Append patterns to a session",
             description="Writes more patterns into the session's weights (same bodies as a write; `model`, "
                         "if given, must be the session's). Slot memories re-deal their slots as a write of "
                         "all patterns at once would; span memories write more (each write step adds the new "
                         "patterns' outer products); quadratic (Hopfield) memories keep the patterns' first and "
                         "second moments beside the weights and gated RNNs the patterns themselves, and write "
                         "from them what a write of all patterns at once would; a session without that state "
                         "(an older export) runs further write steps from the written weights and says so in "
                         "`warnings`. Concurrent appends never lose one: the store "
                         "compares and sets the session's version, retries a lost race, and answers 409 "
                         "after repeated losses.",
             openapi_extra=_body("WriteRequest", WRITE_FORM),
             responses=error_responses(401, 404, 409, 413, 415, 422, 503))
async def append(request: Request, response: Response, state: State, caller: Caller,
                 session_id: str = SessionId) -> WriteResponse:
    return await _timed(request, response, state, read_write,
                        lambda inp, t: ops.append_patterns(state, caller, session_id, inp, t))


SESSION_FILE = "application/vnd.ebmm.session+safetensors"


@router.get("/{session_id}/export", response_class=Response, summary="Export a session as a safetensors file",
            responses={200: {"content": {SESSION_FILE: {"schema": {"type": "string", "format": "binary"}}},
                             "description": "The written weights, with the session's model, checkpoint hash, "
                                            "pattern count and input shape in the safetensors metadata"},
                       **error_responses(401, 404, 503)})
async def export_session(state: State, caller: Caller, session_id: str = SessionId) -> Response:
    body = await ops.export_session(state, caller, session_id)
    return Response(body, media_type=SESSION_FILE,
                    headers={"Content-Disposition": f'attachment; filename="{session_id}.safetensors"'})


@router.post("/import", response_model=SessionInfo, status_code=201,
             summary="Import an exported session file into a new session",
             openapi_extra={"requestBody": {"required": True, "content": {
                 SESSION_FILE: {"schema": {"type": "string", "format": "binary"}},
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
             responses=error_responses(401, 409, 413, 422, 503))
async def import_session(request: Request, response: Response, state: State, caller: Caller) -> SessionInfo:
    out = await ops.import_session(state, caller, await request.body())
    response.headers["Location"] = f"/v1/sessions/{out.session_id}"
    return out


@router.get("/{session_id}", response_model=SessionInfo, summary="Session metadata",
            responses=error_responses(401, 404, 503))
async def get_session(state: State, caller: Caller, session_id: str = SessionId) -> SessionInfo:
    return await ops.session_info(state, caller, session_id)


@router.delete("/{session_id}", status_code=204, response_class=Response, summary="Delete a session",
               responses=error_responses(401, 404, 503))
async def delete_session(state: State, caller: Caller, session_id: str = SessionId) -> Response:
    await ops.delete_session(state, caller, session_id)
    return Response(status_code=204)
