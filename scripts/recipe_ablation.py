"""What each ingredient of the CPU meta-training recipe buys: the same deep energy trained for the same
wall clock with the ingredients added one at a time, each then evaluated on the same held-out episodes.

    .venv/bin/python scripts/recipe_ablation.py --seconds 600 --out results/training/recipe-ablation

Arms (each from the same initialisation and seed, one thread, `ebmm train`'s loop with `segment_seconds`):
  full            the paper's meta-step: every query read, K = 5, the alpha term on, N = 64 throughout
  alpha-off       the gradient-norm term off (the write then runs on the trunk's static features, once)
  16-queries      ... and the meta-loss on 16 of the 64 queries
  k2              ... and K = 2 read steps in the meta-loss (serving keeps the model's K = 5)
  curriculum      ... and a curriculum: N = 16 (block 8) -> 32 (block 12) -> 64 (block 16)
  autoencoder     ... and a warm start: the trunk trained as an autoencoder's encoder for --warm-seconds of
                  the arm's budget first (model/warm_start.py), meta-training the rest
  distill         ... and distillation from the shipped slot memory at this budget (--teacher) for the first
                  --distill-steps meta-steps (model/meta.py: Distill), the meta-loss alone after
Every arm is evaluated at the target: 64 patterns, a 16x16 random-bit block, the served K, Hamming.
Also timed: one meta-step with and without the static-feature write (identical maths), same episode.

Resume state lives under ~/.cache/ebmm/ablation/ARM; an arm that finished is not trained again, unless
--extend trains it on to a larger --seconds (another segment of the same run).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

CURRICULUM = "0:16:block:8;300:32:block:12;700:64:block:16"
ARMS = {
    "full": dict(overrides={"grad_norm_term": True}),
    "alpha-off": dict(),
    "16-queries": dict(read_queries=16),
    "k2": dict(read_queries=16, train_read_steps=2),
    "curriculum": dict(read_queries=16, train_read_steps=2, stages=CURRICULUM),
    "autoencoder": dict(read_queries=16, train_read_steps=2, stages=CURRICULUM,
                        warm=True),
    "distill": dict(read_queries=16, train_read_steps=2, stages=CURRICULUM,
                    warm=True, teacher=True),
}


def time_static_features(preset: str, repeats: int = 3) -> dict:
    """Seconds per meta-step (64 patterns, 16 queries, K = 2, alpha off) with the write on the trunk's
    static features and with the whole net run at every write step; the meta-gradients compared."""
    from model import data, distortions
    from model.config import get_preset
    from model.energy.base import EnergyNet
    from model.memory import EBMM
    from model.meta import meta_loss
    cfg = get_preset(preset)
    cfg = dataclasses.replace(cfg, loop=dataclasses.replace(cfg.loop, grad_norm_term=False))
    torch.manual_seed(0)
    model = EBMM(cfg).train()
    g = torch.Generator().manual_seed(0)
    x = data.sample_episodes(data.load("characters", "train"), 64, 1, g)
    q = distortions.parse("block:16")(x.flatten(0, 1), g).x.view_as(x)

    def step() -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        meta_loss(model, x, q, True, 16, 2).loss.backward()
        return [torch.zeros(()) if t.grad is None else t.grad.clone() for t in model.parameters()]

    real = EnergyNet.write_energy_is_energy
    out: dict = {}
    try:
        for mode in ("static_features", "whole_net") * repeats:
            EnergyNet.write_energy_is_energy = real if mode == "static_features" else property(lambda self: False)
            step()
            t0 = time.perf_counter()
            grads = step()
            out.setdefault(mode, []).append(time.perf_counter() - t0)
            out[mode + "_grads"] = grads
    finally:
        EnergyNet.write_energy_is_energy = real
    diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
               for a, b in zip(out["static_features_grads"], out["whole_net_grads"], strict=True))
    s, w = min(out["static_features"]), min(out["whole_net"])
    return {"preset": preset, "seconds_per_meta_step": {"static_features": round(s, 3), "whole_net": round(w, 3)},
            "speedup": round(w / s, 2), "max_relative_gradient_difference": diff,
            "measured_as": f"the fastest of {repeats} steps each, one thread, 64 patterns, 16 queries, K = 2"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="paper-fc-d36-gray")
    ap.add_argument("--seconds", type=float, default=600.0, help="training wall clock per arm")
    ap.add_argument("--episodes", type=int, default=100, help="held-out evaluation episodes per arm")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warm-seconds", type=float, default=120.0, help="the autoencoder arm's warm start")
    ap.add_argument("--teacher", default="checkpoints/characters32-8k", help="the distill arm's teacher")
    ap.add_argument("--distill-steps", type=int, default=1500, help="the distill arm's steps with the term on")
    ap.add_argument("--extend", action="store_true",
                    help="train arms already in the summary on to --seconds (resuming their state), evaluate "
                         "them again, and keep their earlier rows under `earlier`")
    ap.add_argument("--tag", default="", help="a suffix for the arms' names: the same arm run again "
                                              "(on another host, say) as a row of its own")
    ap.add_argument("--out", default="results/training/recipe-ablation")
    args = ap.parse_args()
    if {"autoencoder", "distill"} & set(args.arms.split(",")) and not 0 < args.warm_seconds < args.seconds:
        ap.error(f"--warm-seconds {args.warm_seconds}: must be above 0 and below --seconds {args.seconds}")
    torch.set_num_threads(1)
    from model.bench import cpu_info
    from model.evaluate import Protocol, evaluate
    from model.train import TrainConfig, train
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "scripts/recipe_ablation.py " + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {"arms": {}}
    summary.setdefault("command", command)                # the first run's; each arm keeps its own too
    summary.setdefault("seconds_per_arm", args.seconds)     # the first run's; each arm keeps its own budget
    summary.update(preset=args.preset,
                   evaluation=dict(task="characters", split="test", patterns=64, distortion="block:16",
                                   episodes=args.episodes, seed=0, metric="hamming", read_steps="the model's (5)"))
    base = dict(preset=args.preset, task="characters", distortion="block:16", patterns=(64,), meta_batch=1,
                steps=100_000, lr=args.lr, threads=1, checkpoint_every=100, seed=0,
                overrides={"grad_norm_term": False})
    for arm in args.arms.split(","):
        name = f"{arm}-{args.tag}" if args.tag else arm
        extra = dict(ARMS[arm])
        warm = args.warm_seconds if extra.pop("warm", False) else 0.0
        budget = args.seconds - warm                       # meta-training seconds, over every segment
        done = summary["arms"].get(name)
        if done is not None and not (args.extend and budget > done.get("budget_seconds", done["train_seconds"] + 1)):
            continue
        if extra.pop("teacher", False):
            extra.update(distill=args.teacher, distill_steps=args.distill_steps)
        state = Path.home() / ".cache/ebmm/ablation" / name / "state"
        saved = json.loads((state / "state.json").read_text()) if (state / "state.json").exists() else None
        if done is not None and saved is None:
            raise SystemExit(f"--extend {name}: its resume state ({state}) is gone; it cannot be extended")
        trained = saved["seconds"] if saved else 0.0        # what the resumed state holds (the log may run ahead)
        cfg = TrainConfig(**{**base, **extra, "overrides": {**base["overrides"], **extra.get("overrides", {})}},
                          out=str(Path.home() / ".cache/ebmm/ablation" / name / "ckpt"),
                          state_dir=str(state), segment_seconds=budget - trained, autoencoder_seconds=warm)
        if saved is not None and trained >= budget:         # trained its budget: evaluate only
            cfg = dataclasses.replace(cfg, steps=saved["step"], segment_seconds=0.0)
        model = train(cfg, command=command, progress=False).eval()
        rows = [json.loads(r) for r in (Path(cfg.state_dir) / "metrics.jsonl").read_text().splitlines()]
        (out / f"{name}.csv").write_text("step,seconds,n,loss,final_error,query_error\n" + "".join(
            f"{r['step']},{r['seconds']},{r['n']},{r['loss']:.5g},{r['final_error']:.5g},{r['query_error']:.5g}\n"
            for r in rows))
        for t in model.parameters():
            t.requires_grad_(False)
        res = evaluate(model, Protocol("characters", 64, "block:16", episodes=args.episodes, seed=0))
        last = rows[-100:]
        earlier = [] if done is None else [*done.get("earlier", []), {k: v for k, v in done.items() if k != "earlier"}]
        row = {
            "settings": {k: v for k, v in dataclasses.asdict(cfg).items()
                         if k in ("read_queries", "train_read_steps", "stages", "overrides", "distill",
                                  "distill_weight", "distill_steps", "distill_states")},
            "command": command, "cpu": cpu_info()["cpu"],
            "meta_steps": rows[-1]["step"], "train_seconds": rows[-1]["seconds"], "budget_seconds": budget,
            "warm_start": json.loads((Path(cfg.state_dir) / "state.json").read_text()).get("warm_start"),
            "seconds_per_meta_step": round(rows[-1]["seconds"] / rows[-1]["step"], 3),
            "train_error_last_100_steps": round(sum(r["final_error"] for r in last) / len(last), 2),
            "train_query_error_last_100_steps": round(sum(r["query_error"] for r in last) / len(last), 2),
            "held_out_hamming": round(res["error_mean"], 2),
            "held_out_query_hamming": round(res["query_error_mean"], 2),
            **({"earlier": earlier} if earlier else {})}
        summary = _update(summary_path, summary, arms={name: row})
        print(name, row, flush=True)
    if "static_features_timing" not in summary:
        summary = _update(summary_path, summary, static_features_timing=[
            time_static_features(args.preset), time_static_features("paper-conv-d8-gray", repeats=2)])
    print(json.dumps(summary["static_features_timing"], indent=1))
    return 0


def _update(path: Path, summary: dict, arms: dict | None = None, **fields) -> dict:
    """Write this run's new rows into the summary as it is on disk now (arms run side by side in other
    processes write theirs too): under a lock, the disk's rows win except the ones given, and the file is
    replaced whole."""
    import fcntl
    import os
    lock_path = Path.home() / ".cache/ebmm/ablation/summary.lock"          # outside the repo
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        disk = json.loads(path.read_text()) if path.exists() else {"arms": {}}
        merged = {**summary, **disk, **fields, "arms": {**summary["arms"], **disk["arms"], **(arms or {})}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, indent=1) + "\n")
        os.replace(tmp, path)
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
