"""The bounded worker pool that runs model (torch) work off the event loop.

At most pool_size calls run and pool_queue wait; one more is refused at once (Busy -> 503 with
Retry-After) instead of queueing without bound. A slot is freed when the thread finishes, not when
the caller stops waiting, so abandoned requests still count against the bound.

Lanes: named sets of threads of their own (batched reads run on one, `lanes={"batch": 2}`), each call
still taking a slot of the same bound.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import torch

from .errors import Busy

T = TypeVar("T")
RETRY_AFTER_SECONDS = 1


class ModelRunner:
    def __init__(self, pool_size: int, queue: int, torch_threads: int, lanes: dict[str, int] | None = None):
        self.capacity = pool_size + queue
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._busy = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(pool_size, thread_name_prefix="ebmm-model",
                                        initializer=torch.set_num_threads, initargs=(torch_threads,))
        self._lanes = {name: ThreadPoolExecutor(n, thread_name_prefix=f"ebmm-{name}",
                                                initializer=torch.set_num_threads, initargs=(torch_threads,))
                       for name, n in (lanes or {}).items()}

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._busy

    def _release(self, _: Future) -> None:
        with self._lock:
            self._busy -= 1
        self._slots.release()

    async def run(self, fn: Callable[..., T], *args: object, lane: str | None = None) -> tuple[T, CallTime]:
        """fn(*args) on a worker thread (of `lane` if given) -> (its result, seconds it ran). Raises Busy
        when full."""
        pool = self._pool if lane is None else self._lanes[lane]
        if not self._slots.acquire(blocking=False):
            raise Busy(f"all {self.capacity} model slots are taken; retry in {RETRY_AFTER_SECONDS} s",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        with self._lock:
            self._busy += 1
        try:
            fut = pool.submit(_timed, fn, *args)
        except BaseException:
            self._release(Future())
            raise
        fut.add_done_callback(self._release)
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        pools = (self._pool, *self._lanes.values())
        for pool in pools:                        # cancel everything queued first, then wait for what runs
            pool.shutdown(wait=False, cancel_futures=True)
        for pool in pools:
            pool.shutdown(wait=True)


class CallTime(float):
    """The seconds a call ran (wall clock), with `cpu`: the CPU seconds its thread used meanwhile. With one
    torch thread, less CPU than wall clock is time the thread spent waiting (for the GIL, or for a core);
    with more, work on torch's other threads is not counted either. Arithmetic gives a plain float."""
    cpu: float

    def __new__(cls, wall: float, cpu: float) -> CallTime:
        obj = super().__new__(cls, wall)
        obj.cpu = cpu
        return obj

    def __reduce__(self) -> tuple:                # copies and pickles keep the CPU time
        return (CallTime, (float(self), self.cpu))


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, CallTime]:
    t0, c0 = time.perf_counter(), time.thread_time()
    out = fn(*args)
    return out, CallTime(time.perf_counter() - t0, time.thread_time() - c0)
