"""The bounded worker pool that runs model (torch) work off the event loop.

At most pool_size calls run and pool_queue wait; one more is refused at once (Busy -> 503 with
Retry-After) instead of queueing without bound. A slot is freed when the thread finishes, not when
the caller stops waiting, so abandoned requests still count against the bound.
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
    def __init__(self, pool_size: int, queue: int, torch_threads: int):
        self.capacity = pool_size + queue
        self._slots = threading.BoundedSemaphore(self.capacity)
        self._busy = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(pool_size, thread_name_prefix="ebmm-model",
                                        initializer=torch.set_num_threads, initargs=(torch_threads,))

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._busy

    def _release(self, _: Future) -> None:
        with self._lock:
            self._busy -= 1
        self._slots.release()

    async def run(self, fn: Callable[..., T], *args: object) -> tuple[T, float]:
        """fn(*args) on a worker thread -> (its result, seconds it ran). Raises Busy when full."""
        if not self._slots.acquire(blocking=False):
            raise Busy(f"all {self.capacity} model slots are taken; retry in {RETRY_AFTER_SECONDS} s",
                       headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
        with self._lock:
            self._busy += 1
        try:
            fut = self._pool.submit(_timed, fn, *args)
        except BaseException:
            self._release(Future())
            raise
        fut.add_done_callback(self._release)
        return await asyncio.wrap_future(fut)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0
