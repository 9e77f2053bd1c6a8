"""Serving writes and reads at two commits, side by side on one host: what a change to the model's fast paths
buys, measured so that a host whose speed drifts (shared cores) moves both sides alike.

    .venv/bin/python scripts/bench_serving_ab.py --before 63770f7 --in-process --rounds 8 \
        --out results/explore/serving-ab-63770f7-in-process

Each commit is checked out in a temporary git worktree and both commits' `model` packages are loaded into this
one process; per checkpoint, one torch thread, it times the write of 64 patterns and the reads of 64 and of 1
query with the last energy only, through `model.memory.read` (the model alone) and `model.serving.Memory.read`
(what the service calls), at both commits in turn, the order flipped every round: fresh processes per commit
drift apart with the host, one process shares its drift between the sides. Writes
<out>/rounds.json (every round's medians) and <out>/README.md (the median over rounds, and after / before).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ("binary128", "binary128-rnn", "characters32", "photos32", "photos32-span8k", "photos32-span16k")

COLUMNS = ("write_64_ms", "read_64_ms", "served_read_64_ms", "read_1_ms", "served_read_1_ms")


def in_process(trees: dict[str, Path], names: list[str], rounds: int, repeats: int) -> list[dict]:
    """Both commits' `model` packages in this one process (as model_before and model_after: the package's own
    imports are relative), the same checkpoint's ops timed side by side, the order flipped every round, so
    that a drift of the host's speed within minutes falls on both alike; both share the process's allocator."""
    import importlib

    import torch
    torch.set_num_threads(1)
    links = Path(tempfile.mkdtemp())
    mods = {}
    for side, tree in trees.items():
        (links / f"model_{side}").symlink_to(tree / "model")
    sys.path.insert(0, str(links))
    for side in trees:
        mods[side] = {m: importlib.import_module(f"model_{side}.{m}") for m in ("bench", "checkpoint", "memory",
                                                                                 "serving")}

    from model.bench import median_ms as ms                   # this checkout's timer, for both sides

    out = [{"before": {}, "after": {}} for _ in range(rounds)]
    for name in names:
        ops = {}
        for side, m in mods.items():
            ck = m["checkpoint"].load_checkpoint(REPO / "checkpoints" / name)
            model, p = ck.model, ck.model.params(detach=True)
            x, q = m["bench"]._episode(model, 64, torch.Generator().manual_seed(0))
            mem, w = m["serving"].Memory(ck), m["memory"].write(model, p, x).weights
            rd, wr = m["memory"].read, m["memory"].write
            ops[side] = {"write_64_ms": (lambda wr=wr, model=model, p=p, x=x: wr(model, p, x), max(3, repeats // 4))}
            for b in (64, 1):
                n = repeats if b == 1 else max(5, repeats // 2)
                ops[side][f"read_{b}_ms"] = (lambda rd=rd, model=model, p=p, w=w, b=b, q=q:
                                             rd(model, p, w, q[:b], energies="last"), n)
                ops[side][f"served_read_{b}_ms"] = (lambda mem=mem, w=w, b=b, q=q:
                                                    mem.read(w, q[:b], energies="last"), n)
        for r in range(rounds):
            for side in (("before", "after") if r % 2 == 0 else ("after", "before")):
                out[r][side][name] = {k: ms(fn, n) for k, (fn, n) in ops[side].items()}
        print(f"{name} done", flush=True)
    return out


def rev_name(rev: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default="HEAD")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--checkpoints", default=",".join(CHECKPOINTS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--in-process", action="store_true",
                    help="both commits' model packages in this one process (the only mode; the flag is kept so that "
                         "the commands recorded in results/ rerun as written)")
    a = ap.parse_args()
    revs = {"before": rev_name(a.before), "after": rev_name(a.after)}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for side, rev in revs.items():
            trees[side] = Path(tmp) / side
            subprocess.run(["git", "worktree", "add", "--detach", str(trees[side]), rev], cwd=REPO, check=True,
                           capture_output=True)
        try:
            rounds = in_process(trees, a.checkpoints.split(","), a.rounds, a.repeats)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, capture_output=True)
    command = "python scripts/bench_serving_ab.py " + " ".join(sys.argv[1:])
    machine = {"cpu": _cpu(), "python": platform.python_version(), "torch_threads": 1}
    (out / "rounds.json").write_text(json.dumps({"command": command, "revisions": revs, "machine": machine,
                                                 "rounds": rounds}, indent=1) + "\n")
    names = a.checkpoints.split(",")
    lines = [f"# Serving reads at {revs['before']} (before) and {revs['after']} (after), alternated "
             f"({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)", "",
             f"Command: `{command}`", "", f"Machine: {machine['cpu']}, one torch thread, Python {machine['python']}.",
             "", f"Milliseconds: the median over {a.rounds} rounds of each round's median; "
             + "both commits' model packages ran in one process, each checkpoint's ops timed at both commits in "
             "turn, in alternating order, round by round (both share the process's memory allocator). "
             "`read`: model.memory.read (the model alone); `served`: model.serving.Memory.read (what the service "
             "calls); last energy only.", "",
             "| checkpoint | " + " | ".join(f"{c[:-3].replace('_', ' ')}: before | after | after/before"
                                           for c in COLUMNS) + " |",
             "|---|" + "---|---|---|" * len(COLUMNS)]
    for n in names:
        cells = []
        for c in COLUMNS:
            b = statistics.median(rd["before"][n][c] for rd in rounds)
            f = statistics.median(rd["after"][n][c] for rd in rounds)
            cells.append(f"{b:.3f} | {f:.3f} | {f / b:.2f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
