"""Speed benchmark: serving-time write (64 patterns) and read (64 queries), and one meta-training step,
per preset: milliseconds, FLOPs (counted by torch's FlopCounterMode, backward passes included) and
achieved GFLOP/s as a fraction of this CPU's fp32 peak (cores x 2 FMA units x 8 lanes x 2 x clock)."""
from __future__ import annotations

import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from .config import get_preset, parse_value
from .energy import EnergyNet
from .memory import EBMM, closed_form_write, read, write
from .meta import meta_loss

DEFAULT_PRESETS = ("binary-hopfield", "binary-rnn-small", "binary-rnn-small@grad_norm_term=false",
                   "paper-binary-rnn", "characters-indexed", "photos-indexed", "fc-small-d32-gray",
                   "conv-small-d8-gray", "paper-fc-d64-gray", "paper-conv-d14-gray",
                   "paper-conv-d14-gray@grad_norm_term=false")


def resolve(spec: str):
    """'preset' or 'preset@key=value@key=value' (a preset with overrides, e.g. the alpha term off)."""
    name, *changes = spec.split("@")
    overrides = {}
    for c in changes:
        k, _, v = c.partition("=")
        overrides[k] = parse_value(v)
    return get_preset(name).replace(**overrides)


def cpu_info() -> dict[str, Any]:
    """Model name, cores torch uses, clock and the fp32 FMA peak per cycle and core: 64 flops with
    AVX-512 (2 FMA units x 16 lanes x 2), 32 with AVX2 FMA, else 8."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.*)", text)
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    flags = re.search(r"flags\s*:\s*(.*)", text)
    have = set(flags.group(1).split()) if flags else set()
    fma = "avx2" in have and "fma" in have
    cores = os.cpu_count() or 1
    ghz = (max(mhz) / 1000) if mhz else float("nan")
    per_cycle = 64 if fma and "avx512f" in have else 32 if fma else 8
    return {"cpu": name.group(1).strip() if name else platform.processor(), "cores": cores,
            "torch_threads": torch.get_num_threads(),
            "ghz": round(ghz, 3), "avx2_fma": fma, "avx512f": "avx512f" in have, "flops_per_cycle": per_cycle,
            "peak_gflops": round(cores * per_cycle * ghz, 1), "torch": torch.__version__}


def _seconds(fn: Callable[[], Any], calls: int) -> list[float]:
    """Seconds each of `calls` calls of fn() takes."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_ms(fn: Callable[[], Any], repeats: int) -> float:
    """Milliseconds fn() takes, the median of `repeats` calls after one warm-up call."""
    fn()                                                   # warm-up (allocations, lazy init)
    return statistics.median(_seconds(fn, repeats)) * 1000


def interleaved_median_ms(fns: dict[str, Callable[[], Any]], repeats: int, rounds: int = 5) -> dict[str, float]:
    """Milliseconds each fn takes, the median of `repeats` calls, made in `rounds` rounds that call every fn
    in turn (repeats / rounds calls each, after one warm-up call of each): on a host whose speed drifts
    within minutes, every fn sees the same drift, so the rows compare with each other."""
    for fn in fns.values():
        fn()
    per_round = max(1, -(-repeats // rounds))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k] += _seconds(fn, per_round)
    return {k: statistics.median(v) * 1000 for k, v in times.items()}


def sgemm_gflops(n: int = 512, repeats: int = 30) -> float:
    """GFLOP/s of one fp32 n x n x n matrix product on this thread, the fastest of `repeats` after a warm-up:
    what the BLAS reaches on this CPU when nothing interferes, the practical ceiling of a read's products,
    which can sit well below the FMA peak (a median moved by a fifth between runs on a shared host)."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    a @ b
    return 2 * n ** 3 / min(_seconds(lambda: a @ b, repeats)) / 1e9


_aten = torch.ops.aten
LINEAR_ALGEBRA = frozenset({   # the dense kernels a read's floor is made of: products, factorisations, solves
    _aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default, _aten.mv.default,
    _aten.addmv.default, _aten.dot.default, _aten.linalg_cholesky_ex.default, _aten.cholesky_solve.default,
    _aten._cholesky_solve_helper.default, _aten.linalg_solve_triangular.default, _aten.triangular_solve.default,
    _aten.linalg_solve_ex.default, _aten._linalg_solve_ex.default})


class _LinearAlgebraCalls(TorchDispatchMode):
    """Records the LINEAR_ALGEBRA calls a function makes, with their live arguments (the same weight tensors,
    so that a replay streams the same bytes from the same caches as the function did)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple, dict]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (torch's signature)
        kwargs = kwargs or {}
        if func in LINEAR_ALGEBRA:
            self.calls.append((func, args, kwargs))
        return func(*args, **kwargs)


def linear_algebra_ms(fn: Callable[[], Any], repeats: int) -> tuple[float, int]:
    """(milliseconds, number of calls): the dense linear algebra of one fn() call (its matrix products,
    Cholesky factorisations and solves, with the same shapes, strides and weight tensors) replayed back to
    back, median of repeats: what fn costs with every other op (element-wise, dispatch, Python) free, the
    floor that trimming those cannot go below. Arguments written in place after their call are replayed
    with their later values, which changes no shape and so no kernel's work."""
    with torch.no_grad(), _LinearAlgebraCalls() as rec:
        fn()
    calls = rec.calls

    def replay() -> None:
        for func, args, kwargs in calls:
            func(*args, **kwargs)
    with torch.no_grad():
        return median_ms(replay, repeats), len(calls)


def _flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_preset(name: str, n: int = 64, repeats: int = 5, meta_batch: int = 1) -> dict[str, Any]:
    torch.manual_seed(0)
    model = EBMM(resolve(name))
    shape = model.cfg.input_shape
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, *shape, generator=g) < 0.5).float()
    q = x.clone()
    q.view(n, -1)[:, : q[0].numel() // 8] = torch.rand(n, q[0].numel() // 8, generator=g)
    p = model.params(detach=True)
    w = write(model, p, x).weights
    ops = {
        "write": lambda: write(model, p, x),
        "read": lambda: read(model, p, w, q),
        "meta_step": lambda: meta_loss(model, x.unsqueeze(0).expand(meta_batch, *x.shape),
                                       q.unsqueeze(0).expand(meta_batch, *q.shape)).loss.backward(),
    }
    row: dict[str, Any] = {"preset": name, "arch": model.cfg.arch, "input_shape": list(shape),
                           "memory_floats": model.memory_floats, "patterns": n,
                           "parameters": sum(t.numel() for t in model.parameters()),
                           "write_steps": model.cfg.loop.write_steps, "read_steps": model.cfg.loop.read_steps,
                           "grad_norm_term": model.cfg.loop.grad_norm_term}
    for op, fn in ops.items():
        reps = 1 if op == "meta_step" else repeats
        ms = median_ms(fn, reps)
        flops = _flops(fn)
        model.zero_grad(set_to_none=True)
        row[op] = {"ms": round(ms, 2), "gflop": round(flops / 1e9, 4),
                   "gflops_per_s": round(flops / 1e9 / (ms / 1000), 2)}
    return row


def run(presets: tuple[str, ...] = DEFAULT_PRESETS, repeats: int = 5) -> dict[str, Any]:
    info = cpu_info()
    rows = []
    for name in presets:
        row = bench_preset(name, repeats=repeats)
        for op in ("write", "read", "meta_step"):
            row[op]["fraction_of_peak"] = round(row[op]["gflops_per_s"] / info["peak_gflops"], 3)
        rows.append(row)
    return {"machine": info, "pid": os.getpid(), "results": rows}


# --------------------------------------------------------------------------------------------------
# serving loops of the shipped checkpoints: `ebmm bench-serving`
# --------------------------------------------------------------------------------------------------

SERVING_CHECKPOINTS = ("checkpoints/binary128", "checkpoints/binary128-rnn", "checkpoints/characters32",
                       "checkpoints/photos32", "checkpoints/photos32-span8k", "checkpoints/photos32-span16k")
READ_VARIANTS = {   # name -> read() keyword arguments
    "autograd": {"fast": False, "energies": "all"},           # the read before the fast paths
    "fast": {"fast": True, "energies": "all"},                # closed-form grad_x E, every iterate's energy
    "fast_last": {"fast": True, "energies": "last"},          # ... and only the result's energy (npy answers)
}


def _episode(model: EBMM, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(model.cfg.input_shape)
    if len(shape) == 1:                                        # bit strings: flip the first eighth
        x = (torch.rand(n, *shape, generator=g) < 0.5).float()
        q = x.clone()
        q[:, : shape[0] // 8] = 1 - q[:, : shape[0] // 8]
    else:                                                      # images: a 16x16 block blanked
        x = torch.rand(n, *shape, generator=g)
        q = x.clone()
        q[..., 8:24, 8:24] = 0.0
    return x, q


def bench_checkpoint(folder: str | Path, repeats: int = 20) -> dict[str, Any]:
    from .checkpoint import load_checkpoint
    ck = load_checkpoint(folder)
    model, p = ck.model, ck.model.params(detach=True)
    g = torch.Generator().manual_seed(0)
    x, q = _episode(model, 64, g)
    w = write(model, p, x).weights
    row: dict[str, Any] = {"checkpoint": ck.name, "architecture": ck.card.get("architecture"),
                           "memory_floats": model.memory_floats, "read_steps": model.cfg.loop.read_steps,
                           "closed_form_grad": type(model.energy).energy_grad is not EnergyNet.energy_grad,
                           "closed_form_write": closed_form_write(model),
                           }
    writes = interleaved_median_ms({"fast": lambda: write(model, p, x),
                                    "autograd": lambda: write(model, p, x, fast=False)}, max(5, repeats // 2))
    row["write_64_ms"], row["write_64_autograd_ms"] = round(writes["fast"], 3), round(writes["autograd"], 3)
    for b in (64, 1):
        ms = interleaved_median_ms({name: (lambda b=b, kw=kw: read(model, p, w, q[:b], **kw))
                                    for name, kw in READ_VARIANTS.items()}, repeats)
        for name, t in ms.items():
            row[f"read_{b}_{name}_ms"] = round(t, 3)
        # the floor under the fast read: its matrix products and solves alone, on the same tensors
        la_ms, calls = linear_algebra_ms(lambda b=b: read(model, p, w, q[:b], **READ_VARIANTS["fast_last"]), repeats)
        row[f"read_{b}_linear_algebra_ms"], row[f"read_{b}_linear_algebra_calls"] = round(la_ms, 3), calls
    row.update(_compiled_reads(model, p, w, q, repeats))
    flops = _flops(lambda: read(model, p, w, q, **READ_VARIANTS["fast_last"]))
    row["read_64_gflop"] = round(flops / 1e9, 5)
    row["read_64_gflops_per_s"] = round(flops / 1e9 / (row["read_64_fast_last_ms"] / 1000), 2)
    return row


def _compiled_reads(model: EBMM, p: dict, w: dict, q: torch.Tensor, repeats: int) -> dict[str, Any]:
    """The fast reads of 1 and of 64 queries (last energy only) compiled (model/compiled.py), each against itself
    eager in the same rounds: what became of the compile, its seconds (compile and check) and both times where
    it is used."""
    from . import compiled
    out: dict[str, Any] = {}
    for b in (1, 64):
        kinds = compiled.enable(model, batch_sizes=(b,))
        try:
            read(model, p, w, q[:b], **READ_VARIANTS["fast_last"])               # compiles and checks
            (kind,) = kinds.summary()
            pre = f"read_{b}_compiled"
            out.update({f"{pre}_status": kind["status"], f"{pre}_seconds": kind["seconds"],
                        f"{pre}_diff": None if kind["iterate_diff"] is None
                        else max(kind["iterate_diff"], kind["energy_diff"]), f"{pre}_reason": kind["reason"]})
            if kind["status"] == "used":
                def timed(on: bool, b: int = b, kinds: compiled.CompiledReads = kinds) -> Any:
                    if on:
                        model.compiled_reads = kinds
                    else:
                        compiled.disable(model)
                    return read(model, p, w, q[:b], **READ_VARIANTS["fast_last"])
                # each variant switches the compiled reads on or off as it starts: the rounds alternate them
                ms = interleaved_median_ms({"eager": lambda: timed(False), "compiled": lambda: timed(True)}, repeats)
                out[f"{pre}_ms"], out[f"read_{b}_eager_same_rounds_ms"] = round(ms["compiled"], 3), \
                    round(ms["eager"], 3)
        finally:
            compiled.disable(model)
    return out


def serving(checkpoints: tuple[str, ...] = SERVING_CHECKPOINTS, repeats: int = 20) -> dict[str, Any]:
    """Per shipped checkpoint, one torch thread: the write of 64 patterns and reads of 64 and of 1 query,
    autograd against the closed-form fast path, with and without every iterate's energy."""
    torch.set_num_threads(1)
    info = cpu_info()
    info["torch_threads"] = 1
    core_peak = info["peak_gflops"] / info["cores"]
    sgemm = sgemm_gflops()
    rows = []
    for c in checkpoints:
        row = bench_checkpoint(c, repeats)
        row["read_64_fraction_of_core_peak"] = round(row["read_64_gflops_per_s"] / core_peak, 4)
        row["read_64_fraction_of_sgemm"] = round(row["read_64_gflops_per_s"] / sgemm, 4)
        rows.append(row)
    return {"machine": info, "core_peak_gflops": round(core_peak, 1), "sgemm_512_gflops": round(sgemm, 1),
            "results": rows}


def serving_table(out: dict[str, Any]) -> list[str]:
    m = out["machine"]
    lines = [f"{m['cpu']}, 1 torch thread, {m['ghz']} GHz, one core's fp32 peak {out['core_peak_gflops']} GFLOP/s "
             f"({m.get('flops_per_cycle', 32)} flops per cycle), torch {m['torch']}. Milliseconds, median of repeats; "
             "model time only (no HTTP). A row's reads of one size run in turn, in five rounds, so that they see "
             "the same drift of the host's speed.", "",
             "One 512 x 512 x 512 fp32 matrix product on this thread, the fastest of 30: "
             f"{out['sgemm_512_gflops']} GFLOP/s "
             f"({out['sgemm_512_gflops'] / out['core_peak_gflops']:.0%} of the core's peak), the BLAS's own ceiling "
             "here.", ""]
    lines += ["| checkpoint | closed form: read, write | write 64: autograd | fast | read 64: autograd | fast "
              "| fast, last energy only | its products alone | read 1: autograd | fast | fast, last energy only "
              "| its products alone | read 64 GFLOP/s | of one core's peak | of the 512 product's rate |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        lines.append(
            f"| {r['checkpoint']} | {'yes' if r['closed_form_grad'] else 'no'}, "
            f"{'yes' if r.get('closed_form_write') else 'no'} | "
            f"{r['write_64_autograd_ms']:.2f} | {r['write_64_ms']:.2f} | "
            f"{r['read_64_autograd_ms']:.2f} | {r['read_64_fast_ms']:.2f} | {r['read_64_fast_last_ms']:.2f} | "
            f"{r['read_64_linear_algebra_ms']:.2f} | "
            f"{r['read_1_autograd_ms']:.3f} | {r['read_1_fast_ms']:.3f} | {r['read_1_fast_last_ms']:.3f} | "
            f"{r['read_1_linear_algebra_ms']:.3f} | "
            f"{r['read_64_gflops_per_s']:.1f} | {r['read_64_fraction_of_core_peak']:.0%} | "
            f"{r['read_64_fraction_of_sgemm']:.0%} |")
    lines += ["", "Products alone: the fast read's matrix products, Cholesky factorisations and solves (the same "
              "shapes, strides and weight tensors, recorded from one read) replayed back to back: the read with "
              "every element-wise op, dispatch and Python step free. Where it exceeds an aim, no trimming of those "
              "reaches the aim; the gap between it and the read is what they cost."]
    lines += ["", "Compiled reads (opt-in: `EBMM_COMPILE_READS` compiles 1-query reads, model/compiled.py): the fast "
              "read with the last energy only through torch.compile, checked against the eager loop once (tolerance "
              "1e-5) and used only where it passed; the eager column is the same read timed in the same rounds.", "",
              "| checkpoint | queries | compile | compile and check, s | largest difference | eager | compiled "
              "| compiled / eager |", "|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        for b in (1, 64):
            st = r.get(f"read_{b}_compiled_status")
            if st is None:
                continue
            reason = str(r.get(f"read_{b}_compiled_reason")).replace("|", "/")
            what = st if st == "used" else f"{st}: {reason}"
            diff = r.get(f"read_{b}_compiled_diff")
            if st == "used":
                e, c = r[f"read_{b}_eager_same_rounds_ms"], r[f"read_{b}_compiled_ms"]
                times = f"{e:.3f} | {c:.3f} | {c / e:.2f}"
            else:
                times = "- | - | -"
            lines.append(f"| {r['checkpoint']} | {b} | {what} | {r[f'read_{b}_compiled_seconds']:.1f} | "
                         f"{'-' if diff is None else f'{diff:.2g}'} | {times} |")
    return lines
