"""Session files: export a session's written weights as safetensors with its metadata, and import one
into a new session on any server that serves the same checkpoint (byte-identical retrievals)."""
from __future__ import annotations

import json
import math
import secrets
import struct
import time
from typing import Any

import torch
from model.serving import STATE
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from .errors import BadInput, Conflict
from .state import AppState
from .store import SessionMeta, new_weights_token

FORMAT, VERSION = "ebmm-session", "1"
MAX_HEADER = 1 << 20                    # bytes of safetensors JSON header we are willing to parse


def max_session_patterns(state: AppState) -> int:
    """Patterns one session may hold after appends (and so may carry when imported)."""
    return state.settings.max_patterns * 16


def export_bytes(meta: SessionMeta, blob: bytes) -> bytes:
    """The stored weights re-saved with the session's metadata in the safetensors header."""
    weights = st_load(blob)
    info = {"format": FORMAT, "format_version": VERSION, "model": meta.model,
            "checkpoint_sha256": meta.checkpoint_sha256, "patterns": str(meta.patterns),
            "input_shape": json.dumps(meta.input_shape), "writing_loss": repr(meta.writing_loss),
            "created_at": repr(meta.created_at), "exported_from": meta.id}
    return st_save(weights, metadata=info)


def _header(blob: bytes) -> dict[str, Any]:
    """The safetensors JSON header (8-byte little-endian length, then JSON), refusing what is not one."""
    if len(blob) < 8:
        raise BadInput(f"body: {len(blob)} bytes is not a safetensors session file", "body", len(blob))
    (n,) = struct.unpack("<Q", blob[:8])
    if n > MAX_HEADER or 8 + n > len(blob):
        raise BadInput(f"body: header length {n} does not fit a safetensors session file of {len(blob)} bytes",
                       "body", len(blob))
    try:
        header = json.loads(blob[8:8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadInput(f"body: the safetensors header is not JSON ({e})", "body", len(blob)) from e
    if not isinstance(header, dict):
        raise BadInput("body: the safetensors header is not a JSON object", "body", len(blob))
    return header


def _field(info: dict[str, str], name: str) -> str:
    if name not in info:
        raise BadInput(f"metadata.{name}: missing from the session file", f"metadata.{name}", None)
    return info[name]


def parse_session_file(state: AppState, blob: bytes) -> tuple[str, dict[str, torch.Tensor], dict[str, Any]]:
    """Validate a session file against the loaded models: (model name, weights, fields for the meta).
    422 for a malformed file, 409 when its model or checkpoint is not the one this server serves."""
    info = _header(blob).get("__metadata__") or {}
    if not isinstance(info, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in info.items()):
        raise BadInput("metadata: the safetensors metadata must map strings to strings", "metadata", str(type(info)))
    if info.get("format") != FORMAT:
        raise BadInput(f"metadata.format: {info.get('format')!r} is not an {FORMAT!r} file (export one with "
                       "GET /v1/sessions/{id}/export)", "metadata.format", info.get("format"))
    if info.get("format_version") != VERSION:
        raise BadInput(f"metadata.format_version: {info.get('format_version')!r}; this server reads {VERSION!r}",
                       "metadata.format_version", info.get("format_version"))
    name, sha = _field(info, "model"), _field(info, "checkpoint_sha256")
    m = state.models.get(name)
    if m is None:
        raise Conflict(f"model: {name!r} is not served here (served: {', '.join(state.models)})", "model", name)
    if sha != m.sha256:
        raise Conflict(f"checkpoint_sha256: the session was written with {name!r} weights {sha[:12]}, this server "
                       f"serves {m.sha256[:12]}; its weights would mean something else here", "checkpoint_sha256", sha)
    try:
        weights = st_load(blob)
    except Exception as e:                     # safetensors raises its own error type for damaged files
        raise BadInput(f"body: the tensors cannot be read ({e})", "body", len(blob)) from e
    try:
        m.memory.check_session(weights)
    except ValueError as e:
        got = {n: tuple(t.shape) for n, t in weights.items()}
        raise BadInput(f"tensors: {e} ({name!r})", "tensors", got) from e
    for n, t in weights.items():
        if n.startswith(STATE) and t.dtype == torch.uint8:     # stored patterns as bits (a gated RNN's state)
            if bool((t > 1).any()):
                raise BadInput(f"tensors.{n}: uint8 patterns must be bits (0 or 1)", f"tensors.{n}", int(t.max()))
            continue
        if t.dtype != torch.float32 or not bool(torch.isfinite(t).all()):
            raise BadInput(f"tensors.{n}: must be finite float32, got {t.dtype}", f"tensors.{n}", str(t.dtype))
    try:
        patterns = int(_field(info, "patterns"))
        loss = float(info.get("writing_loss", "0"))
    except (TypeError, ValueError) as e:
        raise BadInput(f"metadata: {e}", "metadata.patterns", info.get("patterns")) from e
    if not 1 <= patterns <= max_session_patterns(state) or not math.isfinite(loss):
        raise BadInput(f"metadata.patterns: {patterns} (and writing_loss {loss}) out of range", "metadata.patterns",
                       patterns)
    if m.memory.ckpt.model.energy.append_state_grows:          # one row of the append state per stored pattern
        for n, t in weights.items():
            if n.startswith(STATE) and t.shape[0] != patterns:
                raise BadInput(f"tensors.{n}: {t.shape[0]} stored patterns, but metadata.patterns says {patterns}",
                               f"tensors.{n}", t.shape[0])
    return name, weights, {"patterns": patterns, "writing_loss": loss}


def new_session_id(nbytes: int) -> str:
    """A random URL-safe id that starts with a letter or digit: one starting with "-" would read as an option
    on a command line (`ebmm client retrieve ID ...`)."""
    while True:
        sid = secrets.token_urlsafe(nbytes)
        if sid[0].isalnum():
            return sid


def written_bytes(weights: dict[str, torch.Tensor]) -> int:
    """Bytes of the written slice (float32), the append state left out (that counts in stored_bytes)."""
    return sum(t.numel() * 4 for n, t in weights.items() if not n.startswith(STATE))


def new_meta(state: AppState, caller: str, name: str, weights: dict[str, torch.Tensor], blob_len: int,
             fields: dict[str, Any], id_bytes: int) -> SessionMeta:
    m = state.models[name]
    now = time.time()
    return SessionMeta(new_session_id(id_bytes), name, m.sha256, caller, list(m.input_shape),
                       fields["patterns"], written_bytes(weights), blob_len,
                       fields["writing_loss"], now, now + state.settings.session_ttl_seconds,
                       weights_token=new_weights_token())
