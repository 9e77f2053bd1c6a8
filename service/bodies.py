"""Request bodies in either form (JSON or multipart/form-data) -> validated, undecoded batches."""
from __future__ import annotations

from collections.abc import Callable

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from anyio import to_thread
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException

from . import npy
from .errors import BadInput, TooLarge, UnsupportedMedia
from .gc_pause import gc_paused
from .imaging import b64decode
from .inputs import RawBatch
from .schemas import PatternBatch, RetrieveOptions, RetrieveRequest, WriteRequest

MAX_FORM_FIELDS = 16
NPY_TYPES = ("application/x-npy", "application/npy")


def parse_npy(raw: bytes, field: str) -> tuple[np.ndarray, list[str]]:
    """A .npy body (no pickles) -> float32 (N, ...) in [0, 1] and what was done to it: float arrays as they are,
    bool as 0/1, uint8 / 255, except a uint8 array of 0s and 1s alone, which is bits (0/1) read as 0/1 (as
    pixel values 0 and 1 of 255 it would be black). One array holds the whole batch along its first axis."""
    try:
        a = npy.load(raw)
    except (ValueError, OSError, EOFError) as e:
        raise BadInput(f"{field}: not a .npy array ({e})", field, raw[:16]) from e
    if not isinstance(a, np.ndarray) or a.ndim < 2:
        raise BadInput(f"{field}: a .npy body is one array (N, ...) with the patterns along its first axis, "
                       f"got shape {list(getattr(a, 'shape', []))}", field, list(getattr(a, "shape", [])))
    if a.dtype == np.uint8:
        if a.size and int(a.max()) == 1:
            return a.astype(np.float32), [f"{field}: uint8 values all 0 or 1, read as 0/1 (bits), not as pixel "
                                          "values of 255"]
        return a.astype(np.float32) / 255.0, []
    if a.dtype == np.bool_:
        return a.astype(np.float32), []
    if a.dtype.kind not in "fiu":
        raise BadInput(f"{field}: dtype {a.dtype} is not a number type (send float32, uint8 or bool)",
                       field, str(a.dtype))
    return a.astype(np.float32, copy=False), []


def _query_options(request: Request, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for k, v in request.query_params.multi_items():
        if k not in names:
            raise BadInput(f"{k}: unknown query parameter; accepted with a .npy body: {', '.join(names)}", k, v)
        out[k] = v
    return out


@dataclass
class WriteInput:
    model: str | None
    patterns: RawBatch


@dataclass
class RetrieveInput:
    queries: RawBatch
    mask: RawBatch | None
    options: RetrieveOptions
    npy_answer: str | None = None     # the dtype of the .npy answer Accept asked for (None: JSON)


def _validate(cls: type[BaseModel], data: Any) -> Any:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise RequestValidationError(e.errors(include_url=False)) from e


def _kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "")
    base = ctype.split(";")[0].strip().lower()
    if base == "application/json" or base.endswith("+json"):
        return "json"
    if base == "multipart/form-data":
        return "form"
    if base in NPY_TYPES:
        return "npy"
    if base == "application/x-www-form-urlencoded":
        raise UnsupportedMedia("content-type 'application/x-www-form-urlencoded' is a form without files: "
                               "send the images as multipart/form-data in field 'files' (curl -F "
                               "files=@a.png; httpx files=[('files', ...)]), or a JSON body",
                               "content-type", ctype)
    raise UnsupportedMedia(f"content-type {ctype!r} is not accepted; send application/json, "
                           "multipart/form-data or application/x-npy", "content-type", ctype)


def _reject_constant(name: str) -> Any:
    raise BadInput(f"body: {name} is not valid JSON (numbers must be finite)", "body", name)


def parse_json(raw: bytes) -> Any:
    """A request body as JSON, or a 422 naming what is wrong: invalid text, NaN/Infinity, nesting
    past the parser's recursion limit, integers past Python's digit limit, lone surrogate escapes."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInput(f"body: not valid JSON ({e})", "body", raw[:40]) from e
    except RecursionError as e:
        raise BadInput("body: JSON nested too deeply", "body", None) from e
    except ValueError as e:                       # e.g. an integer past the int/str digit limit
        raise BadInput(f"body: a number in the JSON cannot be read ({e})", "body", None) from e
    _check_strings(data)
    return data


def _check_strings(data: Any) -> None:
    """Refuse lone surrogates (valid JSON escapes, but not text) anywhere in keys or values."""
    stack = [data]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise BadInput("body: a string holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), "
                               "which is not text", "body", v.encode("utf-8", "backslashreplace").decode()) from e
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


RETRIEVE_OPTIONS = ("steps", "trajectory", "output", "match_threshold", "top_k", "samples", "temperature")


async def _form(request: Request, max_files: int) -> FormData:
    try:
        return await request.form(max_files=2 * max_files + 1, max_fields=MAX_FORM_FIELDS)
    except HTTPException as e:
        if "Too many files" in str(e.detail):
            raise TooLarge(f"files: more than {2 * max_files + 1} files in one request", "files",
                           str(e.detail)) from e
        raise BadInput(f"body: multipart form could not be parsed ({e.detail})", "body", None) from e


def _batch(pb: PatternBatch, field: str) -> RawBatch:
    source = pb.source
    items = getattr(pb, source)
    if source == "images":
        items = [b64decode(s, f"{field}.images[{i}]") for i, s in enumerate(items)]
    return RawBatch(source, items, f"{field}.{source}")  # type: ignore[arg-type]


async def _files(form: FormData, name: str) -> RawBatch | None:
    uploads = form.getlist(name)
    for i, u in enumerate(uploads):
        if not isinstance(u, UploadFile):
            raise BadInput(f"{name}[{i}]: expected an uploaded file, got a text field", f"{name}[{i}]", u)
    if not uploads:
        return None
    return RawBatch("images", [await u.read() for u in uploads], name)  # type: ignore[union-attr]


def _text_fields(form: FormData, names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for k, v in form.multi_items():
        if k not in names and k not in ("files", "masks"):
            raise BadInput(f"{k}: unknown form field; accepted: files, masks, {', '.join(names)}", k, v)
        if k in names and isinstance(v, str) and v != "":
            out[k] = v
    return out


INLINE_BYTES = 64 * 1024   # smaller bodies are parsed on the event loop: a thread hop would cost more


async def _parse(request: Request, raw: bytes, fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) parsing the body raw: on the loop when it is small, else on the app's bounded codec
    threads (the ones decoding and encoding use), so that a large body never stalls the event loop."""
    if len(raw) <= INLINE_BYTES:
        return fn(*args)
    return await to_thread.run_sync(fn, *args, limiter=request.app.state.ebmm.codec_threads)


async def _json_model(request: Request, cls: type[BaseModel]) -> Any:
    """Parse and validate a JSON body (with the garbage collector paused while it is built)."""
    raw = await request.body()

    def parse() -> Any:
        with gc_paused():
            return _validate(cls, parse_json(raw))
    return await _parse(request, raw, parse)


INLINE_NPY_BYTES = 4 * 1024 * 1024   # reading a .npy body is a copy: about 0.1 ms per MiB


async def _npy_batch(request: Request) -> RawBatch:
    raw = await request.body()
    a, notes = (parse_npy(raw, "body") if len(raw) <= INLINE_NPY_BYTES
                else await _parse(request, raw, parse_npy, raw, "body"))
    return RawBatch("arrays", list(a), "body", block=a, notes=notes)


async def read_write(request: Request, max_patterns: int) -> WriteInput:
    kind = _kind(request)
    if kind == "json":
        req = await _json_model(request, WriteRequest)
        return WriteInput(req.model, _batch(req.patterns, "patterns"))
    if kind == "npy":
        fields = _query_options(request, ("model",))
        return WriteInput(fields.get("model"), await _npy_batch(request))
    form = await _form(request, max_patterns)
    try:
        fields = _text_fields(form, ("model",))
        files = await _files(form, "files")
    finally:
        await form.close()
    if files is None:
        raise BadInput("files: a multipart write needs one or more image files in field 'files'", "files", None)
    return WriteInput(fields.get("model"), files)


NPY_ANSWER_DTYPES = ("float32", "uint8")


def wants_npy(request: Request) -> str | None:
    """The dtype of a .npy answer the Accept header asks for (`application/x-npy`, float32; with
    `; dtype=uint8`, patterns x 255 rounded: a quarter of the bytes), or None for JSON."""
    for part in request.headers.get("accept", "").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() not in NPY_TYPES:
            continue
        opts = {k.strip().lower(): v.strip().strip('"').lower()
                for k, v in (p.split("=", 1) if "=" in p else (p, "") for p in params)}
        try:
            if float(opts.get("q", "1")) <= 0:                     # q=0: "not this one"
                continue
        except ValueError:
            pass
        dtype = opts.get("dtype", "float32")
        if dtype not in NPY_ANSWER_DTYPES:
            raise BadInput(f"accept: dtype={dtype!r} for an application/x-npy answer; expected one of "
                           f"{', '.join(NPY_ANSWER_DTYPES)}", "accept", part.strip())
        return dtype
    return None


async def read_retrieve(request: Request, max_patterns: int) -> RetrieveInput:
    inp = await _read_retrieve(request, max_patterns)
    inp.npy_answer = wants_npy(request)
    return inp


async def _read_retrieve(request: Request, max_patterns: int) -> RetrieveInput:
    kind = _kind(request)
    if kind == "json":
        req = await _json_model(request, RetrieveRequest)
        mask = None if req.mask is None else _batch(req.mask, "mask")
        return RetrieveInput(_batch(req.queries, "queries"), mask, req)
    if kind == "npy":
        options = _validate(RetrieveOptions, _query_options(request, RETRIEVE_OPTIONS))
        return RetrieveInput(await _npy_batch(request), None, options)
    form = await _form(request, max_patterns)
    try:
        fields = _text_fields(form, RETRIEVE_OPTIONS)
        options = _validate(RetrieveOptions, fields)
        files, masks = await _files(form, "files"), await _files(form, "masks")
    finally:
        await form.close()
    if files is None:
        raise BadInput("files: a multipart retrieve needs one or more query images in field 'files'",
                       "files", None)
    return RetrieveInput(files, masks, options)
