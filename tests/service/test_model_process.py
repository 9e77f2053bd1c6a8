"""Model processes (service/model_process.py): batched reads in a process of their own answer exactly what
the server's own process answers; a process that dies or loaded other checkpoints never fails a read."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_api import as_strings, bits, running
from test_batching import _write_and_query

from model.serving import STATE
from service.batching import ReadBatcher, _Group, read_batch
from service.model_process import (ModelCallFailed, ModelProcess, ModelProcessError, ModelProcesses, WeightsCache, pack,
                                   session_key, unpack)
from service.registry import load_models

pytestmark = pytest.mark.anyio


def _wait(cond, seconds: float = 90.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_messages_round_trip_and_malformed_ones_are_refused() -> None:
    ts = [torch.randn(3, 4), torch.zeros(0, 2), torch.arange(6.0).view(1, 2, 3), torch.tensor(2.5)]
    meta, back = unpack(pack({"model": "m", "counts": [1, 2]}, ts))
    assert meta == {"model": "m", "counts": [1, 2]}
    assert [b.shape for b in back] == [t.shape for t in ts]
    assert all(torch.equal(a, b) for a, b in zip(ts, back, strict=True))
    good = pack({"x": 1}, [torch.ones(4)])
    for bad in (good[:-1], good + b"\0\0\0\0", good[:3], b"\xff\xff\xff\x7f{}", b"\x02\0\0\0{]"):
        with pytest.raises(ModelProcessError):
            unpack(bad)


def _sessions(m, n: int, seed: int = 0) -> tuple[list[dict], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    shape = m.input_shape
    ws = [m.memory.write((torch.rand(8, *shape, generator=g) > 0.5).float()).weights for _ in range(n)]
    qs = [(torch.rand(1 + i % 2, *shape, generator=g) > 0.5).float() for i in range(n)]
    return ws, qs


def test_a_model_process_reads_as_the_server_does_and_refuses_other_checkpoints(checkpoint_dir: Path) -> None:
    models = load_models(checkpoint_dir, torch.device("cpu"))
    expected = {n: m.sha256 for n, m in models.items()}
    p = ModelProcess(checkpoint_dir, torch.device("cpu"), 1)
    try:
        p.wait_ready(expected)
        for name in ("binary128", "shapes16"):
            m = models[name]
            ws, qs = _sessions(m, 5)
            here = m.memory.read_many(ws, qs, 5, "all")
            there, cpu = p.read_many(name, ws, qs, 5, "all")
            assert cpu > 0
            for (r1, f1), (r2, f2) in zip(here, there, strict=True):
                assert torch.equal(r1.iterates, r2.iterates) and torch.equal(r1.energies, r2.energies)
                assert torch.equal(f1, f2)
        with pytest.raises(ModelCallFailed, match="failed: KeyError"):       # an unknown model: an error
            p.read_many("nope", ws, qs, 5, "all")
        there, _ = p.read_many("shapes16", ws, qs, 5, "last")           # ... and the process goes on
        assert there[0][0].energies.shape[0] == 1
        # without the trajectory, only each read's result comes back: the same as its last iterate
        here = models["shapes16"].memory.read_many(ws, qs, 5, "last")
        last, _ = p.read_many("shapes16", ws, qs, 5, "last", trajectory=False)
        for (r1, f1), (r2, f2) in zip(here, last, strict=True):
            assert r2.iterates.shape == (1, *r1.iterates.shape[1:]) and torch.equal(r2.iterates[0], r1.iterates[-1])
            assert torch.equal(r1.energies, r2.energies) and torch.equal(f1, f2)
    finally:
        p.close()
    assert not p.alive()
    q = ModelProcess(checkpoint_dir, torch.device("cpu"), 1)
    with pytest.raises(ModelProcessError, match="loaded"):
        q.wait_ready({**expected, "binary128": "0" * 64})
    assert not q.alive()


def test_a_dead_model_process_costs_no_read_and_is_replaced(checkpoint_dir: Path) -> None:
    models = load_models(checkpoint_dir, torch.device("cpu"))
    m = models["binary128"]
    procs = ModelProcesses(1, checkpoint_dir, torch.device("cpu"), 1, {n: x.sha256 for n, x in models.items()})
    try:
        assert procs.up() == 0                         # started in the background: no wait at start-up
        ws, qs = _sessions(m, 3, seed=1)
        items = list(zip(ws, qs, strict=True))
        alone, cpu = read_batch(m, items, 5, "all", procs)    # before it is up: read here
        assert cpu is None
        _wait(lambda: procs.up() == 1)
        first = procs.take()
        pid = first.pid
        procs.give_back(first)
        outs, cpu = read_batch(m, items, 5, "all", procs)
        assert cpu is not None and cpu > 0               # read in the model process
        bad = [({**ws[0], "energy.memory": torch.zeros(2)}, qs[0])]      # a call that raises there and here
        with pytest.raises(ValueError):
            read_batch(m, bad, 5, "all", procs)
        assert procs.up() == 1 and procs.failures == 0  # ... costs no process
        first._proc.kill()
        first._proc.wait(10)
        again, cpu = read_batch(m, items, 5, "all", procs)    # dead: this read runs here instead
        assert cpu is None and procs.failures == 1
        for res in (outs, again):
            for (r1, f1), (r2, f2) in zip(alone, res, strict=True):
                assert torch.equal(r1.iterates, r2.iterates) and torch.equal(f1, f2)
        _wait(lambda: procs.up() == 1)                  # a replacement comes up
        p = procs.take()
        assert p.pid != pid and p.alive()
        procs.give_back(p)
    finally:
        procs.close()
    assert procs.take() is None


async def test_a_lone_read_stays_in_the_server_and_a_busy_one_goes_to_the_process() -> None:
    b = ReadBatcher(None, concurrent=1, window=0.01, max_queries=10, procs="procs")  # type: ignore[arg-type]
    one, two = _Group(items=[({}, torch.zeros(1))]), _Group(items=[({}, torch.zeros(1))] * 2)
    with b.handling():
        assert b._where(one) is None                    # alone: no round trip through the pipe
        assert b._where(two) == "procs"
        with b.handling():
            assert b._where(one) == "procs"             # another retrieve is being handled meanwhile
    assert b.requests == 0


async def _read_append_read(client: Any, sessions: int) -> list:
    """Write sessions; read each, read each again, append to every session and read each: the answers."""
    ids, bodies = await _write_and_query(client, sessions)

    async def read_all() -> list:
        rs = await asyncio.gather(*(client.post(f"/v1/sessions/{sid}/retrieve", json=b)
                                    for sid, b in zip(ids, bodies, strict=True)))
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        return [r.json()["results"] for r in rs]
    answers = await read_all() + await read_all()
    for i, sid in enumerate(ids):
        more = await client.post(f"/v1/sessions/{sid}/patterns",
                                 json={"patterns": {"bits": as_strings(bits(3, seed=100 + i))}})
        assert more.status_code == 200, more.text
    return answers + await read_all()


async def _up(client: Any, n: int) -> dict:
    deadline = time.monotonic() + 90
    while True:                                  # /readyz says when the processes are up
        ready = (await client.get("/readyz")).json()
        if ready["model_processes"] is None or ready["model_processes"]["up"] == n:
            return ready
        assert time.monotonic() < deadline, "no model process came up"
        await asyncio.sleep(0.05)


def _same_answers(a: list, b: list) -> None:
    for x, y in zip(a, b, strict=True):
        assert [r["pattern"] for r in x] == [r["pattern"] for r in y]
        assert np.allclose([r["energies"] for r in x], [r["energies"] for r in y], rtol=1e-5, atol=1e-5)
        assert [r["familiarity"] for r in x] == [r["familiarity"] for r in y]


async def test_the_service_reads_through_model_processes_as_it_reads_without(checkpoint_dir: Path) -> None:
    answers = {}
    for use in (False, True):
        async with running(checkpoint_dir, model_process=use, pool_size=1, pool_queue=64) as (client, state):
            ready = await _up(client, 2)
            assert ready["ready"]
            # two by default (EBMM_BATCH_CONCURRENCY), one per batch running at once
            assert ready["model_processes"] == ({"up": 2, "size": 2, "failures": 0} if use else None)
            answers[use] = await _read_append_read(client, 12)
            metrics = (await client.get("/metrics")).text
            placed = [line for line in metrics.splitlines() if line.startswith("ebmm_read_batches_total")
                      and 'place="process"' in line]
            if use:
                assert placed and float(placed[0].split()[-1]) >= 1
            else:
                assert state.batcher.procs is None and not placed
    _same_answers(answers[False], answers[True])


async def test_the_model_process_reads_kept_weights_and_an_appended_session_anew(checkpoint_dir: Path) -> None:
    """One model process (every batch goes to it): the second reads find the weights kept there, and after
    an append each session is read with its appended weights, as the server reads them itself."""
    answers = {}
    for use in (False, True):
        async with running(checkpoint_dir, model_process=use, batch_concurrency=1, pool_size=1,
                           pool_queue=64) as (client, state):
            await _up(client, 1)
            answers[use] = await _read_append_read(client, 12)
            if use:
                procs = state.batcher.procs._all
                assert sum(p.weights_kept for p in procs) > 0 and sum(p.resets for p in procs) == 0
    _same_answers(answers[False], answers[True])


def test_a_stalled_model_process_is_given_up_and_the_read_runs_here(checkpoint_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal

    import service.model_process as mp
    monkeypatch.setattr(mp, "CALL_SECONDS", 1.0)
    models = load_models(checkpoint_dir, torch.device("cpu"))
    m = models["binary128"]
    procs = ModelProcesses(1, checkpoint_dir, torch.device("cpu"), 1, {n: x.sha256 for n, x in models.items()})
    try:
        _wait(lambda: procs.up() == 1)
        p = procs.take()
        procs.give_back(p)
        os.kill(p.pid, signal.SIGSTOP)                   # alive, but it will never answer
        items = list(zip(*_sessions(m, 16, seed=2), strict=True))   # more than a pipe holds unread
        t0 = time.monotonic()
        outs, cpu = read_batch(m, items, 5, "all", procs)
        assert cpu is None and procs.failures == 1 and time.monotonic() - t0 < 30
        assert not p.alive()                            # killed, not left stopped
        here = m.memory.read_many([w for w, _ in items], [q for _, q in items], 5, "all")
        assert all(torch.equal(a[0].iterates, b[0].iterates) for a, b in zip(outs, here, strict=True))
    finally:
        procs.close()


def test_sessions_with_and_without_append_state_read_together_there(checkpoint_dir: Path) -> None:
    """Sessions written before the append state existed carry none; a batch may mix both."""
    models = load_models(checkpoint_dir, torch.device("cpu"))
    m = models["binary128"]
    procs = ModelProcesses(1, checkpoint_dir, torch.device("cpu"), 1, {n: x.sha256 for n, x in models.items()})
    try:
        _wait(lambda: procs.up() == 1)
        ws, qs = _sessions(m, 4, seed=3)
        assert any(n.startswith("append.") for n in ws[0])
        ws[1] = {n: t for n, t in ws[1].items() if not n.startswith("append.")}
        items = list(zip(ws, qs, strict=True))
        outs, cpu = read_batch(m, items, 5, "all", procs)
        assert cpu is not None and procs.failures == 0 and procs.up() == 1   # read there, process kept
        here = m.memory.read_many(ws, qs, 5, "all")
        assert all(torch.equal(a[0].iterates, b[0].iterates) and torch.equal(a[1], b[1])
                   for a, b in zip(outs, here, strict=True))
    finally:
        procs.close()


def test_a_process_with_other_checkpoints_is_not_started_again(checkpoint_dir: Path) -> None:
    models = load_models(checkpoint_dir, torch.device("cpu"))
    expected = {**{n: x.sha256 for n, x in models.items()}, "binary128": "0" * 64}
    procs = ModelProcesses(1, checkpoint_dir, torch.device("cpu"), 1, expected)
    try:
        _wait(lambda: procs.failures == 1)
        time.sleep(1.5)                                  # no second start, no second failure
        assert procs.failures == 1 and procs.up() == 0 and procs.take() is None and not procs._all
    finally:
        procs.close()


def test_weights_cache_keeps_the_most_recently_used_within_its_budget() -> None:
    c = WeightsCache(budget=100)
    c.put("a", 1, 40)
    c.put("b", 2, 40)
    assert c.get("a") == 1                               # a is now the most recently used
    c.put("c", 3, 40)                                    # over budget: b, the least recently used, goes
    assert "b" not in c and c.get("a") == 1 and c.get("c") == 3 and c.used == 80
    c.put("huge", 4, 101)                                # larger than the budget: not kept, nothing dropped
    assert "huge" not in c and len(c) == 2
    c.put("a", 5, 10)                                    # a new value under a kept key replaces it
    assert c.get("a") == 5 and c.used == 50


def test_a_model_process_keeps_session_weights_and_reads_each_version_right(checkpoint_dir: Path) -> None:
    """Weights sent once under their key are read from the process's cache; a new version (an append) and
    weights the cache dropped are sent again; a cache that disagrees with the server's mirror is reset;
    every answer equals the server's own read."""
    models = load_models(checkpoint_dir, torch.device("cpu"))
    m = models["binary128"]
    ws, qs = _sessions(m, 3, seed=2)
    size = sum(4 * t.numel() for n, t in ws[0].items() if not n.startswith(STATE))   # what a read sends
    p = ModelProcess(checkpoint_dir, torch.device("cpu"), 1, cache_bytes=2 * size)   # room for two sessions

    def same(weights: list[dict], keys: list) -> None:
        there, _ = p.read_many("binary128", weights, qs[:len(weights)], 5, "last", keys=keys)
        here = m.memory.read_many(weights, qs[:len(weights)], 5, "last")
        for (r1, f1), (r2, f2) in zip(here, there, strict=True):
            assert torch.equal(r1.iterates, r2.iterates) and torch.equal(f1, f2)

    try:
        p.wait_ready({n: x.sha256 for n, x in models.items()})
        keys = [session_key("binary128", f"token-{i}") for i in range(3)]
        same(ws[:2], keys[:2])
        assert (p.weights_sent, p.weights_kept) == (2, 0)
        same(ws[:2], keys[:2])                           # held: only the queries cross the pipe
        assert (p.weights_sent, p.weights_kept) == (2, 2)
        changed = {n: t + 0.5 for n, t in ws[0].items()}  # s0 appended to: version 1, other weights
        same([changed, ws[1]], [session_key("binary128", "token-0-appended"), keys[1]])
        assert (p.weights_sent, p.weights_kept) == (3, 3)
        same([ws[2], ws[0]], [keys[2], keys[0]])         # both sent: s2 is new, s0's first weights were dropped
        assert p.weights_sent == 5 and p.resets == 0
        p.cache.put(keys[1], True, size)                 # the mirror wrongly believes s1 is held ...
        p.cache.put(keys[2], True, size)
        same([ws[1], ws[2]], keys[1:])
        assert p.resets == 1                             # ... the process says so, and both start afresh
        same(ws, [None, None, None])                     # no keys: sent every time, nothing kept
        assert len(p.cache) == 2
        sent = p.weights_sent
        same([ws[0], ws[0]], [keys[0], keys[0]])         # one session twice in a batch: sent once, read twice
        assert p.weights_sent == sent + 1 and p.resets == 1
    finally:
        p.close()
