"""Compiled serving reads (opt-in): the fast read loop through torch.compile, each compile checked first.

A one-query read (`memory.fast_read`) is a few hundred small tensor ops (the closed-form gradient's hops or
products, the Nesterov steps, the diagnostic energy), so its time is dispatch, not arithmetic. torch.compile
(inductor) fuses the element-wise ops around the matrix products. Once `enable` has been called on a model, its
reads of the batch sizes named run compiled. Each new kind of read (batch size, masked or not, energies, steps,
grad and inference mode) is compiled on its first call and run eagerly beside it on the same inputs. A compile
that fails, or whose iterates or energies differ from the eager loop's by more than `TOLERANCE`, is not used
again, and that kind of read stays eager. A checked graph runs in torch.compile's run-only mode: a call whose
inputs its guards refuse (other strides, say) runs the same loop eagerly instead of compiling an unchecked
graph.

`ebmm bench-serving` (results/bench_serving.md) measures the compiled one-query read of every shipped model and
says what became of its compile. Families whose read branches on the query's values (the span memories' damaged
window) are not compiled (`EnergyNet.fill_read_cache`).
"""
from __future__ import annotations

import itertools
import threading
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .memory import fast_read

TOLERANCE = 1e-5
DEFAULT_BATCH_SIZES = (1,)
# inductor's pattern matcher rewrites torch.add(x, a @ b, alpha=c) as addmm(x, a, b), dropping c (torch 2.13:
# 3 lines in scripts/inductor_alpha_check.py reproduce it; pytorch issues 167313 and 196577 report its kin for
# addmm's own alpha and beta): with it on, the slot memories' gradient came out wrong by 25.6 on a gradient of
# size 3.65, and the check refused it
INDUCTOR_OPTIONS = {"pattern_matcher": False}


@dataclass
class CompiledKind:
    """One kind of read's compile: status "used" (checked and in use), "refused" (it differed from the eager
    loop), "failed" (compiling raised) or "eager" (the family is not compiled, or the compiled read raised after
    its check); seconds to compile and check; the largest difference from the eager loop, iterates and energies
    (relative); the reason."""
    status: str
    seconds: float
    iterate_diff: float | None = None
    energy_diff: float | None = None
    reason: str | None = None
    fn: Callable[..., tuple[Tensor, Tensor]] | None = None
    reads: int = 0                  # reads it has answered through `fn` since its check

    def summary(self) -> dict[str, Any]:
        return {"status": self.status, "seconds": round(self.seconds, 2), "iterate_diff": self.iterate_diff,
                "energy_diff": self.energy_diff, "reason": self.reason, "reads": self.reads}


_LOOPS = itertools.count()


def _own_loop(n: int) -> Callable[..., tuple[Tensor, Tensor]]:
    """`fast_read` with a code object of its own: torch.compile keeps its compiled graphs on the code object,
    up to a limit (8) shared by every model and kind of read, past which it runs the function eagerly without a
    word; one code object per kind holds exactly its one graph."""
    code = fast_read.__code__.replace(co_name=f"fast_read_{n}")
    return types.FunctionType(code, fast_read.__globals__, code.co_name, fast_read.__defaults__,
                              fast_read.__closure__)


def _why(e: Exception) -> str:
    """An exception in one line: its type and the first line of its message (torch.compile's run to pages)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


def _diff(a: Tensor, b: Tensor, relative: bool) -> float:
    d = (a - b).abs().max().item()
    return d / max(1.0, b.abs().max().item()) if relative else d


class CompiledReads:
    """A model's compiled reads, one per kind (see the module's docstring); `kinds` says what each became."""

    def __init__(self, energy: torch.nn.Module, batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES) -> None:
        self.energy, self.batch_sizes = energy, frozenset(batch_sizes)
        self.kinds: dict[tuple, CompiledKind] = {}
        self.frozen = False                 # True: compile no new kind (`freeze`)
        self._lock = threading.Lock()

    def freeze(self) -> None:
        """From now on compile no new kind of read: kinds not compiled yet (another number of steps, say) run
        eagerly. The service freezes each model's compiled reads once their start-up compiles are done."""
        self.frozen = True

    def applies(self, batch: int) -> bool:
        return batch in self.batch_sizes

    def read(self, ep: dict, cache: dict, queries: Tensor, keep: Tensor | None, gamma: list[float],
             psi: list[float], energies: str) -> tuple[Tensor, Tensor] | None:
        """The read compiled, or None where this kind of read runs eagerly (the caller then does)."""
        last = energies == "last"
        key = (tuple(queries.shape), queries.dtype, str(queries.device), keep is not None, last, len(gamma),
               torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        if not self.energy.fill_read_cache(ep, queries, cache):
            self.kinds.setdefault(key, CompiledKind("eager", 0.0, reason="the family's read branches on the query's "
                                                    "values (EnergyNet.fill_read_cache)"))
            return None
        kind = self.kinds.get(key)
        if kind is None:
            if self.frozen:                 # a kind not compiled at start-up: no request waits for a compile
                return None
            with self._lock:
                kind = self.kinds.get(key)
                if kind is None:
                    kind, out = self._compile(ep, cache, queries, keep, gamma, psi, last)
                    self.kinds[key] = kind
                    return out
        if kind.fn is None:
            return None
        try:
            # run only the checked graph: on inputs its guards refuse (other strides, say) the same function
            # runs eagerly for that call instead of compiling an unchecked graph (per thread, unlike a stance)
            out = kind.fn(self.energy, ep, cache, queries, keep, gamma, psi, last)
            kind.reads += 1
            return out
        except Exception as e:  # noqa: BLE001 (anything the compiled code raises: eager from then on)
            kind.fn, kind.status, kind.reason = None, "eager", f"after its check: {_why(e)}"
            return None

    def _compile(self, ep: dict, cache: dict, queries: Tensor, keep: Tensor | None, gamma: list[float],
                 psi: list[float], last: bool) -> tuple[CompiledKind, tuple[Tensor, Tensor]]:
        t0 = time.perf_counter()
        eager = fast_read(self.energy, ep, cache, queries, keep, gamma, psi, last)
        fn = torch.compile(_own_loop(next(_LOOPS)), dynamic=False, fullgraph=True, options=INDUCTOR_OPTIONS)
        try:
            out = fn(self.energy, ep, cache, queries, keep, gamma, psi, last)
        except Exception as e:  # noqa: BLE001 (no C++ compiler, an op inductor lacks: the read stays eager)
            return CompiledKind("failed", time.perf_counter() - t0, reason=_why(e)), eager
        seconds = time.perf_counter() - t0
        di, de = _diff(out[0], eager[0], relative=False), _diff(out[1], eager[1], relative=True)
        if not (di <= TOLERANCE and de <= TOLERANCE):           # a NaN difference is refused too
            return CompiledKind("refused", seconds, di, de, f"differs from the eager loop by {max(di, de):.3g} "
                                f"(tolerance {TOLERANCE:g})"), eager
        return CompiledKind("used", seconds, di, de, fn=torch._dynamo.run(fn)), eager

    def summary(self) -> list[dict[str, Any]]:
        return [{"batch": k[0][0], "masked": k[3], "energies": "last" if k[4] else "all", "steps": k[5],
                 "grad_mode": k[6], "inference_mode": k[7], **v.summary()} for k, v in self.kinds.items()]


def enable(model: torch.nn.Module, batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES) -> CompiledReads:
    """Compile `model`'s serving reads of these batch sizes from now on (memory.read picks them up)."""
    model.compiled_reads = CompiledReads(model.energy, batch_sizes)
    return model.compiled_reads


def disable(model: torch.nn.Module) -> None:
    model.__dict__.pop("compiled_reads", None)


def enabled(model: torch.nn.Module) -> CompiledReads | None:
    """`model`'s compiled reads (`enable`), or None where none are enabled."""
    return model.__dict__.get("compiled_reads")
