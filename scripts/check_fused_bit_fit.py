"""The bit fit's loop in two fused products per step (SubspaceSpanEnergy._bit_fit) against the loop it
replaced (five separate operations), on the same held-out episodes of every characters span memory: how
many restored pixels differ once thresholded, the Hamming error of each, and the time of a 1- and a
64-query read with each (one thread).

    .venv/bin/python scripts/check_fused_bit_fit.py results/explore/characters-span-bit-fit-fused.json
"""
from __future__ import annotations

import json
import sys
import time

import torch

from model import data, distortions
from model.checkpoint import load_checkpoint
from model.energy.subspace import SubspaceSpanEnergy
from model.memory import read, write

CHECKPOINTS = ("characters32-span16k", "characters32-span9k", "characters32-span8k", "characters32-span4k")


def reference_bit_fit(self, qt, rec, win, out):
    """The loop as it was before: each step five separate tensor operations."""
    u = self.basis
    a = u.T[win] @ out
    blank = qt.scatter(1, win, -self.centre[win])
    base = (blank @ u.T) @ out
    z = rec.gather(1, win).clamp(-1, 1)
    prev = z
    steps, well = self.bit_fit_steps, self.bit_fit_well
    for k in range(steps):
        y = z + (k / (k + 3)) * (z - prev)
        res = base + torch.bmm(y.unsqueeze(1), a).squeeze(1)
        g = torch.bmm(res.unsqueeze(1), a.transpose(1, 2)).squeeze(1)
        prev, z = z, (y - g + (well * k / steps) * y).clamp(-1, 1)
    return rec.scatter(1, win, z)


def main(out: str, episodes: int = 50) -> int:
    torch.set_num_threads(1)
    fused = SubspaceSpanEnergy._bit_fit
    rows = []
    for name in CHECKPOINTS:
        model = load_checkpoint(f"checkpoints/{name}").model
        p = model.params(detach=True)
        g = torch.Generator().manual_seed(0)
        x = data.sample_episodes(data.load("characters", "test"), 64, episodes, g)
        q = distortions.parse("block:16")(x.flatten(0, 1), g).x.view_as(x)
        outs, secs = {}, {}
        for label, fn in (("reference", reference_bit_fit), ("fused", fused)):
            SubspaceSpanEnergy._bit_fit = fn
            res = []
            for i in range(episodes):
                w = write(model, p, x[i]).weights
                res.append(read(model, p, w, q[i], energies="last").iterates[-1] > 0.5)
            outs[label] = torch.stack(res)
            w = write(model, p, x[0]).weights
            for n in (1, 64):
                read(model, p, w, q[0, :n], energies="last")
                t0 = time.perf_counter()
                for _ in range(3):
                    read(model, p, w, q[0, :n], energies="last")
                secs[f"{label}_{n}"] = round((time.perf_counter() - t0) / 3 * 1000, 2)
        SubspaceSpanEnergy._bit_fit = fused
        ham = {k: round(float((v != (x > 0.5)).flatten(2).sum(-1).float().mean()), 3) for k, v in outs.items()}
        rows.append({"checkpoint": name, "episodes": episodes, "pixels": outs["fused"].numel(),
                     "pixels_that_differ": int((outs["fused"] != outs["reference"]).sum()),
                     "hamming": ham, "read_ms": secs})
        print(rows[-1], flush=True)
    doc = {"split": "test", "patterns": 64, "distortion": "block:16", "seed": 0, "threads": 1,
           "command": f"python scripts/check_fused_bit_fit.py {out}", "rows": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
