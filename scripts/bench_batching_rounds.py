"""Batching across requests, every setting side by side in rounds: one local server per setting (in-process
store, all started first and idle while another is measured), then R rounds in which each setting in turn
gets 16 clients sending 1-query `.npy` retrieves over 16 sessions of characters32 (`ebmm bench-service
--client raw`). Timings on a shared 2-core machine drift by tens of percent within minutes, so the
settings are compared round by round and by their medians over rounds, not by runs made minutes apart.

    .venv/bin/python scripts/bench_batching_rounds.py --rounds 5 --out results/bench_service_batching_rounds
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from service.bench import _machine

SETTINGS = {   # name -> EBMM_* environment
    "two model processes (defaults)": {},
    "two model processes, no access log": {"EBMM_ACCESS_LOG": "false"},
    "two model processes, weights sent with every read": {"EBMM_MODEL_CACHE_MB": "0"},
    "one model process": {"EBMM_BATCH_CONCURRENCY": "1"},
    "in the server, two batch threads": {"EBMM_MODEL_PROCESS": "false"},
    "in the server, one batch thread": {"EBMM_MODEL_PROCESS": "false", "EBMM_BATCH_CONCURRENCY": "1"},
    "batching off": {"EBMM_BATCH_READS": "false"},
}
EBMM = str(Path(sys.executable).with_name("ebmm"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(url: str, timeout: float = 180) -> None:
    """Until /readyz answers and every model process the server starts is up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                procs = json.load(r).get("model_processes")
            if procs is None or procs["up"] == procs["size"]:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up in {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--out", default="results/bench_service_batching_rounds")
    args = ap.parse_args()
    servers, urls = [], {}
    base = {k: v for k, v in os.environ.items() if not k.startswith("EBMM_")}
    try:
        for name, env in SETTINGS.items():
            port = _port()
            urls[name] = f"http://127.0.0.1:{port}"
            servers.append(subprocess.Popen(
                [EBMM, "serve", "--host", "127.0.0.1", "--port", str(port)],
                env={**base, "EBMM_POOL_QUEUE": "64", **env},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for url in urls.values():
            _up(url)
        rounds: dict[str, list[dict]] = {name: [] for name in SETTINGS}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for name, url in urls.items():
                    out = Path(tmp) / "run.json"
                    subprocess.run([EBMM, "bench-service", "--url", url, "--payload", "npy", "--client", "raw",
                                    "--patterns", "1", "--sessions", "16", "--skip-write", "--requests",
                                    str(args.requests), "--concurrency", "16", "--out", str(out), "--md",
                                    str(Path(tmp) / "run.md")], check=True, stdout=subprocess.DEVNULL)
                    run = json.loads(out.read_text())["runs"][0]["retrieve"]
                    rounds[name].append({k: run.get(k) for k in ("requests_per_s", "p50_ms", "p99_ms",
                                                                  "reads_per_batched_call")})
                    print(f"round {r + 1} {name}: {run['requests_per_s']} retrieves/s", flush=True)
    finally:
        for p in servers:
            p.terminate()
        for p in servers:
            p.wait(30)
    off = statistics.median(x["requests_per_s"] for x in rounds["batching off"])
    summary = {name: {"requests_per_s_median": round(statistics.median(x["requests_per_s"] for x in rs), 1),
                      "p99_ms_median": round(statistics.median(x["p99_ms"] for x in rs), 1),
                      "vs_batching_off": round(statistics.median(x["requests_per_s"] for x in rs) / off, 2)}
               for name, rs in rounds.items()}
    cmd = f".venv/bin/python scripts/bench_batching_rounds.py --rounds {args.rounds} --requests {args.requests} " \
          f"--out {args.out}"
    res = {"command": cmd, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": _machine(),
           "load": "16 clients (raw http.client threads) sending 1-query .npy retrieves over 16 sessions of "
                   "characters32; client and servers share the machine's cores; EBMM_POOL_QUEUE=64",
           "settings": SETTINGS, "rounds": rounds, "summary": summary}
    Path(args.out + ".json").write_text(json.dumps(res, indent=1) + "\n")
    lines = [f"# Batching across requests, side by side ({res['date']})", "", f"Command: `{cmd}`", "",
             f"Machine: {res['machine']}", "", f"Load: {res['load']}.", "",
             "| setting | retrieves/s (median of rounds) | x batching off | p99 ms (median) | each round's retrieves/s "
             "| reads per batched call |", "|---|---|---|---|---|---|"]
    for name, rs in rounds.items():
        s = summary[name]
        per = " / ".join(f"{x['requests_per_s']:.0f}" for x in rs)
        reads = " / ".join("n/a" if x["reads_per_batched_call"] is None else f"{x['reads_per_batched_call']:.2f}"
                           for x in rs)
        lines.append(f"| {name} | {s['requests_per_s_median']} | {s['vs_batching_off']} | {s['p99_ms_median']} "
                     f"| {per} | {reads} |")
    lines += ["", "Settings: " + "; ".join(f"{n}: {' '.join(f'{k}={v}' for k, v in e.items()) or 'defaults'}"
                                           for n, e in SETTINGS.items()) + "."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
