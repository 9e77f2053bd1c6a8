"""The bounded worker pool: runs work off the loop, refuses at once when full, frees slots after."""
from __future__ import annotations

import asyncio
import threading

import pytest

from service.errors import Busy
from service.runner import ModelRunner

pytestmark = pytest.mark.anyio


async def test_runs_work_and_reports_its_time() -> None:
    r = ModelRunner(pool_size=1, queue=0, torch_threads=1)
    try:
        out, seconds = await r.run(lambda a, b: a + b, 2, 3)
        assert out == 5 and seconds >= 0
    finally:
        r.shutdown()


async def test_saturated_pool_refuses_with_retry_after_then_recovers() -> None:
    r = ModelRunner(pool_size=1, queue=1, torch_threads=1)
    gate = threading.Event()
    try:
        held = [asyncio.ensure_future(r.run(gate.wait)) for _ in range(2)]    # one running, one waiting
        await asyncio.sleep(0)
        with pytest.raises(Busy) as info:
            await r.run(lambda: None)
        assert info.value.status == 503 and info.value.headers["Retry-After"] == "1"
        gate.set()
        await asyncio.gather(*held)
        assert (await r.run(lambda: "ok"))[0] == "ok" and r.in_flight == 0
    finally:
        gate.set()
        r.shutdown()


async def test_errors_inside_work_propagate_and_free_the_slot() -> None:
    r = ModelRunner(pool_size=1, queue=0, torch_threads=1)
    try:
        with pytest.raises(ZeroDivisionError):
            await r.run(lambda: 1 / 0)
        assert (await r.run(lambda: 7))[0] == 7
    finally:
        r.shutdown()


async def test_a_lane_runs_on_its_own_thread_and_shares_the_bound() -> None:
    """Batched reads run on the "batch" lane's one thread, every call on the same one; a call waiting there
    takes a slot of the same bound, so a full service refuses a pool call too."""
    r = ModelRunner(pool_size=1, queue=0, torch_threads=1, lanes={"batch": 1})
    gate = threading.Event()
    try:
        names = {(await r.run(lambda: threading.current_thread().name, lane="batch"))[0] for _ in range(3)}
        assert len(names) == 1 and next(iter(names)).startswith("ebmm-batch")
        assert not (await r.run(lambda: threading.current_thread().name))[0].startswith("ebmm-batch")
        held = asyncio.ensure_future(r.run(gate.wait, lane="batch"))
        await asyncio.sleep(0)
        with pytest.raises(Busy):
            await r.run(lambda: None)
        gate.set()
        await held
        assert r.in_flight == 0
    finally:
        gate.set()
        r.shutdown()


async def test_a_call_reports_its_thread_cpu_time_beside_its_wall_time() -> None:
    """A call that waits (here: sleeps) uses less CPU than the wall clock it took; one that computes, about
    as much: the two Server-Timing numbers that tell waiting for the GIL or a core from work."""
    import time
    r = ModelRunner(pool_size=1, queue=0, torch_threads=1)
    try:
        _, waited = await r.run(time.sleep, 0.05)
        assert waited >= 0.05 and waited.cpu < 0.02
        _, worked = await r.run(lambda: sum(i * i for i in range(300_000)))
        assert worked.cpu > 0.2 * worked                    # a loaded machine may take its core away a while
    finally:
        r.shutdown()


def test_a_call_time_keeps_its_cpu_time_through_copies_and_pickles() -> None:
    import copy
    import pickle

    from service.runner import CallTime
    t = CallTime(0.5, 0.2)
    for c in (copy.copy(t), copy.deepcopy(t), pickle.loads(pickle.dumps(t))):
        assert c == 0.5 and c.cpu == 0.2
