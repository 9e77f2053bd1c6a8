"""Choose the span memory's bit fit (steps, well) for binary images on the TRAINING split, never on
held-out data: 30 episodes of 64 training characters, a 16x16 block of random bits, seed 7.

    .venv/bin/python scripts/tune_bit_fit.py CHECKPOINT OUT.json

CHECKPOINT: a characters span checkpoint (e.g. one made by `ebmm train --preset characters-span-r126
--task characters --steps 0`). Writes the Hamming error of every (steps, well) tried.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.evaluate import Protocol, make_episodes
from model.memory import read, write

GRID = [(1000, 0.0), (1000, 0.001), (1000, 0.002), (1000, 0.005), (1000, 0.01), (1000, 0.02), (1000, 0.05),
        (500, 0.002), (250, 0.002)]


def main(checkpoint: str, out: str) -> None:
    torch.set_num_threads(1)
    ck = load_checkpoint(checkpoint)
    m, p = ck.model, ck.model.params(detach=True)
    proto = Protocol("characters", 64, "block:16", episodes=30, seed=7)
    x, q, _ = make_episodes(proto, tuple(m.cfg.input_shape), split="train")
    rows = []
    for steps, well in GRID:
        m.energy.bit_fit_steps, m.energy.bit_fit_well = steps, well
        t0, errs = time.time(), []
        for i in range(x.shape[0]):
            w = write(m, p, x[i]).weights
            y = read(m, p, w, q[i], energies="last").iterates[-1]
            errs.append(float(((y > 0.5).float() != x[i]).flatten(1).float().sum(1).mean()))
        rows.append({"bit_fit_steps": steps, "bit_fit_well": well, "hamming": round(sum(errs) / len(errs), 3),
                     "seconds_per_episode": round((time.time() - t0) / len(errs), 3)})
        print(rows[-1], flush=True)
    doc = {"checkpoint": ck.name, "split": "train", "episodes": proto.episodes, "patterns": proto.patterns,
           "distortion": proto.distortion, "seed": proto.seed, "rows": rows,
           "command": "python scripts/tune_bit_fit.py " + " ".join(sys.argv[1:])}
    Path(out).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
