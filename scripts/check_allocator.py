"""Minor page faults, kernel time and wall time per read, with glibc's default allocator thresholds and with
model.allocator.keep_freed_memory, each in fresh processes, alternated over rounds (one torch thread):

    .venv/bin/python scripts/check_allocator.py --rounds 4 --out results/explore/allocator-faults.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNIPPET = r"""
import json, resource, statistics, sys, time
import torch
torch.set_num_threads(1)
from model.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "kept" else False
from model.bench import _episode
from model.checkpoint import load_checkpoint
from model.memory import read, write
from model.serving import Memory
out = {"kept": kept}
for name in sys.argv[2].split(","):
    ck = load_checkpoint("checkpoints/" + name)
    model, p = ck.model, ck.model.params(detach=True)
    x, q = _episode(model, 64, torch.Generator().manual_seed(0))
    mem = Memory(ck)
    w = write(model, p, x).weights
    for _ in range(3):
        mem.read(w, q, energies="last")
    n = int(sys.argv[3])
    r0, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(n):
        t0 = time.perf_counter(); mem.read(w, q, energies="last"); times.append(time.perf_counter() - t0)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    out[name] = {"minor_faults_per_read": (r1.ru_minflt - r0.ru_minflt) / n,
                 "kernel_ms_per_read": (r1.ru_stime - r0.ru_stime) / n * 1000,
                 "read_64_ms_median": statistics.median(times) * 1000}
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--reads", type=int, default=10)
    ap.add_argument("--checkpoints", default="characters32,photos32,photos32-span8k,photos32-span16k")
    ap.add_argument("--out", default="results/explore/allocator-faults.json")
    a = ap.parse_args()
    rounds = []
    for r in range(a.rounds):
        got = {}
        for side in (("default", "kept") if r % 2 == 0 else ("kept", "default")):
            run = subprocess.run([sys.executable, "-c", SNIPPET, side, a.checkpoints, str(a.reads)], cwd=REPO,
                                 check=True, capture_output=True, text=True)
            got[side] = json.loads(run.stdout.strip().splitlines()[-1])
        rounds.append(got)
        print(f"round {r + 1}/{a.rounds} done", flush=True)
    summary = {}
    for name in a.checkpoints.split(","):
        summary[name] = {side: {k: round(statistics.median(rd[side][name][k] for rd in rounds), 3)
                                for k in ("minor_faults_per_read", "kernel_ms_per_read", "read_64_ms_median")}
                         for side in ("default", "kept")}
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.machine()) if Path("/proc/cpuinfo").exists() else ""
    out = {"command": "python scripts/check_allocator.py " + " ".join(sys.argv[1:]),
           "machine": {"cpu": cpu, "python": platform.python_version(), "torch_threads": 1},
           "what": "64-query reads through model.serving.Memory.read (last energy only) after 3 warm-up reads; "
                   "medians over rounds of each fresh process's figures; default: glibc's thresholds, kept: "
                   "model.allocator.keep_freed_memory()",
           "kept_took_effect": all(rd["kept"]["kept"] for rd in rounds),
           "summary": summary, "rounds": rounds}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
