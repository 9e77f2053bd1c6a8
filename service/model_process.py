"""Batched reads in model processes of their own, so that they do not share the event loop's GIL.

A torch call gives the GIL up and takes it back around every op, and a batched read of a slot memory is a
few hundred small ops, so in one process the batch thread and the event loop take turns at one GIL. A model
process loads the same checkpoints (checked by their SHA-256) and runs `Memory.read_many` for the batch
lane's thread, which waits on a pipe with the GIL released. The pipe costs a round trip and copies
(results/explore/model-process-roundtrip.json), so a lone read stays in the server (service/batching.py:
ReadBatcher._where). Every setting side by side: results/bench_service_batching_rounds.md.

Messages are a JSON header and raw float32 tensors (`pack`, `unpack`): no pickle crosses the pipe. A process
keeps the session weights it was sent under their `session_key` (`WeightsCache`, EBMM_MODEL_CACHE_MB), so
that later batches send the queries alone; the server mirrors each process's cache. The
processes start in the background, and a process that dies, breaks the protocol or stays silent for
CALL_SECONDS is killed and replaced in the background (after a wait that grows while replacements keep
failing); until one is up the batch lane reads in the server's own process, so a read never fails because
a model process is missing.
"""
from __future__ import annotations

import json
import logging
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger("uvicorn.error.ebmm")

_LEN = struct.Struct("<I")
STARTUP_SECONDS = 120.0          # loading every checkpoint and warming it up
CALL_SECONDS = 60.0              # a batched read takes milliseconds; a process silent this long is broken


class ModelProcessError(RuntimeError):
    """A model process stopped, could not start, or broke the protocol."""


class CheckpointMismatch(ModelProcessError):
    """The model process loaded other checkpoints than the server: starting another cannot help."""


class ModelCallFailed(ModelProcessError):
    """The model process answered that a call raised; the process itself is fine."""


class WeightsCache:
    """Session weights a model process keeps between batches, so that the server sends a session's weights
    once instead of with every read: least recently used first out beyond `budget` bytes (float32). The
    server keeps a mirror of each process's cache (the same class, holding sizes alone): both see the same
    puts and gets in the same order, so the mirror knows which weights the process holds without asking.
    Keys name one stored set of a session's weights (`session_key`: a random token per write, append and
    import), which no other weights ever have."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Any:
        """The value kept under key (as most recently used), or None."""
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: str, value: Any, size: int) -> None:
        """Keep value under key, dropping the least recently used beyond the budget; a value larger than
        the budget is not kept."""
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= old[1]
        if size > self.budget:
            return
        while self._items and self.used + size > self.budget:
            _, (_, gone) = self._items.popitem(last=False)
            self.used -= gone
        self._items[key] = (value, size)
        self.used += size

    def clear(self) -> None:
        self._items.clear()
        self.used = 0


def session_key(model: str, weights_token: str) -> str | None:
    """What names a session's stored weights in the caches: its record's `weights_token`, new and random with
    every write, append and import (so a session that the store rolled back and appended to again gets a new
    one); None for records from before tokens, whose weights are sent with every read."""
    return f"{model}/{weights_token}" if weights_token else None


def _nbytes(tensors: list[Tensor]) -> int:
    return sum(4 * t.numel() for t in tensors)


def pack(meta: dict[str, Any], tensors: list[Tensor]) -> bytes:
    """meta (JSON-able) and float32 tensors -> one message: u32 header length, JSON header, raw data."""
    arrays = [np.asarray(t.detach().cpu().numpy(), dtype=np.float32, order="C") for t in tensors]
    head = json.dumps({"meta": meta, "shapes": [a.shape for a in arrays]}, separators=(",", ":")).encode()
    return b"".join([_LEN.pack(len(head)), head, *(a.tobytes() for a in arrays)])


def unpack(buf: bytes) -> tuple[dict[str, Any], list[Tensor]]:
    """The inverse of `pack`; ModelProcessError on a message that does not add up."""
    try:
        (n,) = _LEN.unpack_from(buf, 0)
        head = json.loads(buf[_LEN.size:_LEN.size + n])
        at, out = _LEN.size + n, []
        for shape in head["shapes"]:
            count = int(np.prod(shape, dtype=np.int64))
            t = torch.empty(shape)                      # torch's allocator: aligned as torch's kernels like
            t.numpy().reshape(-1)[:] = np.frombuffer(buf, np.float32, count, at)
            out.append(t)
            at += 4 * count
        if at != len(buf):
            raise ValueError(f"{len(buf) - at} bytes left over")
        return head["meta"], out
    except (struct.error, ValueError, KeyError, TypeError, RuntimeError, OverflowError) as e:
        raise ModelProcessError(f"malformed model-process message: {e}") from e


def _main(conn: Connection, folder: str, device: str, torch_threads: int, compile_reads: str = "",
          cache_bytes: int = 0) -> None:
    """The model process: load the checkpoints, say which, then answer read_many requests until EOF. A
    session whose weights came with a key is kept (`WeightsCache`, cache_bytes): later calls send the key
    alone. A key it does not hold (its cache and the server's mirror disagree) is answered `missing`, and
    the server sends everything again with `reset`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)       # Ctrl-C stops the server, which closes the pipe
    torch.set_num_threads(torch_threads)
    logging.basicConfig(level=logging.WARNING, format="ebmm model process: %(message)s")
    from .registry import load_models                  # imported here: the child imports what it needs
    models = load_models(Path(folder), torch.device(device), compile_reads)
    try:
        conn.send_bytes(pack({"models": {n: m.sha256 for n, m in models.items()}}, []))
    except OSError:                                    # the server went away while this one loaded
        return
    cache = WeightsCache(cache_bytes)
    while True:
        try:
            buf = conn.recv_bytes()
        except (EOFError, OSError):
            return
        c0 = time.process_time()
        try:
            meta, tensors = unpack(buf)
            m = models[meta["model"]]
            names, counts = meta["names"], meta["counts"]
            keys, sent = meta.get("keys") or [None] * len(counts), meta.get("sent") or [True] * len(counts)
            if meta.get("reset"):
                cache.clear()
            weights, at, missing = [], 0, []
            for key, here in zip(keys, sent, strict=True):         # in order: as the server's mirror did
                if here:
                    part = tensors[at:at + len(names)]
                    at += len(names)
                    if key is not None:
                        cache.put(key, part, _nbytes(part))
                else:
                    part = cache.get(key)
                    if part is None:
                        missing.append(key)
                weights.append(None if part is None else dict(zip(names, part, strict=True)))
            queries = tensors[at:]
            if len(queries) != len(counts):
                raise ValueError(f"{len(queries)} query batches for {len(counts)} reads")
            if missing:
                flat, reply = [], {"ok": False, "missing": missing}
            else:
                outs = m.memory.read_many(weights, queries, meta["steps"], meta["energies"])
                last = not meta.get("trajectory", True)  # the result alone: a sixth of the floats for 5 steps
                flat = [t for r, f in outs for t in (r.iterates[-1:] if last else r.iterates, r.energies, f)]
                reply = {"ok": True, "cpu": time.process_time() - c0}
        except Exception as e:                          # noqa: BLE001 - the server reads in-process instead
            flat, reply = [], {"ok": False, "error": f"{type(e).__name__}: {e}"}
        try:
            conn.send_bytes(pack(reply, flat))
        except OSError:
            return


class ModelProcess:
    """One model process and the pipe to it; one call at a time (the batch lane's thread holds it).
    Construction launches it; `wait_ready` waits until it has loaded the checkpoints."""

    def __init__(self, folder: Path, device: torch.device, torch_threads: int, compile_reads: str = "",
                 cache_bytes: int = 0):
        # a fresh interpreter (not fork: the parent runs threads and an event loop; not multiprocessing's
        # spawn: that re-imports the parent's main module), one end of a socket pair as its pipe
        ours, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "service.model_process", str(theirs.fileno()), str(folder), str(device),
                 str(torch_threads), compile_reads, str(cache_bytes)], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL)
        except OSError as e:
            ours.close()
            raise ModelProcessError(f"could not start a model process: {e}") from e
        finally:
            theirs.close()
        self._sock = ours          # framed as multiprocessing's Connection frames (the child's end is one)
        self.cache = WeightsCache(cache_bytes)       # a mirror of the process's: which weights it holds
        self.weights_sent = self.weights_kept = self.resets = 0   # sessions' weights sent, not sent; resets

    def wait_ready(self, expected: dict[str, str], timeout: float = STARTUP_SECONDS) -> None:
        """Until the process says which checkpoints it loaded (name -> SHA-256); ModelProcessError (and the
        process closed) unless they are `expected`, the server's own."""
        try:
            meta, _ = self._recv(timeout)
            if meta.get("models") != expected:
                raise CheckpointMismatch(f"the model process loaded {meta.get('models')}, the server {expected}")
        except ModelProcessError:
            self.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def _exactly(self, n: int) -> bytearray:
        buf, got = bytearray(n), 0
        view = memoryview(buf)
        while got < n:
            k = self._sock.recv_into(view[got:])
            if k == 0:
                raise EOFError
            got += k
        return buf

    def send(self, buf: bytes, timeout: float | None = None) -> None:
        """One message, as Connection.send_bytes frames it (big-endian length, then the bytes); a send that
        cannot finish within timeout seconds (nothing reads the other end) is ModelProcessError."""
        timeout = CALL_SECONDS if timeout is None else timeout
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(struct.pack("!i", len(buf)) if len(buf) < 2**31 - 1
                               else struct.pack("!iQ", -1, len(buf)))
            self._sock.sendall(buf)
        except OSError as e:
            raise ModelProcessError(f"the model process stopped or stalled ({type(e).__name__})") from e

    def recv(self, timeout: float | None = None) -> bytes:
        """One message; ModelProcessError when none arrives within timeout seconds or the process stopped."""
        timeout = CALL_SECONDS if timeout is None else timeout
        try:
            self._sock.settimeout(timeout)
            (n,) = struct.unpack("!i", self._exactly(4))
            if n == -1:
                (n,) = struct.unpack("!Q", self._exactly(8))
            return bytes(self._exactly(n))
        except TimeoutError as e:
            raise ModelProcessError(f"no answer from the model process in {timeout:.0f} s") from e
        except (EOFError, OSError) as e:
            raise ModelProcessError(f"the model process stopped ({type(e).__name__})") from e

    def _recv(self, timeout: float | None) -> tuple[dict[str, Any], list[Tensor]]:
        return unpack(self.recv(timeout))

    def read_many(self, model: str, weights: list[dict[str, Tensor]], queries: list[Tensor], steps: int,
                  energies: str, trajectory: bool = True, keys: list[str | None] | None = None
                  ) -> tuple[list[tuple[Any, Tensor]], float]:
        """As Memory.read_many, in the model process: (results, the CPU seconds it used); trajectory=False:
        each result's iterates are its last alone, (1, B, ...). keys[i] (`session_key`, or None) names
        weights[i]: weights the process already holds under their key are not sent again."""
        from model.memory import ReadResult
        from model.serving import STATE
        names = sorted(n for n in weights[0] if not n.startswith(STATE))     # a read needs no append state
        keys = [None] * len(weights) if keys is None or not self.cache.budget else keys
        head = {"model": model, "names": names, "counts": [q.shape[0] for q in queries], "steps": steps,
                "energies": energies, "trajectory": trajectory, "keys": keys}
        meta, flat = self._call(head, weights, names, queries, keys, reset=False)
        if meta.get("missing"):             # the process's cache and this mirror disagree: start both afresh
            log.warning("model process %s lacked %d cached session(s); resending", self.pid, len(meta["missing"]))
            self.cache.clear()
            self.resets += 1
            meta, flat = self._call(head, weights, names, queries, keys, reset=True)
        if not meta.get("ok"):
            raise ModelCallFailed(f"the model process failed: {meta.get('error') or meta.get('missing')}")
        if len(flat) != 3 * len(queries):
            raise ModelProcessError(f"the model process answered {len(flat)} tensors for {len(queries)} reads")
        outs = [(ReadResult(flat[3 * i], flat[3 * i + 1]), flat[3 * i + 2]) for i in range(len(queries))]
        return outs, float(meta["cpu"])

    def _call(self, head: dict[str, Any], weights: list[dict[str, Tensor]], names: list[str], queries: list[Tensor],
              keys: list[str | None], reset: bool) -> tuple[dict[str, Any], list[Tensor]]:
        """One request and its answer: each session's tensors unless the mirror says the process holds them,
        the mirror updated in the order the process will update its cache."""
        sent, tensors = [], []
        for w, key in zip(weights, keys, strict=True):
            part = [w[n] for n in names]
            here = key is None or self.cache.get(key) is None
            if here:
                tensors += part
                if key is not None:
                    self.cache.put(key, True, _nbytes(part))
            sent.append(here)
        self.weights_sent += sum(sent)
        self.weights_kept += len(sent) - sum(sent)
        self.send(pack({**head, "sent": sent, "reset": reset}, tensors + list(queries)))
        return self._recv(None)             # both bounded by CALL_SECONDS: a stalled process is given up

    def close(self, timeout: float = 2.0) -> None:
        """Close the pipe (the process ends at EOF); kill it if it has not ended within timeout seconds."""
        try:
            self._sock.close()
        finally:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)


class ModelProcesses:
    """The batch lane's model processes, one per lane thread, started in the background: until one is up
    (a few seconds: a fresh interpreter imports torch and loads every checkpoint), and while a broken one is
    replaced, `read_many` finds none and the lane reads in the server's process."""

    def __init__(self, n: int, folder: Path, device: torch.device, torch_threads: int, expected: dict[str, str],
                 compile_reads: str = "", cache_bytes: int = 0):
        self._args, self._expected = (folder, device, torch_threads, compile_reads, cache_bytes), expected
        # a process that compiles reads at start-up (registry.load_models) takes longer to be ready
        self._startup_seconds = STARTUP_SECONDS * (5 if compile_reads else 1)
        self._idle: list[ModelProcess] = []        # up and waiting for a batch
        self._all: set[ModelProcess] = set()         # every process not yet given up: starting, idle or busy
        self._up: set[ModelProcess] = set()          # ... of which those that loaded the checkpoints
        self._lock = threading.Lock()
        self._closed = False
        self.size, self.failures = n, 0
        self._streak = 0                   # failures since the last good call: the restarts' backoff
        self._given_up = False             # a process loaded other checkpoints: restarting cannot help
        for _ in range(n):
            self._start()

    def up(self) -> int:
        """Processes up now, idle or reading; idle ones found dead meanwhile are replaced first."""
        with self._lock:
            dead = [p for p in self._idle if not p.alive()]
            self._idle = [p for p in self._idle if p not in dead]
        for p in dead:
            self.broken(p, ModelProcessError(f"exited with {p._proc.returncode} while idle"))
        with self._lock:
            return len(self._up)

    def read_many(self, model: str, weights: list[dict[str, Tensor]], queries: list[Tensor], steps: int,
                  energies: str, trajectory: bool = True, keys: list[str | None] | None = None
                  ) -> tuple[list[tuple[Any, Tensor]], float] | None:
        """ModelProcess.read_many in an idle process, or None when none is up or the call failed (a failed
        process is replaced; a call that raised there raises here too, in the caller's own read)."""
        p = self.take()
        if p is None:
            return None
        try:
            out = p.read_many(model, weights, queries, steps, energies, trajectory, keys)
        except ModelCallFailed as e:
            log.warning("%s; reading in the server's process", e)
            self.give_back(p)
            return None
        except Exception as e:                        # noqa: BLE001 - never lose the process or the read
            self.broken(p, e)
            return None
        self.give_back(p, served=True)
        return out

    def _start(self, delay: float = 0.0) -> None:
        threading.Thread(target=self._launch, args=(delay,), name="ebmm-model-start", daemon=True).start()

    def _failed(self) -> float:
        """Count a failure; the seconds to wait before the next start: 0, then 1, 2, 4 ... 60 while they
        keep failing (a process that dies on every batch would otherwise reload every checkpoint each time)."""
        with self._lock:
            self.failures += 1
            self._streak += 1
            return 0.0 if self._streak <= 1 else min(60.0, 2.0 ** (self._streak - 2))

    def _launch(self, delay: float = 0.0) -> None:
        if delay:
            time.sleep(delay)
        with self._lock:
            if self._closed or self._given_up:
                return
            try:
                p: ModelProcess | None = ModelProcess(*self._args)
                why: Exception | None = None
            except ModelProcessError as e:
                p, why = None, e
            else:
                self._all.add(p)
        if p is None:
            log.error("could not start a model process: %s", why)
            self._start(self._failed())
            return
        try:
            p.wait_ready(self._expected, self._startup_seconds)
        except ModelProcessError as e:
            with self._lock:
                self._all.discard(p)
                self._given_up = isinstance(e, CheckpointMismatch)
            if not self._closed:
                log.error("batched reads stay in the server's process: %s", e)
                delay = self._failed()
                if not self._given_up:
                    self._start(delay)
            return
        log.info("model process %s up", p.pid)
        with self._lock:
            self._up.add(p)
        self.give_back(p)

    def take(self) -> ModelProcess | None:
        """An idle live process, or None. One found dead meanwhile is replaced (as `broken`)."""
        while True:
            with self._lock:
                p = self._idle.pop() if self._idle else None
            if p is None or p.alive():
                return p
            self.broken(p, ModelProcessError(f"exited with {p._proc.returncode} while idle"))

    def give_back(self, p: ModelProcess, served: bool = False) -> None:
        """p idle again; served: it has just answered a call, which ends a streak of failures."""
        with self._lock:
            if served:
                self._streak = 0
            if not self._closed:
                self._idle.append(p)
                return
        p.close()

    def broken(self, p: ModelProcess, why: Exception) -> None:
        """Close p and start a replacement in the background."""
        log.error("model process %s failed (%s); reading in the server's process until a replacement is up",
                  p.pid, why)
        with self._lock:
            self._all.discard(p)
            self._up.discard(p)
        p.close()
        self._start(self._failed())

    def close(self) -> None:
        """Stop every process, those starting included."""
        with self._lock:
            self._closed, procs, self._idle = True, list(self._all), []
            self._all.clear()
            self._up.clear()
        for p in procs:
            p.close()


if __name__ == "__main__":      # python -m service.model_process FD FOLDER DEVICE TORCH_THREADS [COMPILE [CACHE_BYTES]]
    _main(Connection(int(sys.argv[1])), sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6],
          *(int(a) for a in sys.argv[6:7]))
