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
from torch.utils.flop_counter import FlopCounterMode

from .config import get_preset, parse_value
from .memory import EBMM, read, write
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
    """Model name, cores torch uses, clock and the fp32 FMA peak (AVX2: 32 flops per cycle per core)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = re.search(r"model name\s*:\s*(.*)", text)
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    flags = re.search(r"flags\s*:\s*(.*)", text)
    fma = bool(flags and "avx2" in flags.group(1).split() and "fma" in flags.group(1).split())
    cores = os.cpu_count() or 1
    ghz = (max(mhz) / 1000) if mhz else float("nan")
    per_cycle = 32 if fma else 8
    return {"cpu": name.group(1).strip() if name else platform.processor(), "cores": cores,
            "torch_threads": torch.get_num_threads(),
            "ghz": round(ghz, 3), "avx2_fma": fma,
            "peak_gflops": round(cores * per_cycle * ghz, 1), "torch": torch.__version__}


def _time(fn: Callable[[], Any], repeats: int) -> float:
    fn()                                                   # warm-up (allocations, lazy init)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


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
        ms = _time(fn, reps)
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
