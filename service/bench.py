"""`ebmm bench-service`: concurrent clients (httpx, or plain http.client threads) against a running service on loopback.

Reports requests/s and p50/p99 latency for write and retrieve, and the share of each request spent
outside the model: 1 - (model time from the Server-Timing header) / (latency seen by the client).
"""
from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import platform
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

FOOTNOTE = ("req/s, p50 and p99 count answered requests; `refused`: the others (503 when the model pool is full, "
            "which these clients resend at once, ignoring Retry-After). "
            "Outside-model share = 1 - model time (Server-Timing `model`) / client latency; with more "
            "clients than pool threads it includes waiting for a thread. `healthz` rows (--floor): GET /healthz, "
            "which does no work: the HTTP stack's own ceiling with these clients on this machine. Reads per batched "
            "call: the reads each model call of the run served (`ebmm_read_batch_requests` in /metrics; n/a without "
            "batching). Model CPU: the CPU time of the model call's thread (Server-Timing `model-cpu`); with one "
            "torch thread, below the model time when that thread waited for the GIL or a core.")


def _png(x: np.ndarray) -> bytes:
    """(C, H, W) in [0, 1] -> PNG bytes."""
    u8 = (x * 255).round().astype(np.uint8)
    im = Image.fromarray(u8[0]) if u8.shape[0] == 1 else Image.fromarray(u8.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def workload(info: dict[str, Any], n: int, seed: int = 0, payload: str = "png", answer: str = "float32"
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Request kwargs for one write and one retrieve (bottom half of every query occluded; with PNG a mask
    says so, with .npy bodies, which take no mask, the read restores it unaided)."""
    rng = np.random.default_rng(seed)
    shape, binary = tuple(info["input_shape"]), info["kind"] == "binary"
    x = rng.random((n, *shape)).astype(np.float32)
    x = (x >= 0.5).astype(np.float32) if binary else x
    if payload == "npy":
        q = x.copy()
        if len(shape) == 3:
            q[..., shape[1] // 2:, :] = 0.0                             # bottom half of every image
        else:
            q[..., shape[0] // 2:] = 0.0                                # second half of every string
        npy = {"content-type": "application/x-npy"}
        return ({"content": _npy(x), "headers": npy, "params": {"model": info["name"]}},
                {"content": _npy(q), "headers": {**npy, "accept": "application/x-npy"
                                                 + ("" if answer == "float32" else f"; dtype={answer}")}})
    if len(shape) == 1:
        bits = ["".join(str(int(v)) for v in row) for row in x]
        queries = [b[: len(b) // 2] + "0" * (len(b) - len(b) // 2) for b in bits]
        mask = "1" * (len(bits[0]) // 2) + "0" * (len(bits[0]) - len(bits[0]) // 2)
        return ({"json": {"model": info["name"], "patterns": {"bits": bits}}},
                {"json": {"queries": {"bits": queries}, "mask": {"bits": [mask]}}})
    q = x.copy()
    q[..., shape[1] // 2:, :] = 0.0
    m = np.ones(shape, np.float32)
    m[..., shape[1] // 2:, :] = 0.0
    write = {"files": [("files", (f"{i}.png", _png(p), "image/png")) for i, p in enumerate(x)],
             "data": {"model": info["name"]}}
    read = {"files": [("files", (f"{i}.png", _png(p), "image/png")) for i, p in enumerate(q)]
            + [("masks", ("mask.png", _png(m), "image/png"))]}
    return write, read


def _server_timing(header: str) -> dict[str, float]:
    out = {}
    for part in header.split(","):
        name, _, dur = part.strip().partition(";dur=")
        if dur:
            out[name] = float(dur)
    return out


async def _drive(client: httpx.AsyncClient, path: str | list[str], kwargs: dict[str, Any] | None, n: int,
                 concurrency: int, created: list[str]) -> dict[str, Any]:
    """n POSTs to path (or to each of several paths in turn) from `concurrency` concurrent clients; with
    kwargs None, GETs (the HTTP floor: GET /healthz does no work)."""
    lat, timings, statuses = [], [], {}
    paths = [path] if isinstance(path, str) else path
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            t0 = time.perf_counter()
            r = (await client.get(paths[i % len(paths)]) if kwargs is None
                 else await client.post(paths[i % len(paths)], **kwargs))
            ms = (time.perf_counter() - t0) * 1000
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.is_success:
                created.extend([r.json()["session_id"]] if r.status_code == 201 else [])
                lat.append(ms)
                timings.append({**_server_timing(r.headers.get("server-timing", "")), "client": ms})

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return _summary(lat, timings, statuses, wall, concurrency)


def _drive_raw(url: str, api_key: str | None, path: str | list[str], kwargs: dict[str, Any] | None, n: int,
               concurrency: int, created: list[str]) -> dict[str, Any]:
    """As `_drive`, from `concurrency` threads each holding one keep-alive http.client connection: the
    client's own time per request is a fraction of httpx's, so the latency is more the server's."""
    lat, timings, statuses = [], [], {}
    paths = [path] if isinstance(path, str) else path
    todo = iter(range(n))
    parts = urlsplit(url)
    base = {"X-API-Key": api_key} if api_key else {}

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=300)
        try:
            for i in todo:
                target = paths[i % len(paths)]
                t0 = time.perf_counter()
                if kwargs is None:
                    conn.request("GET", target, headers=base)
                else:
                    query = f"?{urlencode(kwargs['params'])}" if kwargs.get("params") else ""
                    conn.request("POST", target + query, body=kwargs["content"], headers={**base, **kwargs["headers"]})
                r = conn.getresponse()
                body = r.read()
                ms = (time.perf_counter() - t0) * 1000
                statuses[r.status] = statuses.get(r.status, 0) + 1
                if 200 <= r.status < 300:
                    created.extend([json.loads(body)["session_id"]] if r.status == 201 else [])
                    lat.append(ms)
                    timings.append({**_server_timing(r.getheader("server-timing") or ""), "client": ms})
        finally:
            conn.close()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    return _summary(lat, timings, statuses, wall, concurrency)


def _summary(lat: list[float], timings: list[dict[str, float]], statuses: dict[int, int], wall: float,
             concurrency: int) -> dict[str, Any]:
    a = np.array(lat) if lat else np.array([np.nan])
    outside = [1 - t.get("model", 0) / t["client"] for t in timings]
    stages = sorted({k for t in timings for k in t})
    return {"concurrency": concurrency, "requests": sum(statuses.values()), "statuses": statuses,
            "requests_per_s": round(len(lat) / wall, 3), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1),
            "outside_model_share_median": round(float(np.median(outside)), 4) if outside else None,
            "outside_model_share_mean": round(float(np.mean(outside)), 4) if outside else None,
            "median_ms_by_stage": {k: round(float(np.median([t.get(k, 0) for t in timings])), 2)
                                   for k in stages},
            # what the client waited beyond the server's total: the answer written out, the HTTP stack, the client
            "after_server_ms_median": (round(float(np.median([t["client"] - t["total"] for t in timings])), 2)
                                       if timings and all("total" in t for t in timings) else None)}


async def _batch_counts(c: httpx.AsyncClient, model: str) -> tuple[float, float] | None:
    """(reads, batched calls) so far for model from /metrics (ebmm_read_batch_requests); None without."""
    r = await c.get("/metrics")
    if r.status_code != 200:
        return None
    got = {s.name: s.value for f in text_string_to_metric_families(r.text) if f.name == "ebmm_read_batch_requests"
           for s in f.samples if s.labels.get("model") == model}
    return (got.get("ebmm_read_batch_requests_sum", 0.0), got.get("ebmm_read_batch_requests_count", 0.0))


def _reads_per_batch(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    if before is None or after is None or after[1] == before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 2)


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=300, limits=limits) as c:
        models = (await c.get("/v1/models")).raise_for_status().json()["models"]
        name = args.model or next(m["name"] for m in models if m["default"])
        info = next(m for m in models if m["name"] == name)
        write, read = workload(info, args.patterns, payload=args.payload,
                               answer=getattr(args, "answer_dtype", "float32"))
        created = [(await c.post("/v1/sessions", **write)).raise_for_status().json()["session_id"]
                   for _ in range(args.sessions)]
        targets = [f"/v1/sessions/{sid}/retrieve" for sid in created]   # retrieves cycle over the sessions
        (await c.post(targets[0], **read)).raise_for_status()     # warm-up
        runs = []
        for conc in (int(v) for v in args.concurrency.split(",")):
            if args.client == "raw":              # blocking threads: off the loop that holds the httpx client
                def raw(path: str | list[str], kw: dict[str, Any] | None, conc: int = conc) -> Any:
                    return asyncio.to_thread(_drive_raw, args.url, args.api_key, path, kw, args.requests, conc,
                                             created)
                w = None if args.skip_write else await raw("/v1/sessions", write)
                before = await _batch_counts(c, name)
                r = await raw(targets, read)
                r["reads_per_batched_call"] = _reads_per_batch(before, await _batch_counts(c, name))
                h = await raw("/healthz", None) if args.floor else None
            else:
                w = (await _drive(c, "/v1/sessions", write, args.requests, conc, created) if not args.skip_write
                     else None)
                before = await _batch_counts(c, name)
                r = await _drive(c, targets, read, args.requests, conc, created)
                r["reads_per_batched_call"] = _reads_per_batch(before, await _batch_counts(c, name))
                h = await _drive(c, "/healthz", None, args.requests, conc, created) if args.floor else None
            runs.append({"concurrency": conc, "write": w, "retrieve": r, "healthz": h})
        for s in created:                                         # leave nothing behind
            await c.delete(f"/v1/sessions/{s}")
    return {"model": {k: info[k] for k in ("name", "kind", "input_shape", "architecture", "memory_floats")},
            "patterns_per_request": args.patterns, "payload": args.payload,
            "answer_dtype": getattr(args, "answer_dtype", "float32"), "client": args.client,
            "sessions": args.sessions, "runs": runs}


def _markdown(res: dict[str, Any]) -> str:
    m = res["model"]
    setup = (f"Model: {m['name']} ({m['architecture']}, {m['kind']}, {m['input_shape']}), "
             f"{res['patterns_per_request']} patterns per request, {res.get('payload', 'png')} bodies"
             f"{' with ' + res['answer_dtype'] + ' .npy answers' if res.get('payload') == 'npy' else ''}, "
             f"{res.get('client', 'httpx')} clients, "
             f"retrieves over {res.get('sessions', 1)} session(s). {res['note']}")
    lines = [f"# Service benchmark ({res['date']})", "", f"Command: `{res['command']}`", "", setup, "",
             f"Machine: {res['machine']}", "",
             "| op | clients | req/s | p50 ms | p99 ms | model ms (median) | model CPU ms (median) "
             "| outside model (median) | refused | reads per batched call |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in res["runs"]:
        for op in ("write", "retrieve", "healthz"):
            s = run.get(op)
            if s is None:                                         # --skip-write, no --floor
                continue
            share = 100 * (s["outside_model_share_median"] or 0)
            refused = sum(v for k, v in s["statuses"].items() if not 200 <= int(k) < 300)
            lines.append(f"| {op} | {run['concurrency']} | {s['requests_per_s']} | {s['p50_ms']} | "
                         f"{s['p99_ms']} | {s['median_ms_by_stage'].get('model', 'n/a')} | "
                         f"{s['median_ms_by_stage'].get('model-cpu', 'n/a')} | {share:.1f}% | "
                         f"{refused} of {s['requests']} | {s.get('reads_per_batched_call') or 'n/a'} |")
    lines += ["", FOOTNOTE, ""] + _stage_table(res)
    return "\n".join(lines)


STAGES = ("body", "route", "parse", "store", "decode", "model", "encode", "total")
STAGE_NOTE = ("Stages (Server-Timing): `body`, the request body arriving; `route`, from the whole body to the "
              "handler (routing, dependencies); `parse`, `store` (the session's weights fetched or put), `decode`, "
              "`model` and `encode`, the handler's own; `total`, the server's time from the request's arrival to "
              "the handler's return. `after`: what the client waited beyond `total` (a JSON answer's "
              "serialisation, the answer written out, the HTTP stack on both sides, the client itself). The "
              "median of each is taken on its own, so they do not add up exactly.")


def _stage_table(res: dict[str, Any]) -> list[str]:
    """Where the requests' time went: the median milliseconds of each Server-Timing stage, per op and clients."""
    rows = []
    for run in res["runs"]:
        for op in ("write", "retrieve"):
            s = run.get(op)
            if not s or "total" not in s["median_ms_by_stage"]:
                continue
            st = s["median_ms_by_stage"]
            after = s.get("after_server_ms_median")
            rows.append(f"| {op} | {run['concurrency']} | " + " | ".join(str(st.get(k, "")) for k in STAGES)
                        + f" | {'n/a' if after is None else after} | {st['client']} |")
    if not rows:
        return []
    return ["## Where the time goes (median ms per stage)", "",
            "| op | clients | " + " | ".join(STAGES) + " | after | client |",
            "|---|---|" + "---|" * (len(STAGES) + 2), *rows, "", STAGE_NOTE, ""]


def _command() -> str:
    """The command line that made the results, without the free-text --note."""
    argv, out, skip = sys.argv[1:], [], False
    for a in argv:
        if skip or a.startswith("--note="):
            skip = False
            continue
        if a == "--note":
            skip = True
            continue
        out.append(a)
    return "ebmm " + shlex.join(out or ["bench-service"])


def _machine() -> str:
    """The CPU the numbers came from (hosts differ from run to run: compare only rows of one file)."""
    from model.bench import cpu_info
    c = cpu_info()
    return f"{c['cpu']}, {c['cores']} cores, {c['ghz']} GHz, {platform.machine()}, Python {platform.python_version()}"


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "client", "httpx") == "raw" and args.payload != "npy":
        print("ebmm bench-service: --client raw sends .npy bodies only; add --payload npy", file=sys.stderr)
        return 2
    res = asyncio.run(_bench(args))
    res = {"command": _command(),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "note": args.note,
           "machine": _machine(), **res}
    for path, text in ((args.out, json.dumps(res, indent=2) + "\n"), (args.md, _markdown(res))):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(_markdown(res))
    return 0
