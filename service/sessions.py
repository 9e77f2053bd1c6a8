"""The write and retrieve paths: decode -> worker pool -> store / encode, each stage timed."""
from __future__ import annotations

import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import torch
from anyio import to_thread

from . import npy
from .batching import SMALL_READ
from .bodies import RetrieveInput, WriteInput
from .errors import BadInput, Busy, Conflict, NotFound, StoreUnavailable, TooLarge
from .imaging import encode_png
from .gc_pause import gc_paused
from .inputs import RawBatch, check_count, input_warnings, match_mask, to_tensor
from .model_process import session_key
from .registry import LoadedModel
from .schemas import Candidate, Retrieved, RetrieveResponse, SessionInfo, WriteResponse
from .state import AppState
from .store import SessionMeta, new_weights_token, pack_weights, unpack_weights
from .transfer import (export_bytes, max_session_patterns, new_meta, new_session_id, parse_session_file,
                       written_bytes)

T = TypeVar("T")
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{20,64}$")
ID_BYTES = 32


class Timings:
    """Seconds per stage of one request, sent back as a Server-Timing header."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    def header(self) -> str:
        return ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in self.stages.items())


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def _store(state: AppState, op: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except StoreUnavailable:
        state.metrics.store_errors.labels(op).inc()
        raise


async def _model(state: AppState, op: str, m: LoadedModel, t: Timings, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) on the model pool, counted in the metrics and the request's Server-Timing."""
    return await _metered(state, op, m, t, state.runner.run(fn, *args))


async def _metered(state: AppState, op: str, m: LoadedModel, t: Timings, call: Awaitable[tuple[T, float]]) -> T:
    """Await a model call answering (result, seconds it ran): in-flight gauge, refusals, model time."""
    try:
        state.metrics.in_flight.inc()
        out, seconds = await call
    except Busy:
        state.metrics.busy.inc()
        raise
    finally:
        state.metrics.in_flight.dec()
    state.metrics.model_seconds.labels(op, m.name).observe(seconds)
    t.add("model", seconds)
    t.add("model-cpu", seconds.cpu)               # the model thread's CPU time (service/runner.py: CallTime)
    return out


INLINE_VALUES = 16_384   # below this many values, decoding or encoding on the event loop costs less than a hop
# a whole .npy batch is checked, or a .npy answer written, in a few vectorised passes: measured 10 us
# against 234 us row by row for 64 x 1024 values, so its values count this many times less
VECTORISED = 16


def _raw_values(batch: RawBatch) -> int:
    """Values a batch holds once decoded, where cheap to know without decoding: numpy rows (npy bodies)
    and bit strings; anything else (images, nested lists) counts as large."""
    if batch.block is not None:
        return batch.block.size // VECTORISED
    if batch.source == "arrays" and all(isinstance(a, np.ndarray) for a in batch.items):
        return sum(a.size for a in batch.items)
    if batch.source == "bits":
        return sum(len(b) for b in batch.items)
    return INLINE_VALUES + 1


async def codec(state: AppState, values: int, fn: Callable[..., T], *args: Any) -> T:
    """fn(*args) for decoding or encoding: on the event loop when it handles few values (a thread hop
    would cost more than the work), else on the bounded codec threads, never blocking the loop long."""
    if values <= INLINE_VALUES:
        return fn(*args)
    return await to_thread.run_sync(fn, *args, limiter=state.codec_threads)


def info(meta: SessionMeta) -> dict[str, Any]:
    return {"session_id": meta.id, "model": meta.model, "checkpoint_sha256": meta.checkpoint_sha256,
            "patterns": meta.patterns, "version": meta.version, "input_shape": meta.input_shape,
            "memory_bytes": meta.memory_bytes,
            "stored_bytes": meta.stored_bytes, "writing_loss": meta.writing_loss,
            "created_at": iso(meta.created_at), "expires_at": iso(meta.expires_at)}


async def write_session(state: AppState, caller: str, inp: WriteInput, t: Timings) -> WriteResponse:
    s = state.settings
    m = state.model(inp.model)
    check_count(inp.patterns, s.max_patterns)
    with t.stage("decode"):
        x, notes = await codec(state, _raw_values(inp.patterns), to_tensor, inp.patterns, m, "patterns",
                               s.max_pixels)
    res = await _model(state, "write", m, t, m.memory.write, x)
    with t.stage("store"):
        blob = pack_weights(res.weights)
        now = time.time()
        meta = SessionMeta(new_session_id(ID_BYTES), m.name, m.sha256, caller, list(m.input_shape),
                           int(x.shape[0]), written_bytes(res.weights), len(blob),
                           float(res.losses[-1]) if res.losses else 0.0, now, now + s.session_ttl_seconds,
                           weights_token=new_weights_token())
        await _store(state, "put", state.store.put(meta, blob, s.session_ttl_seconds))
    state.metrics.sessions_written.labels(m.name).inc()
    warn = m.memory.capacity_warning(int(x.shape[0]))
    warnings = ([warn] if warn else []) + input_warnings(x, notes, m, inp.patterns.field)
    return WriteResponse(**info(meta), writing_losses=res.losses, ttl_seconds=s.session_ttl_seconds,
                         warnings=warnings, conversions=notes)


def _owned(meta: SessionMeta | None, caller: str, session_id: str) -> SessionMeta:
    if meta is None or not secrets.compare_digest(meta.owner, caller):
        raise NotFound(f"session {session_id!r} does not exist or has expired", "session_id", session_id)
    return meta


def _check_id(session_id: str) -> None:
    if not SESSION_ID.match(session_id):
        raise NotFound(f"session {session_id!r} does not exist (not a session id)", "session_id", session_id)


async def session_info(state: AppState, caller: str, session_id: str) -> SessionInfo:
    _check_id(session_id)
    meta = await _store(state, "get_meta", state.store.get_meta(session_id))
    return SessionInfo(**info(_owned(meta, caller, session_id)))


async def delete_session(state: AppState, caller: str, session_id: str) -> None:
    _check_id(session_id)
    meta = await _store(state, "get_meta", state.store.get_meta(session_id))
    _owned(meta, caller, session_id)
    await _store(state, "delete", state.store.delete(session_id))


def _session_model(state: AppState, meta: SessionMeta) -> LoadedModel:
    m = state.models.get(meta.model)
    if m is None or m.sha256 != meta.checkpoint_sha256:
        have = "not loaded" if m is None else f"loaded with weights {m.sha256[:12]}"
        raise Conflict(f"session was written by model {meta.model!r} with weights "
                       f"{meta.checkpoint_sha256[:12]}; that model is {have} on this server",
                       "checkpoint_sha256", meta.checkpoint_sha256)
    return m


def _options(state: AppState, m: LoadedModel, inp: RetrieveInput) -> tuple[int, str]:
    o = inp.options
    steps = m.default_read_steps if o.steps is None else o.steps
    if steps > state.settings.max_read_steps:
        raise BadInput(f"steps: {steps} exceeds the limit of {state.settings.max_read_steps}", "steps", steps)
    output = o.output or ("png" if m.is_image else "bits")
    if output == "png" and not m.is_image:
        raise BadInput(f"output: png needs an image model; {m.name} takes {list(m.input_shape)}", "output", output)
    if output == "bits" and m.kind != "binary":
        raise BadInput(f"output: bits needs a binary model; {m.name} is {m.kind}", "output", output)
    _check_output_size(state, m, len(inp.queries.items), steps, o.trajectory, o.top_k or 0, o.samples or 0)
    return steps, output


def _check_output_size(state: AppState, m: LoadedModel, queries: int, steps: int, trajectory: bool,
                       top_k: int, samples: int) -> None:
    """Refuse up front (413) a retrieve whose answer would hold more than EBMM_MAX_OUTPUT_VALUES
    pattern values: queries x (iterates returned + candidates + samples) x pattern size. The work
    (descents x steps) is bounded by the same product, since each returned value is one descent's."""
    per_query = (steps + 1 if trajectory else 1) + top_k + samples
    values = queries * per_query * math.prod(m.input_shape)
    limit = state.settings.max_output_values
    if values > limit:
        raise TooLarge(f"the answer would hold {values:,} values ({queries} queries x {per_query} patterns each "
                       f"[{'steps + 1 iterates' if trajectory else 'the result'}"
                       f"{f' + {top_k} candidates' if top_k else ''}{f' + {samples} samples' if samples else ''}] "
                       f"x {math.prod(m.input_shape):,} values), over the limit of {limit:,} "
                       "(EBMM_MAX_OUTPUT_VALUES): send fewer queries, fewer steps, or no trajectory",
                       "queries", queries)


def _encode(x: np.ndarray, output: str) -> str | list[Any]:
    if output == "png":
        return encode_png(x)
    if output == "bits":
        return "".join("1" if v >= 0.5 else "0" for v in x.reshape(-1))
    return np.round(x, 4).tolist()


def _results(iterates: torch.Tensor, energies: torch.Tensor, output: str, trajectory: bool,
             fam: torch.Tensor, threshold: float | None, cands: Any = None, drawn: Any = None,
             alt_threshold: float | None = None) -> list[Retrieved]:
    with gc_paused():
        return _build_results(iterates, energies, output, trajectory, fam, threshold, cands, drawn, alt_threshold)


@dataclass
class NpyAnswer:
    """A retrieve answered as .npy: float32 (N, *S) restored patterns, or (K+1, N, *S) with trajectory (uint8
    x 255 when asked); per-query numbers in headers."""
    body: bytes
    headers: dict[str, str]

    @classmethod
    def of(cls, patterns: torch.Tensor, energies: torch.Tensor, fam: torch.Tensor, threshold: float | None,
           steps: int, dtype: str = "float32") -> NpyAnswer:
        headers = {"X-EBMM-Shape": ",".join(map(str, patterns.shape)), "X-EBMM-Steps": str(steps),
                   "X-EBMM-Energies": ",".join(f"{e:.6g}" for e in energies.tolist()),
                   "X-EBMM-Familiarity": ",".join(f"{f:.6f}" for f in fam.tolist())}
        if threshold is not None:
            headers["X-EBMM-Match"] = ",".join("1" if f >= threshold else "0" for f in fam.tolist())
            headers["X-EBMM-Match-Threshold"] = f"{threshold:.6g}"
        return cls(npy.dump(patterns.numpy(), dtype), headers)


def _build_results(iterates: torch.Tensor, energies: torch.Tensor, output: str, trajectory: bool,
                   fam: torch.Tensor, threshold: float | None, cands: Any, drawn: Any,
                   alt_threshold: float | None) -> list[Retrieved]:
    it, en = iterates.numpy(), energies.numpy()                   # (K+1, B, *S), (K+1, B)
    return [Retrieved(index=b, pattern=_encode(it[-1, b], output), energy=float(en[-1, b]),
                      energies=[float(e) for e in en[:, b]],
                      trajectory=[_encode(it[k, b], output) for k in range(it.shape[0])] if trajectory else None,
                      familiarity=round(float(fam[b]), 6),
                      match=None if threshold is None else bool(fam[b] >= threshold),
                      candidates=None if cands is None else _alternatives(
                          cands.patterns[b], cands.familiarity[b], cands.energies[b], int(cands.count[b]), output,
                          alt_threshold),
                      samples=None if drawn is None else _alternatives(
                          drawn[0][b], drawn[1][b], drawn[2][b], drawn[0].shape[1], output, alt_threshold))
            for b in range(it.shape[1])]


def _read_with_familiarity(m: LoadedModel, weights: dict[str, torch.Tensor], x: torch.Tensor,
                           mask: torch.Tensor | None, steps: int, top_k: int | None, samples: int | None,
                           temperature: float, energies: str = "all") -> tuple[Any, torch.Tensor, Any, Any]:
    """The read and each query's familiarity (a masked read keeps the known pixels, so familiarity
    compares them with an unmasked read's recall instead: one more read; energies told the mask score
    the masked read's own recall); top-k candidates and samples when asked. energies="last": only the
    result's energy (an npy answer carries no more)."""
    res = m.memory.read(weights, x, mask, steps, energies=energies)
    if mask is None:
        fam = m.memory.familiarity(weights, x, res.iterates[-1])
    elif m.memory.reads_known_pixels:
        fam = m.memory.familiarity(weights, x, res.iterates[-1], known=mask.bool())
    else:
        free = m.memory.read(weights, x, None, steps, energies="last").iterates[-1]
        fam = m.memory.familiarity(weights, x, free, known=mask.bool())
    cands = None if top_k is None else m.memory.top_k(weights, x, top_k, mask, steps)
    drawn = None if samples is None else m.memory.sample(weights, x, samples, temperature, mask, steps)
    return res, fam, cands, drawn


def _alternatives(patterns: torch.Tensor, fam: torch.Tensor, energies: torch.Tensor, count: int,
                  output: str, threshold: float | None) -> list[Candidate]:
    x = patterns.numpy()
    return [Candidate(pattern=_encode(x[i], output), familiarity=round(float(fam[i]), 6),
                      match=None if threshold is None else bool(fam[i] >= threshold), energy=float(energies[i]))
            for i in range(count)]


async def retrieve(state: AppState, caller: str, session_id: str, inp: RetrieveInput,
                   t: Timings) -> RetrieveResponse | NpyAnswer:
    if state.batcher is None:
        return await _retrieve(state, caller, session_id, inp, t)
    with state.batcher.handling():
        return await _retrieve(state, caller, session_id, inp, t)


async def _retrieve(state: AppState, caller: str, session_id: str, inp: RetrieveInput,
                    t: Timings) -> RetrieveResponse | NpyAnswer:
    s = state.settings
    _check_id(session_id)
    check_count(inp.queries, s.max_patterns)
    with t.stage("store"):
        found = await _store(state, "get", state.store.get(session_id))
    meta = _owned(None if found is None else found[0], caller, session_id)
    m = _session_model(state, meta)
    steps, output = _options(state, m, inp)
    with t.stage("decode"):
        x, notes = await codec(state, _raw_values(inp.queries), to_tensor, inp.queries, m, "queries", s.max_pixels)
        mask = None
        if inp.mask is not None:
            check_count(inp.mask, s.max_patterns)
            raw, mask_notes = await to_thread.run_sync(to_tensor, inp.mask, m, "mask", s.max_pixels,
                                                              limiter=state.codec_threads)
            mask = match_mask(raw, x, inp.mask.field)
            notes = [*notes, *(f"mask: {n}" for n in mask_notes)]      # e.g. a resized mask is said
        weights = unpack_weights(found[1])  # type: ignore[index]
    o = inp.options
    energies = "last" if inp.npy_answer else "all"
    if (state.batcher is not None and mask is None and not o.top_k and not o.samples and m.memory.stacks_weights
            and x.shape[0] <= SMALL_READ):
        res, fam = await _metered(state, "read", m, t, state.batcher.read(
            m, weights, x, steps, energies, o.trajectory, session_key(m.name, meta.weights_token)))
        cands = drawn = None
    else:
        res, fam, cands, drawn = await _model(state, "read", m, t, _read_with_familiarity, m, weights, x, mask,
                                              steps, o.top_k, o.samples, o.temperature, energies)
    threshold = o.match_threshold if o.match_threshold is not None else m.memory.familiarity_threshold
    if inp.npy_answer:
        if o.top_k or o.samples:
            raise BadInput("accept: an application/x-npy answer holds the restored patterns only; ask for "
                           "top_k or samples with a JSON answer", "accept", "application/x-npy")
        with t.stage("encode"):                  # npy.dump: on the loop when small, else off it
            out = res.iterates if o.trajectory else res.iterates[-1]
            return await codec(state, out.numel() // VECTORISED, NpyAnswer.of, out, res.energies[-1], fam,
                               threshold, steps, inp.npy_answer)
    with t.stage("encode"):
        values = (res.iterates.numel() if o.trajectory else res.iterates[-1].numel()) + (
            0 if cands is None else cands.patterns.numel()) + (0 if drawn is None else drawn[0].numel())
        alt = o.match_threshold if o.match_threshold is not None else m.memory.candidate_threshold
        results = await codec(state, values, _results, res.iterates, res.energies, output, o.trajectory, fam,
                               threshold, cands, drawn, alt)
    return RetrieveResponse(session_id=meta.id, model=m.name, steps=steps, output=output,  # type: ignore[arg-type]
                            masked=mask is not None, conversions=notes, results=results, match_threshold=threshold,
                            warnings=input_warnings(x, notes, m, inp.queries.field))


async def export_session(state: AppState, caller: str, session_id: str) -> bytes:
    """The session's written weights and metadata as one safetensors file (see service/transfer.py)."""
    _check_id(session_id)
    found = await _store(state, "get", state.store.get(session_id))
    meta = _owned(None if found is None else found[0], caller, session_id)
    return await to_thread.run_sync(export_bytes, meta, found[1])  # type: ignore[index]


async def import_session(state: AppState, caller: str, body: bytes) -> SessionInfo:
    """A new session from an exported file, refused (409) unless this server serves its checkpoint."""
    name, weights, fields = await to_thread.run_sync(parse_session_file, state, body)
    blob = pack_weights(weights)
    meta = new_meta(state, caller, name, weights, len(blob), fields, ID_BYTES)
    await _store(state, "put", state.store.put(meta, blob, state.settings.session_ttl_seconds))
    state.metrics.sessions_written.labels(name).inc()
    return SessionInfo(**info(meta))


APPEND_ATTEMPTS = 3
CONTINUE_WARNING = ("this model appends by further write steps on the new patterns only, which can disturb "
                    "the patterns stored before (results/append/NAME.json has the measured cost); writing all "
                    "patterns at once recalls them best")


async def append_patterns(state: AppState, caller: str, session_id: str, inp: WriteInput,
                          t: Timings) -> WriteResponse:
    """More patterns into an existing session. The new weights replace the old only if no other
    append changed the session meanwhile (compare-and-set on its version); a lost race is retried
    (the patterns are decoded once: a session's model never changes), and after APPEND_ATTEMPTS
    answered 409."""
    s = state.settings
    _check_id(session_id)
    check_count(inp.patterns, s.max_patterns)
    with t.stage("store"):
        found = await _store(state, "get", state.store.get(session_id))
    m = _session_model(state, _owned(None if found is None else found[0], caller, session_id))
    if inp.model is not None and inp.model != m.name:
        raise BadInput(f"model: the session holds {m.name!r} weights; an append cannot change the model",
                       "model", inp.model)
    with t.stage("decode"):
        x, notes = await codec(state, _raw_values(inp.patterns), to_tensor, inp.patterns, m, "patterns",
                               s.max_pixels)
    for attempt in range(APPEND_ATTEMPTS):
        if attempt:                                   # a lost race: read the session as it is now
            with t.stage("store"):
                found = await _store(state, "get", state.store.get(session_id))
        meta = _owned(None if found is None else found[0], caller, session_id)
        total = meta.patterns + int(x.shape[0])
        if total > max_session_patterns(state):
            raise BadInput(f"patterns: a session of {total} patterns exceeds {max_session_patterns(state)}",
                           "patterns", total)
        weights = unpack_weights(found[1])  # type: ignore[index]
        res = await _model(state, "append", m, t, m.memory.append, weights, x, meta.patterns)
        with t.stage("store"):
            blob = pack_weights(res.weights)
            now = time.time()
            new = SessionMeta(meta.id, meta.model, meta.checkpoint_sha256, meta.owner, meta.input_shape, total,
                              meta.memory_bytes, len(blob), float(res.losses[-1]) if res.losses else 0.0,
                              meta.created_at, now + s.session_ttl_seconds, meta.version + 1, new_weights_token())
            if await _store(state, "replace", state.store.replace(new, blob, s.session_ttl_seconds, meta.version)):
                break
    else:
        raise Conflict(f"session {session_id!r} changed during {APPEND_ATTEMPTS} append attempts; retry",
                       "session_id", session_id)
    warnings = [w for w in (m.memory.capacity_warning(total),
                            CONTINUE_WARNING if m.memory.session_append_rule(weights) == "continue" else None) if w]
    warnings += input_warnings(x, notes, m, inp.patterns.field)
    return WriteResponse(**info(new), writing_losses=res.losses, ttl_seconds=s.session_ttl_seconds,
                         warnings=warnings, conversions=notes)
