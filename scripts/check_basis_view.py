"""Slot memories' small reads multiply by the basis's transpose as a view of the basis (one copy streamed
from memory) instead of a second, contiguous copy (model/energy/subspace.py: _VIEW_ROWS). This times a read
(fast path, last energy only, one thread) of 1, 2, 4 and 8 queries with each choice, alternating, on the
same written memory, and writes the medians with the CPU they ran on.

    .venv/bin/python scripts/check_basis_view.py results/explore/slot-basis-view.json
"""
from __future__ import annotations

import json
import sys

import torch

import model.energy.subspace as subspace
from model.bench import cpu_info, median_ms
from model.checkpoint import load_checkpoint
from model.memory import read, write

CHECKPOINTS = ("characters32", "photos32")


def main(out: str) -> None:
    torch.set_num_threads(1)
    default = subspace._VIEW_ROWS
    rows = []
    for name in CHECKPOINTS:
        model = load_checkpoint(f"checkpoints/{name}").model
        p = model.params(detach=True)
        g = torch.Generator().manual_seed(0)
        shape = model.cfg.input_shape
        w = write(model, p, torch.rand(64, *shape, generator=g)).weights
        for b in (1, 2, 4, 8):
            q = torch.rand(b, *shape, generator=g)
            times: dict[str, list[float]] = {"view": [], "copy": []}
            for _ in range(3):                         # alternate, so that drift hits both alike
                for mode, limit in (("view", 10**9), ("copy", 0)):
                    subspace._VIEW_ROWS = limit
                    times[mode].append(median_ms(lambda m=model, p=p, w=w, q=q: read(m, p, w, q, energies="last"), 200))
            subspace._VIEW_ROWS = default
            row = {"checkpoint": name, "queries": b, "view_ms": round(min(times["view"]), 3),
                   "copy_ms": round(min(times["copy"]), 3), "served": "view" if b <= default else "copy"}
            rows.append(row)
            print(row)
    res = {"command": "python scripts/check_basis_view.py " + out, "cpu": cpu_info(), "view_rows": default,
           "rows": rows}
    with open(out, "w") as f:
        f.write(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/explore/slot-basis-view.json")
