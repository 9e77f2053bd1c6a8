"""`ebmm bench-compare`: what EBMM's quality costs, side by side with what a user would pick instead.

In one process, on the same seeded held-out episodes (N stored patterns, N distorted queries), for each
checkpoint: the EBMM write and read (serving mode), exact nearest neighbour (faiss IndexFlatL2 over the
raw patterns: the stored pattern nearest the query is returned) and a one-step modern Hopfield read
(softmax attention over the raw patterns, beta = 4 / sqrt(D), `baselines.ModernHopfield`). Reported per
method: error (the protocol's metric), milliseconds per query for the read (and per episode for the
write / index build), and the memory each keeps. Both baselines store every pattern whole (N x D
floats): they are the quality ceiling EBMM's compression trades against, not budget-matched rivals.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .baselines.nearest import ModernHopfield
from .bench import cpu_info
from .checkpoint import load_checkpoint
from .evaluate import Protocol, make_episodes, metric_for, per_pattern_error
from .memory import read, write


def _ms(seconds: float, count: int) -> float:
    return round(1000 * seconds / count, 4)


def compare(checkpoint: str | Path, episodes: int = 20, patterns: int = 64, distortion: str | None = None,
            seed: int = 0) -> dict[str, Any]:
    import faiss
    ck = load_checkpoint(checkpoint)
    model = ck.model
    t = ck.card.get("training", {})
    task = t.get("task", "binary")
    spec = distortion or t.get("distortion", "flip:16").split(",")[0]
    shape = tuple(model.cfg.input_shape)
    x, q, binary = make_episodes(Protocol(task, patterns, spec, episodes, seed), shape)
    metric, dims = metric_for(task, binary), len(shape)
    p = model.params(detach=True)
    out: dict[str, dict[str, float]] = {}

    def record(name: str, restored: torch.Tensor, build_s: float, read_s: float, floats: int) -> None:
        err = per_pattern_error(restored, x, metric, dims).mean(1)              # (M,)
        out[name] = {"error_mean": round(float(err.mean()), 4), "build_ms_per_episode": _ms(build_s, episodes),
                     "read_ms_per_query": _ms(read_s, episodes * patterns), "memory_floats": floats}

    # EBMM: T write steps, K read steps, one episode at a time as the service runs it
    restored = torch.empty_like(x)
    wt = rt = 0.0
    with torch.no_grad():
        read(model, p, write(model, p, x[0]).weights, q[0])          # warm-up: first-call costs untimed
        for i in range(episodes):
            t0 = time.perf_counter()
            w = write(model, p, x[i]).weights
            t1 = time.perf_counter()
            restored[i] = read(model, p, w, q[i]).iterates[-1]
            rt += time.perf_counter() - t1
            wt += t1 - t0
    record("ebmm", restored, wt, rt, model.memory_floats)
    # exact nearest neighbour (faiss, flat L2) over the raw patterns
    restored = torch.empty_like(x)
    bt = st = 0.0
    for i in range(episodes):
        keys = np.ascontiguousarray(x[i].flatten(1).numpy(), dtype=np.float32)
        qs = np.ascontiguousarray(q[i].flatten(1).numpy(), dtype=np.float32)
        t0 = time.perf_counter()
        index = faiss.IndexFlatL2(keys.shape[1])
        index.add(keys)
        t1 = time.perf_counter()
        _, idx = index.search(qs, 1)
        st += time.perf_counter() - t1
        bt += t1 - t0
        restored[i] = x[i][torch.from_numpy(idx[:, 0].astype(np.int64))]
    record("nearest_faiss_flat", restored, bt, st, patterns * int(np.prod(shape)))
    # modern Hopfield, one step
    mh = ModernHopfield(binary=binary)
    t0 = time.perf_counter()
    state = mh.store_batch(x)
    t1 = time.perf_counter()
    restored = mh.retrieve_batch(state, q)
    record("modern_hopfield_one_step", restored, t1 - t0, time.perf_counter() - t1,
           mh.memory_floats(patterns, shape))
    return {"checkpoint": ck.name, "architecture": ck.card.get("architecture"), "task": task, "distortion": spec,
            "patterns": patterns, "episodes": episodes, "seed": seed, "metric": metric,
            "query_error_mean": round(float(per_pattern_error(q, x, metric, dims).mean()), 4),
            "threads": torch.get_num_threads(), "methods": out}


def machine() -> str:
    c = cpu_info()
    return f"{c['cpu']}, {c['cores']} cores, torch {c['torch']}"


def markdown(rows: list[dict[str, Any]], command: str, where: str) -> str:
    lines = ["# EBMM beside exact nearest neighbour (faiss) and a one-step modern Hopfield read", "",
             f"Command: `{command}`", "", f"Machine: {where}", "",
             "| checkpoint | metric | query | method | error | read ms / query | write or index ms / episode "
             "| memory floats |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for name, m in r["methods"].items():
            lines.append(f"| {r['checkpoint']} | {r['metric']} | {r['query_error_mean']} | {name} | "
                         f"{m['error_mean']} | {m['read_ms_per_query']} | {m['build_ms_per_episode']} | "
                         f"{m['memory_floats']:,} |")
    lines += ["", f"{rows[0]['episodes'] if rows else 0} held-out episodes of {rows[0]['patterns'] if rows else 0} "
              "patterns per checkpoint, the same episodes for every method; one process, "
              f"{rows[0]['threads'] if rows else 1} torch thread(s). The baselines keep every pattern whole.", ""]
    return "\n".join(lines)


def run(checkpoints: list[str], episodes: int, patterns: int, out_json: str, out_md: str, command: str) -> str:
    rows = [compare(c, episodes, patterns) for c in checkpoints]
    where = machine()
    Path(out_json).parent.mkdir(parents=True, exist_ok=True)
    Path(out_json).write_text(json.dumps({"command": command, "machine": where, "rows": rows}, indent=1) + "\n")
    text = markdown(rows, command, where)
    Path(out_md).write_text(text)
    return text
