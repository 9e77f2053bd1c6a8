"""A Python client for the ebmm service that needs only httpx, numpy and Pillow.

    from service.client import Client
    c = Client("http://127.0.0.1:8000", api_key=None)
    s = c.write(images)                          # numpy (N, H, W) / (N, C, H, W) / (N, D) in [0, 1], or PIL images
    r = s.retrieve(queries, mask=known, top_k=3, samples=8)   # r.patterns: (B, *input_shape); r.energies: (B,)
    s.append(more)                               # more patterns into the same session
    blob = s.export(); s2 = c.import_session(blob); s.delete()

Errors are raised as `EBMMError`, carrying the problem+json fields (status, title, detail, field, value).
"""
from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from PIL import Image

SESSION_FILE = "application/vnd.ebmm.session+safetensors"
Images = np.ndarray | Sequence[Image.Image] | Sequence[str]


class EBMMError(Exception):
    """An error answer of the service (RFC 9457 problem+json), or a transport failure (status 0)."""

    def __init__(self, status: int, title: str, detail: str, field: str | None = None, value: Any = None,
                 type: str = "", body: dict[str, Any] | None = None):
        super().__init__(f"{status} {title}: {detail}")
        self.status, self.title, self.detail, self.field, self.value = status, title, detail, field, value
        self.type, self.body = type, body or {}


def _batch(items: Images) -> dict[str, Any]:
    """Patterns as the API's PatternBatch: bit strings, PNG files (PIL images) or nested arrays."""
    if isinstance(items, np.ndarray):
        a = np.asarray(items, dtype=np.float64)
        if a.ndim < 2:
            raise ValueError(f"expected a batch (N, ...) of patterns, got an array of shape {a.shape}")
        return {"arrays": np.round(a, 6).tolist()}
    items = list(items)
    if items and all(isinstance(i, str) for i in items):
        return {"bits": items}
    if items and all(isinstance(i, Image.Image) for i in items):
        out = []
        for im in items:
            buf = io.BytesIO()
            im.save(buf, "PNG")
            out.append(base64.b64encode(buf.getvalue()).decode())
        return {"images": out}
    raise ValueError("patterns: give a numpy array (N, ...), a list of PIL images, or a list of 0/1 strings")


@dataclass
class Retrieval:
    """One retrieve call: restored patterns, their energies, and the server's full answer."""
    patterns: np.ndarray                 # (B, *input_shape) floats in [0, 1]
    energies: np.ndarray                 # (B,) energy of the returned iterate
    results: list[dict[str, Any]]        # per query, as the API returns it (extra fields included)
    response: dict[str, Any] = field(repr=False, default_factory=dict)


class Session:
    """A written memory session on a server; methods call the session's routes."""

    def __init__(self, client: Client, info: dict[str, Any]):
        self.client, self.info = client, info

    @property
    def id(self) -> str:
        return str(self.info["session_id"])

    @property
    def model(self) -> str:
        return str(self.info["model"])

    @property
    def patterns(self) -> int:
        return int(self.info["patterns"])

    def __repr__(self) -> str:
        return f"Session({self.id[:10]}..., model={self.model!r}, patterns={self.patterns})"

    def retrieve(self, queries: Images, mask: Images | None = None, steps: int | None = None,
                 top_k: int | None = None, samples: int | None = None, **options: Any) -> Retrieval:
        """Restore queries; mask marks known pixels (>= 0.5), kept fixed. top_k: the k best candidates
        per query (in `results[i]["candidates"]`); samples: stochastic reads (`results[i]["samples"]`).
        Extra options (trajectory=True, temperature=..., match_threshold=...) go to the API as they are."""
        body: dict[str, Any] = {"queries": _batch(queries), "output": "array", **options}
        for key, value in (("mask", None if mask is None else _batch(mask)), ("steps", steps),
                           ("top_k", top_k), ("samples", samples)):
            if value is not None:
                body[key] = value
        r = self.client._call("POST", f"/v1/sessions/{self.id}/retrieve", json=body).json()
        res = r["results"]
        return Retrieval(np.array([x["pattern"] for x in res], dtype=np.float32),
                         np.array([x["energy"] for x in res], dtype=np.float64), res, r)

    def candidates(self, r: Retrieval, i: int) -> list[tuple[np.ndarray, float]]:
        """Query i's top-k candidates from a retrieve with top_k: (pattern array, familiarity), best first."""
        return [(np.array(c["pattern"], dtype=np.float32), float(c["familiarity"]))
                for c in r.results[i].get("candidates") or []]

    def append(self, patterns: Images) -> Session:
        """Write more patterns into this session (POST /v1/sessions/{id}/patterns)."""
        self.info = self.client._call("POST", f"/v1/sessions/{self.id}/patterns",
                                      json={"patterns": _batch(patterns)}).json()
        return self

    def refresh(self) -> Session:
        self.info = self.client._call("GET", f"/v1/sessions/{self.id}").json()
        return self

    def export(self) -> bytes:
        """The session as a safetensors file (weights plus metadata), for `Client.import_session`."""
        return self.client._call("GET", f"/v1/sessions/{self.id}/export").content

    def delete(self) -> None:
        self.client._call("DELETE", f"/v1/sessions/{self.id}")


class Client:
    """`Client(url, api_key)`: write sessions, open existing ones, import exported files."""

    def __init__(self, url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 60.0,
                 transport: httpx.BaseTransport | None = None):
        headers = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise EBMMError(0, "Unreachable", f"{method} {self.http.base_url}{path}: {e}") from e
        if r.status_code >= 400:
            try:
                b = r.json()
            except ValueError:
                b = {}
            raise EBMMError(r.status_code, str(b.get("title", r.reason_phrase)), str(b.get("detail", r.text[:300])),
                            b.get("field"), b.get("value"), str(b.get("type", "")), b)
        return r

    def models(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/v1/models").json()["models"])

    def write(self, patterns: Images, model: str | None = None) -> Session:
        """Write patterns into a new session (model: a name from `models()`; default: the server's)."""
        body: dict[str, Any] = {"patterns": _batch(patterns)}
        if model is not None:
            body["model"] = model
        return Session(self, self._call("POST", "/v1/sessions", json=body).json())

    def session(self, session_id: str) -> Session:
        return Session(self, self._call("GET", f"/v1/sessions/{session_id}").json())

    def import_session(self, data: bytes) -> Session:
        """A new session on this server from `Session.export()` bytes (409 if the checkpoint differs)."""
        info = self._call("POST", "/v1/sessions/import", content=data, headers={"content-type": SESSION_FILE}).json()
        return Session(self, info)
