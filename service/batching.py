"""Batching across requests: plain reads of one model (no mask, top_k or samples) from different sessions
that arrive while the model is busy run as one batched model call, each session's written weights on its
own queries (model/memory.py: read_stacked).

Self-clocking: a read runs at once while fewer than `concurrent` batches of its kind (model, read steps,
answer type, trajectory or not) are running, so a lone client waits for nothing; otherwise it joins the
next batch, which starts when a running batch finishes or, at the latest, `window` seconds after its first
read arrived, or as soon as it holds `max_queries` queries. A batch takes one slot of the bounded model pool, and a
full pool refuses the whole batch (503 with Retry-After) as it would refuse each read. A read whose
weights do not fit the model fails alone, before the batch runs. Only reads of a few queries are batched
(`SMALL_READ`): stacking copies each session's weights once per query, which pays for one-query reads
and not for large ones.

Where a batch runs: in a model process (service/model_process.py, `EBMM_MODEL_PROCESS`, on by default)
while other retrieves are being handled, so that the read and the event loop do not take turns at one GIL;
a lone read, and every read while no model process is up, in the server's own process.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from model.memory import ReadResult

from .model_process import ModelProcesses
from .registry import LoadedModel
from .runner import CallTime

Item = tuple[dict[str, torch.Tensor], torch.Tensor]        # (written weights, queries)
SMALL_READ = 8                                             # queries: larger reads go to the model directly
Result = tuple[Any, torch.Tensor]                          # (ReadResult, familiarity)


@dataclass
class _Group:
    items: list[Item] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)
    keys: list[str | None] = field(default_factory=list)        # each item's session_key, or None
    queries: int = 0
    timer: asyncio.TimerHandle | None = None


def read_batch(m: LoadedModel, items: list[Item], steps: int, energies: str,
               procs: ModelProcesses | None = None, trajectory: bool = True,
               keys: list[str | None] | None = None) -> tuple[list[Result], float | None]:
    """One model call for several sessions' reads, then each query's familiarity with its own weights: in
    an idle model process when there is one (service/model_process.py), else here. With it, the CPU
    seconds the model process used (else None). trajectory=False: each read's iterates are its result alone,
    (1, B, ...), wherever it ran (a model process then sends back a sixth of the floats for five steps).
    keys: each session's weights named (`session_key`), for the model processes' caches."""
    weights, queries = [w for w, _ in items], [x for _, x in items]
    there = None if procs is None else procs.read_many(m.name, weights, queries, steps, energies, trajectory,
                                                           keys)
    if there is not None:
        return there
    outs = m.memory.read_many(weights, queries, steps, energies)
    return (outs if trajectory else [(ReadResult(r.iterates[-1:], r.energies), f) for r, f in outs]), None


class ReadBatcher:
    def __init__(self, run: Callable[..., Awaitable[tuple[Any, float]]], concurrent: int, window: float,
                 max_queries: int, on_batch: Callable[[str, int], None] | None = None,
                 procs: ModelProcesses | None = None, on_place: Callable[[str, str], None] | None = None):
        self.run, self.concurrent, self.window, self.max_queries = run, concurrent, window, max_queries
        self.on_batch, self.procs, self.on_place = on_batch, procs, on_place
        self.requests = 0                  # retrieves being handled (`handling`), batched or not
        self._groups: dict[tuple[str, int, str, bool], _Group] = {}
        self._running: dict[tuple[str, int, str, bool], int] = {}
        self._tasks: set[asyncio.Task] = set()

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Around a retrieve, from its arrival to its answer: how busy the event loop is."""
        self.requests += 1
        try:
            yield
        finally:
            self.requests -= 1

    def _where(self, group: _Group) -> ModelProcesses | None:
        """The model processes for a batch while other retrieves are being handled (the event loop is busy
        and would take the GIL from an in-process read), else None: a lone read runs here, without the
        pipe's round trip and copies."""
        if self.procs is None or (len(group.items) == 1 and self.requests <= 1):
            return None
        return self.procs

    async def read(self, m: LoadedModel, weights: dict[str, torch.Tensor], x: torch.Tensor, steps: int,
                   energies: str, trajectory: bool = True, weights_key: str | None = None) -> tuple[Result, float]:
        """(ReadResult, familiarity) of x on weights, and the seconds of the model call it ran in; without
        trajectory, the ReadResult's iterates are the result alone (`read_batch`). weights_key: the weights'
        `session_key`, with which a model process that holds them is not sent them again."""
        m.memory.check_session(weights)              # a mismatch fails this read alone, not its batch
        key = (m.name, steps, energies, trajectory)
        group = self._groups.setdefault(key, _Group())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        group.items.append((weights, x))
        group.keys.append(weights_key)
        group.futures.append(fut)
        group.queries += x.shape[0]
        if self._running.get(key, 0) < self.concurrent or group.queries >= self.max_queries:
            self._start(key, m)
        elif group.timer is None:
            group.timer = asyncio.get_running_loop().call_later(self.window, self._start, key, m)
        return await fut

    def _start(self, key: tuple[str, int, str, bool], m: LoadedModel) -> None:
        group = self._groups.pop(key, None)
        if group is None or not group.items:
            return
        if group.timer is not None:
            group.timer.cancel()
        self._running[key] = self._running.get(key, 0) + 1
        task = asyncio.ensure_future(self._run(key, m, group))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: tuple[str, int, str, bool], m: LoadedModel, group: _Group) -> None:
        try:
            if self.on_batch is not None:
                self.on_batch(m.name, len(group.items))
            (outs, elsewhere), seconds = await self.run(read_batch, m, group.items, key[1], key[2],
                                                     self._where(group), key[3], group.keys)
            if elsewhere is not None:                # the model process's CPU beside the lane thread's
                seconds = CallTime(float(seconds), seconds.cpu + elsewhere)
            if self.on_place is not None:
                self.on_place(m.name, "server" if elsewhere is None else "process")
        except asyncio.CancelledError:
            for fut in group.futures:
                fut.cancel()
            raise
        except Exception as e:                       # noqa: BLE001 - every waiting read gets the error (Busy)
            for fut in group.futures:
                if not fut.done():
                    fut.set_exception(e)
        else:
            for fut, out in zip(group.futures, outs, strict=True):
                if not fut.done():
                    fut.set_result((out, seconds))
        finally:
            self._running[key] -= 1
            waiting = self._groups.get(key)
            if waiting is not None and waiting.items and self._running[key] < self.concurrent:
                self._start(key, m)
