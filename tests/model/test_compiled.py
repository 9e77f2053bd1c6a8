"""Compiled serving reads (model/compiled.py): where used they equal the eager read; a compile that differs,
fails or would recompile after its check is not used, and the read stays eager and right."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from model import compiled
from model.checkpoint import load_checkpoint
from model.memory import read, write

REPO = Path(__file__).resolve().parents[2]

needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="torch.compile's CPU backend needs a C compiler")


def episode(name: str, n: int = 16):
    ckpt = load_checkpoint(REPO / "checkpoints" / name)
    model, p = ckpt.model, ckpt.model.params(detach=True)
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(n, *model.cfg.input_shape, generator=g) < 0.5).float()
    q = x[:1].clone()
    q.view(1, -1)[:, :16] = 1 - q.view(1, -1)[:, :16]              # a few values flipped
    return model, p, write(model, p, x).weights, q


def counting(kind: compiled.CompiledKind) -> list[int]:
    """Wrap a kind's compiled function so that the test sees it called."""
    calls, fn = [], kind.fn

    def wrapped(*a, **k):
        calls.append(1)
        return fn(*a, **k)
    kind.fn = wrapped
    return calls


@needs_compiler
@pytest.mark.parametrize("name", ["binary128", "binary128-rnn", "characters32"])
def test_compiled_read_equals_the_eager_read_and_is_used(name: str) -> None:
    model, p, w, q = episode(name)
    mask = torch.zeros_like(q, dtype=torch.bool)
    mask.view(1, -1)[:, q[0].numel() // 2:] = True                  # the second half known
    want_last, want_masked = read(model, p, w, q, energies="last"), read(model, p, w, q, mask, energies="last")
    want_all = read(model, p, w, q)
    kinds = compiled.enable(model)
    try:
        with torch.inference_mode():
            first = read(model, p, w, q, energies="last")             # compiles and checks
            (kind,) = kinds.kinds.values()
            assert kind.status == "used", kind.summary()
            calls = counting(kind)
            again = read(model, p, w, q, energies="last")
            assert calls == [1]                                      # the second read ran compiled
            masked = read(model, p, w, q, mask, energies="last")
            every = read(model, p, w, q)
        for got, ref in ((first, want_last), (again, want_last), (masked, want_masked), (every, want_all)):
            assert got.iterates.shape == ref.iterates.shape and got.energies.shape == ref.energies.shape
            torch.testing.assert_close(got.iterates, ref.iterates, atol=1e-5, rtol=0)
            torch.testing.assert_close(got.energies, ref.energies, atol=1e-5, rtol=1e-5)
        assert (masked.iterates[-1][mask] == q[mask]).all()            # the known bits stayed put
        assert {k["status"] for k in kinds.summary()} == {"used"} and len(kinds.summary()) == 3
    finally:
        compiled.disable(model)


def test_a_compile_that_differs_is_refused_and_the_read_stays_right(monkeypatch: pytest.MonkeyPatch) -> None:
    model, p, w, q = episode("binary128")
    want = read(model, p, w, q)

    def wrong_compile(fn, **kw):
        return lambda *a: tuple(t + 1e-3 for t in fn(*a))
    monkeypatch.setattr(compiled.torch, "compile", wrong_compile)
    kinds = compiled.enable(model)
    try:
        for _ in range(2):
            got = read(model, p, w, q)
            torch.testing.assert_close(got.iterates, want.iterates, atol=0, rtol=0)
        (k,) = kinds.summary()
        assert k["status"] == "refused" and k["iterate_diff"] == pytest.approx(1e-3, rel=1e-3)
        assert "differs from the eager loop" in k["reason"]
    finally:
        compiled.disable(model)


def assert_one_eager_kind(model, p: dict, w: dict, q: torch.Tensor, status: str, why: str) -> None:
    """With compiled reads on, the read equals the plain read and its one kind became `status` for `why`."""
    want = read(model, p, w, q)
    kinds = compiled.enable(model)
    try:
        torch.testing.assert_close(read(model, p, w, q).iterates, want.iterates, atol=0, rtol=0)
        (k,) = kinds.summary()
        assert k["status"] == status and why in k["reason"]
    finally:
        compiled.disable(model)


def test_a_compile_that_fails_leaves_the_read_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a):
        raise RuntimeError("no C++ compiler")
    monkeypatch.setattr(compiled.torch, "compile", lambda fn, **kw: broken)
    assert_one_eager_kind(*episode("binary128"), status="failed", why="no C++ compiler")


@needs_compiler
def test_a_read_its_checked_graph_refuses_runs_eagerly_and_compiles_nothing_unchecked() -> None:
    from torch._dynamo.utils import counters
    model, p, w, q = episode("binary128")
    kinds = compiled.enable(model)
    try:
        read(model, p, w, q)                                   # compiled and checked on a contiguous query
        graphs = counters["stats"]["unique_graphs"]
        buf = torch.zeros(1, 2 * q.shape[1])                     # the same query, every other float of a buffer
        buf[:, ::2] = q
        got = read(model, p, w, buf[:, ::2])                     # its strides fail the graph's guards
        assert counters["stats"]["unique_graphs"] == graphs      # no graph compiled for it
        compiled.disable(model)
        torch.testing.assert_close(got.iterates, read(model, p, w, q).iterates, atol=1e-5, rtol=0)
        (k,) = kinds.summary()
        assert k["status"] == "used"                             # the kind still serves contiguous queries
    finally:
        compiled.disable(model)


@needs_compiler
def test_each_session_reads_its_own_memory_through_one_compiled_kind() -> None:
    """Written weights are the compiled graph's inputs, not constants baked in at its first call."""
    model, p, w_a, q = episode("binary128-rnn")
    g = torch.Generator().manual_seed(9)
    w_b = write(model, p, (torch.rand(16, *model.cfg.input_shape, generator=g) < 0.5).float()).weights
    want_a, want_b = read(model, p, w_a, q), read(model, p, w_b, q)
    assert (want_a.iterates[-1] - want_b.iterates[-1]).abs().max() > 0.1      # the sessions answer differently
    kinds = compiled.enable(model)
    try:
        read(model, p, w_a, q)                                   # compiled and checked on session A
        (kind,) = kinds.kinds.values()
        calls = counting(kind)
        got_b, got_a = read(model, p, w_b, q), read(model, p, w_a, q)
        assert calls == [1, 1]
        torch.testing.assert_close(got_b.iterates, want_b.iterates, atol=1e-5, rtol=0)
        torch.testing.assert_close(got_a.iterates, want_a.iterates, atol=1e-5, rtol=0)
    finally:
        compiled.disable(model)


@needs_compiler
def test_reads_on_other_threads_while_a_new_kind_compiles_stay_right_and_the_new_kind_is_used() -> None:
    import threading
    model, p, w, q = episode("binary128")
    want = read(model, p, w, q)
    want_last = read(model, p, w, q, energies="last")
    kinds = compiled.enable(model)
    try:
        read(model, p, w, q)                                     # one kind compiled and checked
        wrong: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            while not stop.is_set():
                got = read(model, p, w, q)
                wrong.append(float((got.iterates - want.iterates).abs().max()))
        threads = [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            got_last = read(model, p, w, q, energies="last")    # a new kind, compiled meanwhile
        finally:
            stop.set()
            for t in threads:
                t.join()
        torch.testing.assert_close(got_last.iterates, want_last.iterates, atol=1e-5, rtol=0)
        assert [k["status"] for k in kinds.summary()] == ["used", "used"]
        assert wrong and max(wrong) <= 1e-5
    finally:
        compiled.disable(model)


def test_frozen_compiled_reads_compile_no_new_kind() -> None:
    model, p, w, q = episode("binary128")
    kinds = compiled.enable(model)
    kinds.freeze()
    try:
        got = read(model, p, w, q, steps=3)
        assert kinds.summary() == []
        compiled.disable(model)
        torch.testing.assert_close(got.iterates, read(model, p, w, q, steps=3).iterates, atol=0, rtol=0)
    finally:
        compiled.disable(model)


def test_a_family_whose_read_branches_on_the_query_is_not_compiled() -> None:
    ckpt = load_checkpoint(REPO / "checkpoints" / "photos32-span8k")
    model, p = ckpt.model, ckpt.model.params(detach=True)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, *model.cfg.input_shape, generator=g)
    q = x[:1].clone()
    q[..., 8:24, 8:24] = 0
    assert_one_eager_kind(model, p, write(model, p, x).weights, q, status="eager", why="branches on the query")


def test_other_batch_sizes_are_not_compiled() -> None:
    model, p, w, q = episode("binary128")
    kinds = compiled.enable(model, batch_sizes=(1,))
    try:
        read(model, p, w, q.expand(3, -1).contiguous())
        assert kinds.summary() == []
    finally:
        compiled.disable(model)


@needs_compiler
def test_every_kind_compiles_however_many_there_are() -> None:
    """torch.compile runs a function past its eighth compiled graph eagerly without a word; each kind of read has
    a function of its own, so the tenth batch size compiles like the first."""
    from torch._dynamo.utils import counters
    model, p, w, q = episode("binary128")
    sizes = tuple(range(1, 11))
    kinds = compiled.enable(model, batch_sizes=sizes)
    try:
        before = counters["stats"]["unique_graphs"]
        for b in sizes:
            x = q.expand(b, -1).contiguous()
            got = read(model, p, w, x, energies="last")
            torch.testing.assert_close(got.iterates[-1], read(model, p, w, x, energies="last", fast=False).iterates[-1],
                                       atol=1e-5, rtol=0)
        assert counters["stats"]["unique_graphs"] - before == len(sizes)
        assert [k["status"] for k in kinds.summary()] == ["used"] * len(sizes)
    finally:
        compiled.disable(model)
