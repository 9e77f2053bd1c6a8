"""Choose, on the training split, the weight of the bit-fit residual in the characters span memories'
familiarity score (SubspaceSpanEnergy.familiarity_score with a recall): the ROC AUC of stored against
never-stored queries, clean and with a 16x16 random-bit block, for each weight and checkpoint.

    .venv/bin/python scripts/tune_span_familiarity.py results/explore/characters-span-familiarity.json
"""
from __future__ import annotations

import json
import sys
import time

import torch

from model import data, distortions
from model.checkpoint import load_checkpoint
from model.energy.base import _signed
from model.familiarity import roc_auc
from model.memory import read, write

CHECKPOINTS = ("characters32-span4k", "characters32-span8k", "characters32-span9k", "characters32-span16k")
WEIGHTS = (0.0, 10.0, 30.0, 60.0, 100.0, 300.0)


def main(out: str, episodes: int = 10, seed: int = 0) -> int:
    torch.set_num_threads(1)
    rows = []
    for name in CHECKPOINTS:
        model = load_checkpoint(f"checkpoints/{name}").model
        energy, p = model.energy, model.params(detach=True)
        g = torch.Generator().manual_seed(seed)
        x = data.sample_episodes(data.load("characters", "train"), 128, episodes, g)
        dist = distortions.parse("block:16")
        parts: dict[str, list[torch.Tensor]] = {}
        t0 = time.perf_counter()
        for i in range(episodes):
            stored = x[i, :64]
            w = write(model, p, stored).weights
            ep = model._energy_params({**p, **w})
            for tag, xx in (("stored", stored), ("new", x[i, 64:])):
                for kind, q in (("clean", xx), ("occluded", dist(xx, g).x)):
                    recall = read(model, p, w, q, energies="last").iterates[-1]
                    qt = _signed(q).flatten(1) - energy.centre
                    base = energy._subspace_fit_score(ep, qt, torch.eye(energy.rank))
                    rho = energy.bit_fit_residual(ep, recall)
                    parts.setdefault(f"{tag}_{kind}", []).append(torch.stack([base, rho]))
        s = {k: torch.cat(v, dim=1) for k, v in parts.items()}
        for lam in WEIGHTS:
            score = {k: (v[0] - lam * v[1]) for k, v in s.items()}
            rows.append({"checkpoint": name, "residual_weight": lam,
                         "auc_clean": round(roc_auc(score["stored_clean"], score["new_clean"]), 4),
                         "auc_occluded": round(roc_auc(score["stored_occluded"], score["new_occluded"]), 4)})
            print(rows[-1], flush=True)
        print(name, f"{time.perf_counter() - t0:.0f} s", flush=True)
    doc = {"split": "train", "episodes": episodes, "patterns": 64, "distortion": "block:16", "seed": seed,
           "score": "familiarity_score(query) - weight * bit_fit_residual(recall)",
           "command": f"python scripts/tune_span_familiarity.py {out}", "rows": rows}
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
