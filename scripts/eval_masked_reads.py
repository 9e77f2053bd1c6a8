"""Masked reads: the caller says which pixels are unknown (the retrieve's `mask`). The same held-out episodes
(64 patterns, one 16x16 block per query) read by each shipped image memory with the mask and without it, for
blocks of random values and blocks of one colour, beside two lookups told the same mask.

    .venv/bin/python scripts/eval_masked_reads.py --out results/eval/masked-reads

Baselines, each given the mask: `nearest_pca_known` keeps the stored patterns' PCA codes at the model's
budget (rank = floats / N), picks the code whose decode is nearest on the known pixels and pastes its decode
into the unknown ones (thresholded for binary images); `nearest_full_known` does the same with the stored
images themselves (N x D floats: far over every budget here, a ceiling for lookups).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

FILLS = {"characters": ("bits", "zero", "one"), "photos": ("uniform", "zero")}
MODELS = {"characters": ("characters32", "characters32-8k", "characters32-span16k", "characters32-span9k",
                         "characters32-span8k", "characters32-span4k"),
          "photos": ("photos32", "photos32-8k", "photos32-span16k", "photos32-span9k", "photos32-span8k",
                     "photos32-span4k", "photos32-span2k")}


def paste_nearest(stored: torch.Tensor, q: torch.Tensor, known: torch.Tensor, binary: bool) -> torch.Tensor:
    """stored decodes (N, D), queries and known mask (B, D): the decode nearest on the known pixels, pasted."""
    d = ((q[:, None, :] - stored[None]).pow(2) * known[:, None, :]).sum(-1)        # (B, N)
    pick = stored[d.argmin(1)]
    out = known * q + (1 - known) * pick
    return (out > 0.5).float() if binary else out.clamp(0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--episodes", type=int, default=50)
    ap.add_argument("--patterns", type=int, default=64)
    ap.add_argument("--tasks", default="characters,photos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/eval/masked-reads")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from model import data, distortions
    from model.baselines.nearest import NearestPCA
    from model.bench import cpu_info
    from model.checkpoint import load_checkpoint
    from model.evaluate import per_pattern_error, summarise
    from model.memory import read, write
    out: dict = {"command": "scripts/eval_masked_reads.py " + " ".join(
                     f"--{k} {v}" for k, v in vars(args).items()),
                 "cpu": cpu_info()["cpu"], "patterns": args.patterns, "episodes": args.episodes,
                 "split": "test", "block": 16, "rows": []}
    for task in args.tasks.split(","):
        test, train = data.load(task, "test"), data.load(task, "train")
        binary = task == "characters"
        metric = "hamming" if binary else "squared_error"
        models = {n: load_checkpoint(Path("checkpoints") / n) for n in MODELS[task]}
        pca = NearestPCA(budget_floats=0).fit(train.images)
        for fill in FILLS[task]:
            g = torch.Generator().manual_seed(args.seed)
            x = data.sample_episodes(test, args.patterns, args.episodes, g)              # (M, N, *S)
            dist = distortions.parse(f"block:16:{fill}")(x.flatten(0, 1), g)
            q, known = dist.x.view_as(x), (~dist.mask).view_as(x)
            def err(y: torch.Tensor, x: torch.Tensor = x, metric: str = metric) -> torch.Tensor:
                return per_pattern_error(y, x, metric, 3).mean(1)                      # (M,)
            base = {"task": task, "fill": fill, "metric": metric,
                    "query": summarise(err(q))["error_mean"]}
            for name, ck in models.items():
                m = ck.model
                p = m.params(detach=True)
                res = {"masked": torch.empty_like(x), "unmasked": torch.empty_like(x)}
                t0 = time.perf_counter()
                for i in range(x.shape[0]):
                    w = write(m, p, x[i]).weights
                    res["masked"][i] = read(m, p, w, q[i], mask=known[i], energies="last").iterates[-1]
                    res["unmasked"][i] = read(m, p, w, q[i], energies="last").iterates[-1]
                row = {**base, "memory": name, "architecture": ck.card["architecture"],
                       "memory_floats": ck.card["memory_floats"], "seconds": round(time.perf_counter() - t0, 1)}
                for kind, y in res.items():
                    row[kind] = summarise(err(y))
                out["rows"].append(row)
                print(json.dumps(row), flush=True)
                # the lookups at this model's budget, told the same mask
                r = min(ck.card["memory_floats"] // args.patterns, pca.basis.shape[1])
                u = pca.basis[:, :r]
                look = torch.empty_like(x)
                for i in range(x.shape[0]):
                    dec = ((x[i].flatten(1) - pca.mean) @ u) @ u.T + pca.mean
                    look[i] = paste_nearest(dec, q[i].flatten(1), known[i].flatten(1).float(), binary).view_as(x[i])
                out["rows"].append({**base, "memory": f"nearest_pca_known (rank {r})", "architecture": "baseline",
                                    "memory_floats": r * args.patterns, "masked": summarise(err(look))})
            full = torch.stack([paste_nearest(x[i].flatten(1), q[i].flatten(1), known[i].flatten(1).float(),
                                              binary).view_as(x[i]) for i in range(x.shape[0])])
            out["rows"].append({**base, "memory": "nearest_full_known", "architecture": "baseline",
                                "memory_floats": args.patterns * x[0, 0].numel(),
                                "masked": summarise(err(full))})
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# Masked reads ({args.patterns} patterns, one 16x16 block per query, {args.episodes} held-out "
             "episodes)", "", f"Command: `{out['command']}`", "", f"Machine: {out['cpu']}", "",
             "| task | block fill | memory (floats) | with the mask | without it | query |",
             "|---|---|---|---|---|---|"]
    for r in out["rows"]:
        un = "" if r.get("unmasked") is None else f"{r['unmasked']['error_mean']:.2f}"
        lines.append(f"| {r['task']} ({r['metric']}) | {r['fill']} | {r['memory']} ({r['memory_floats']:,}) | "
                     f"{r['masked']['error_mean']:.2f} | {un} | {r['query']:.2f} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
