"""Batching across requests (service/batching.py): concurrent plain reads of one model from different
sessions run as one model call and answer exactly what they answer one by one; a lone read waits for
nothing; a full pool refuses the batch; reads that are not plain bypass it."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_api import as_strings, bits, running

from service.batching import ReadBatcher
from service.errors import Busy

pytestmark = pytest.mark.anyio


async def _write_and_query(client: Any, sessions: int) -> tuple[list[str], list[dict]]:
    ids, bodies = [], []
    for i in range(sessions):
        x = bits(4, seed=i)
        r = await client.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(x)}})
        assert r.status_code == 201, r.text
        ids.append(r.json()["session_id"])
        q = x[:1].copy()
        q[:, :20] = 1 - q[:, :20]
        bodies.append({"queries": {"bits": as_strings(q)}})
    return ids, bodies


async def test_concurrent_reads_of_many_sessions_batch_and_answer_as_alone(checkpoint_dir: Path) -> None:
    answers = {}
    for batching in (False, True):
        async with running(checkpoint_dir, batch_reads=batching, pool_size=1, pool_queue=64) as (client, state):
            ids, bodies = await _write_and_query(client, 12)
            # every other read asks for its trajectory: a batch of both kinds answers each as asked
            rs = await asyncio.gather(*(client.post(f"/v1/sessions/{sid}/retrieve",
                                                    json={**b, "trajectory": i % 2 == 0})
                                        for i, (sid, b) in enumerate(zip(ids, bodies, strict=True))))
            assert all(r.status_code == 200 for r in rs), [r.text for r in rs if r.status_code != 200]
            answers[batching] = [r.json()["results"] for r in rs]
            metrics = (await client.get("/metrics")).text
            if batching:
                counts = [float(line.split()[-1]) for line in metrics.splitlines()
                          if line.startswith('ebmm_read_batch_requests_count{model="binary128"}')]
                total = [float(line.split()[-1]) for line in metrics.splitlines()
                         if line.startswith('ebmm_read_batch_requests_sum{model="binary128"}')]
                assert total == [12.0] and counts and counts[0] < 12, metrics   # fewer calls than reads
            else:
                assert 'ebmm_read_batch_requests_count{model="binary128"}' not in metrics
    for i, (alone, batched) in enumerate(zip(answers[False], answers[True], strict=True)):
        assert [r["pattern"] for r in alone] == [r["pattern"] for r in batched]
        assert [r["trajectory"] for r in alone] == [r["trajectory"] for r in batched]
        assert all((r["trajectory"] is not None) == (i % 2 == 0) for r in batched)
        assert all(len(r["energies"]) == 6 for r in batched)       # every iterate's energy, with or without
        assert np.allclose([r["energies"] for r in alone], [r["energies"] for r in batched], rtol=1e-4, atol=1e-3)
        assert np.allclose([r["familiarity"] for r in alone], [r["familiarity"] for r in batched], atol=1e-5)


async def test_masked_and_top_k_reads_bypass_the_batcher(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (client, state):
        ids, bodies = await _write_and_query(client, 2)
        body = {**bodies[0], "top_k": 2}
        r = await client.post(f"/v1/sessions/{ids[0]}/retrieve", json=body)
        assert r.status_code == 200, r.text
        r = await client.post(f"/v1/sessions/{ids[1]}/retrieve", json={**bodies[1], "mask": bodies[1]["queries"]})
        assert r.status_code == 200, r.text
        metrics = (await client.get("/metrics")).text
        assert 'ebmm_read_batch_requests_count{model="binary128"}' not in metrics


class FakeModel:
    """Enough of a LoadedModel for the batcher: a name and a weights check."""
    name = "fake"

    class memory:                                              # noqa: N801
        @staticmethod
        def check_session(w: dict) -> None:
            return None


async def test_batcher_runs_a_lone_read_at_once_and_collects_the_rest_while_busy() -> None:
    calls: list[int] = []
    release = asyncio.Event()

    async def run(fn: Any, m: Any, items: list, steps: int, energies: str, procs: Any,
                  trajectory: bool, keys: list) -> tuple[tuple, float]:
        calls.append(len(items))
        if len(calls) == 1:
            await release.wait()                               # the first batch holds the model
        return ([(f"r{float(x[0])}", None) for _, x in items], None), 0.01

    b = ReadBatcher(run, concurrent=1, window=10.0, max_queries=100)
    first = asyncio.ensure_future(b.read(FakeModel, {}, torch.tensor([0.0]), 5, "all"))
    await asyncio.sleep(0.01)                                   # far below the 10 s window
    assert calls == [1]                                         # a lone read starts at once, no window
    rest = [asyncio.ensure_future(b.read(FakeModel, {}, torch.tensor([float(i)]), 5, "all")) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert calls == [1]                                         # the others wait for the running batch
    release.set()
    outs = await asyncio.gather(first, *rest)
    assert calls == [1, 5]                                      # ... and then run as one
    assert [o[0][0] for o in outs] == [f"r{float(i)}" for i in range(6)]


async def test_batcher_window_bounds_the_wait_and_a_full_pool_refuses_the_batch() -> None:
    calls: list[int] = []

    async def busy(fn: Any, m: Any, items: list, steps: int, energies: str, procs: Any,
                   trajectory: bool, keys: list) -> tuple[tuple, float]:
        calls.append(len(items))
        raise Busy("all slots are taken", headers={"Retry-After": "1"})

    b = ReadBatcher(busy, concurrent=0, window=0.02, max_queries=100)   # never a free batch slot
    reads = [asyncio.ensure_future(b.read(FakeModel, {}, torch.tensor([1.0]), 5, "all")) for _ in range(3)]
    done = await asyncio.gather(*reads, return_exceptions=True)
    assert calls == [3] and all(isinstance(d, Busy) for d in done)
    b2 = ReadBatcher(busy, concurrent=0, window=60.0, max_queries=2)    # a full batch starts at once
    reads = [asyncio.ensure_future(b2.read(FakeModel, {}, torch.tensor([1.0]), 5, "all")) for _ in range(2)]
    done = await asyncio.wait_for(asyncio.gather(*reads, return_exceptions=True), 5)
    assert calls == [3, 2]
