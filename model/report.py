"""`ebmm report`: evaluation JSONs -> results/README.md with tables beside the paper's, and figures
(distortion/rate curves over the paper's published points, retrieval grids, energy along reading)."""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from . import comparisons, plots
from .checkpoint import load_checkpoint
from .evaluate import Protocol, one_episode
from .train import TrainConfig

PAPER_TASK = {"characters": "omniglot", "omniglot": "omniglot", "photos": "cifar", "cifar10": "cifar",
              "binary": "binary"}
RATE_DISTORTION = "block:16"        # the paper's image protocol: a random 16x16 block


def load_results(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        for r in data if isinstance(data, list) else [data]:
            if isinstance(r, dict) and "error_mean" in r:
                rows.append({**r, "_file": path.name})
    return rows


def load_paper(path: Path) -> list[dict[str, Any]]:
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    out = []
    for r in csv.DictReader(lines):
        out.append({**r, "patterns": int(r["patterns"]), "memory_floats": int(r["memory_floats"]),
                    "error_mean": float(r["error_mean"]),
                    "error_p5": float(r["error_p5"]) if r["error_p5"] else None,
                    "error_p95": float(r["error_p95"]) if r["error_p95"] else None})
    return out


def _fmt(v: float | None) -> str:
    return "" if v is None else (f"{v:.2f}" if v < 100 else f"{v:.0f}")


def binary_tables(rows: list[dict], paper: list[dict]) -> list[str]:
    """One table per corruption level: our EBMM and baselines, then the paper's rows."""
    rows = [r for r in rows if r["task"] == "binary"]
    if not rows:
        return []
    sizes = sorted({r["patterns"] for r in rows})
    out = ["## Binary strings (128 bits): error bits per pattern", ""]
    for spec in sorted({r["distortion"] for r in rows}, key=lambda s: (len(s), s)):
        cells: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in rows:
            if r["distortion"] != spec:
                continue
            cells[f"**EBMM ({r.get('checkpoint', '?')})**"][r["patterns"]] = r
            for name, b in r.get("baselines", {}).items():
                cells[name][r["patterns"]] = b
        any_row = next(r for r in rows if r["distortion"] == spec)
        out += [f"### {any_row.get('distortion_text', spec)} (`{spec}`), {any_row['episodes']} episodes", "",
                "| model | memory floats (smallest N) | " + " | ".join(f"N={n}" for n in sizes) + " |",
                "|---|---|" + "---|" * len(sizes)]
        for name, by_n in cells.items():
            mem = next(iter(by_n.values())).get("memory_floats", "")
            vals = [by_n.get(n) for n in sizes]
            out.append(f"| {name} | {mem} | " + " | ".join(
                f"{_fmt(v['error_mean'])} [{_fmt(v['error_p5'])}, {_fmt(v['error_p95'])}]" if v else ""
                for v in vals) + " |")
        out.append("")
    out += ["### The paper's table (its own protocol, \"64 bits corrupted\")", "",
            "| model | " + " | ".join(f"N={n}" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    by_model: dict[str, dict[int, float]] = defaultdict(dict)
    for p in paper:
        if p["task"] == "binary":
            by_model[p["model"]][p["patterns"]] = p["error_mean"]
    for model, vals in by_model.items():
        out.append(f"| {model} | " + " | ".join(_fmt(vals.get(n)) for n in sizes) + " |")
    return out + [""]


FAMILIES = {"subspace_slots": "slot memory", "subspace_span": "span memory (distributed)",
            "other": "other energy"}


def _family(r: dict) -> str:
    """The energy family of an evaluation row: recorded by `ebmm evaluate`, else told by the name."""
    arch = r.get("architecture") or ("subspace_span" if "-span" in r.get("checkpoint", "") else "subspace_slots")
    return arch if arch in FAMILIES else "other"


def rate_curve(task: str, rows: list[dict], paper: list[dict], path: Path) -> Path | None:
    """Error versus memory floats at N = 64: ours (with 5-95% bars), equal-budget baselines, paper."""
    ours = [r for r in rows if r["task"] == task and r["patterns"] == 64 and r["distortion"] == RATE_DISTORTION]
    if not ours:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    ptask = PAPER_TASK.get(task)
    for model in sorted({p["model"] for p in paper if p["task"] == ptask}):
        pts = sorted((p for p in paper if p["task"] == ptask and p["model"] == model),
                     key=lambda p: p["memory_floats"])
        ax.plot([p["memory_floats"] for p in pts], [p["error_mean"] for p in pts], "--", marker=".",
                alpha=0.7, label=f"paper: {model}")
    ours = sorted(ours, key=lambda r: r["memory_floats"])
    for i, (arch, label) in enumerate(FAMILIES.items()):
        mine = [r for r in ours if _family(r) == arch]
        if mine:
            ax.errorbar([r["memory_floats"] for r in mine], [r["error_mean"] for r in mine], yerr=_bars(mine),
                        marker="os^"[i % 3], color=("k", "C3", "C4")[i % 3], capsize=3,
                        label=f"ebmm {label} (this project)")
    for name in ("nearest_pca", "nearest_downscaled", "nearest_robust_pca_paste", "nearest_robust_pca_bits",
                 "nearest_robust_autoencoder_paste", "exact_codes_ebmm_read"):
        pts = [(r["baselines"][name]["memory_floats"], r["baselines"][name]["error_mean"])
               for r in ours if name in r.get("baselines", {})]
        if pts:
            ax.scatter(*zip(*pts, strict=False), marker="x", label=f"{name} (same episodes)")
    prior = [r["baselines"]["inpainting_prior"]["error_mean"] for r in ours
             if "inpainting_prior" in r.get("baselines", {})]
    if prior:
        ax.axhline(prior[0], color="C9", ls="-.", lw=1, label="inpainting_prior (0 floats)")
    ax.set_xlabel("memory (floats)"), ax.set_ylabel(ours[0]["metric"].replace("_", " ") + " per image")
    ax.set_title(f"{task}: 64 patterns, {ours[0].get('distortion_text', ours[0]['distortion'])}", fontsize=9)
    ax.set_yscale("log"), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.set_size_inches(8.5, 4)
    return plots.save(fig, path)


def _bars(rows: list[dict]) -> list[list[float]]:
    """5th-95th percentile bars around the means (the mean of a skewed spread may lie outside them)."""
    return [[max(0.0, r["error_mean"] - r["error_p5"]) for r in rows],
            [max(0.0, r["error_p95"] - r["error_mean"]) for r in rows]]


def distortion_curve(task: str, rows: list[dict], path: Path) -> Path | None:
    """Error versus the occluded block's side at N = 64, per checkpoint evaluated at 3+ sizes, with the
    equal-budget nearest neighbour over PCA codes on the same episodes."""
    by_ckpt: dict[str, dict[int, dict]] = {}        # checkpoint -> block side -> row (a later file wins)
    query: dict[int, float] = {}
    for r in rows:
        m = re.fullmatch(r"block:(\d+)", r["distortion"])
        if r["task"] == task and r["patterns"] == 64 and m and r.get("checkpoint"):
            by_ckpt.setdefault(r["checkpoint"], {})[int(m.group(1))] = r
            query[int(m.group(1))] = r["query_error_mean"]
    curves = {k: [v[s] for s in sorted(v)] for k, v in by_ckpt.items() if len(v) >= 3}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, pts) in enumerate(sorted(curves.items())):
        sides = [int(r["distortion"].split(":")[1]) for r in pts]
        ax.errorbar(sides, [r["error_mean"] for r in pts], yerr=_bars(pts), marker="o", capsize=3,
                    color=f"C{i}", label=f"ebmm {name} ({pts[0]['memory_floats']} floats)")
        for style, bname in (("x--", "nearest_pca"), ("+:", "nearest_robust_pca_paste")):
            found = [(s, (r.get("baselines") or {}).get(bname)) for s, r in zip(sides, pts, strict=True)]
            base = [(s, b["error_mean"]) for s, b in found if b]
            if base:
                ax.plot(*zip(*base, strict=True), style, color=f"C{i}", alpha=0.7,
                        label=f"{bname}, same budget as {name}")
    ax.plot(sorted(query), [query[s] for s in sorted(query)], ":", color="gray", label="query (no memory)")
    ax.set_xlabel("side of the occluded square (pixels of 32)")
    ax.set_ylabel(pts[0]["metric"].replace("_", " ") + " per image")
    ax.set_yscale("log"), ax.grid(alpha=0.3)
    ax.set_title(f"{task}: 64 patterns, a random square of random bits", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.set_size_inches(9, 4)
    return plots.save(fig, path)


def image_table(task: str, rows: list[dict]) -> list[str]:
    rows = sorted((r for r in rows if r["task"] == task), key=lambda r: (r["patterns"], r["memory_floats"]))
    if not rows:
        return []
    out = [f"## {task}: {rows[0]['metric'].replace('_', ' ')} per image", "",
           "| checkpoint | N | distortion | memory floats | EBMM | query | baselines (error, floats) |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = ", ".join(f"{k} {_fmt(v['error_mean'])} ({v['memory_floats']})"
                         for k, v in r.get("baselines", {}).items())
        out.append(f"| {r.get('checkpoint', '?')} | {r['patterns']} | `{r['distortion']}` | {r['memory_floats']} "
                   f"| **{_fmt(r['error_mean'])}** [{_fmt(r['error_p5'])}, {_fmt(r['error_p95'])}] "
                   f"| {_fmt(r['query_error_mean'])} | {base} |")
    return out + [""]


def grids(rows: list[dict], ckpt_root: Path, out: Path) -> list[str]:
    """A retrieval grid and an energy curve per checkpoint, from its own task's paper protocol (the
    16x16 block) when it was evaluated on it, else from its first evaluated protocol."""
    lines, seen = [], set()
    own_first = sorted(rows, key=lambda r: (r.get("baselines_fitted_on", r["task"]) != r["task"],
                                            r["distortion"] != RATE_DISTORTION))
    for r in own_first:
        name = r.get("checkpoint")
        if not name or name in seen or not (ckpt_root / name / "card.json").exists():
            continue
        seen.add(name)
        ck = load_checkpoint(ckpt_root / name)
        ep = one_episode(ck.model, Protocol(r["task"], r["patterns"], r["distortion"], 1, 7))
        g = plots.retrieval_grid(ep.read.iterates, ep.x, out / f"grid_{name}.png",
                                 title=f"{name}: {r['distortion']}, {r['patterns']} stored")
        e = plots.energy_curve(ep.read.energies, out / f"energy_{name}.png", title=f"{name}: energy along reading")
        lines += [f"### {name}", "", f"![retrieval grid]({g.name}) ![energy]({e.name})", ""]
    return (["## Retrieval grids (query, each read step, original) and energy along reading", ""] + lines
            if lines else [])


def export_training_logs(ckpt_root: Path, out: Path, max_rows: int = 400) -> None:
    """Copy each checkpoint's metrics log (outside the repo) into out/NAME.csv, downsampled."""
    for card_path in sorted(ckpt_root.glob("*/card.json")):
        name = card_path.parent.name
        log = TrainConfig(out=name).resolved_state_dir() / "metrics.jsonl"   # the default run folder
        if log.exists():
            export_training_log(log, out / f"{name}.csv", max_rows)


def export_training_log(log: Path, csv_path: Path, max_rows: int = 400) -> None:
    """A run's metrics.jsonl -> a CSV of at most about max_rows rows, each the mean of consecutive steps."""
    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln.strip()]
    stride = max(1, len(rows) // max_rows)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "seconds", "n", "loss", "final_error", "query_error"])
        for i in range(0, len(rows), stride):
            chunk = rows[i:i + stride]
            last = chunk[-1]
            w.writerow([last["step"], last["seconds"], last["n"],
                        round(sum(r["loss"] for r in chunk) / len(chunk), 5),
                        round(sum(r["final_error"] for r in chunk) / len(chunk), 5),
                        round(sum(r["query_error"] for r in chunk) / len(chunk), 5)])


def recipe_ablation(folder: Path, out: Path) -> list[str]:
    """The CPU recipe's ingredients at equal wall clock (scripts/recipe_ablation.py): a table and a plot."""
    path = folder / "summary.json"
    if not path.exists():
        return []
    s = json.loads(path.read_text())
    lines = ["## The CPU meta-training recipe: what each ingredient buys at equal wall clock", "",
             f"Made by `{s['command']}`: `{s['preset']}` trained {s['seconds_per_arm'] / 60:.0f} minutes per arm "
             "(one thread, the same initialisation and seed; later arms, named by a tag, say their own minutes), "
             "each arm adding one ingredient to the one above; "
             f"held-out: {s['evaluation']['episodes']} test episodes of {s['evaluation']['patterns']} characters, "
             f"{s['evaluation']['distortion']}, the served read, Hamming. Arms that name a CPU ran later, on that "
             "host, each with its own command in summary.json; the others ran together, with other work on the "
             "machine during parts of them: compare meta-steps only between rows of one host.", "",
             "| arm | minutes | s per meta-step | meta-steps | training error, last 100 steps (query) "
             "| held-out Hamming (query) |",
             "|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, a in s["arms"].items():
        ws = a.get("warm_start")
        label = arm if not ws else f"{arm} ({ws['seconds']:.0f} s of the budget: {ws['steps']} autoencoder steps)"
        d = a.get("settings", {}).get("distill")
        if d:
            label += f", distilled from {Path(d).name} for {a['settings'].get('distill_steps') or 'every'} steps"
        if a.get("cpu"):
            label += f", on {a['cpu']}"
        for e in a.get("earlier", []):
            label += (f"; after {e['train_seconds'] / 60:.0f} minutes of meta-training ({e['meta_steps']} steps) "
                      f"it erred {e['held_out_hamming']}")
        minutes = (a["train_seconds"] + (ws or {}).get("seconds", 0)) / 60 if "train_seconds" in a else \
            s["seconds_per_arm"] / 60
        lines.append(f"| {label} | {minutes:.0f} | {a['seconds_per_meta_step']} | {a['meta_steps']} | "
                     f"{a['train_error_last_100_steps']} ({a['train_query_error_last_100_steps']}) | "
                     f"{a['held_out_hamming']} ({a['held_out_query_hamming']}) |")
        f = folder / f"{arm}.csv"
        if f.exists():
            rows = list(csv.DictReader(f.open()))
            ax.plot([float(r["seconds"]) / 60 for r in rows],
                    [float(r["final_error"]) / max(float(r["query_error"]), 1e-9) for r in rows], label=arm, lw=0.8)
    for t in s.get("static_features_timing", []):
        sp = t["seconds_per_meta_step"]
        lines.append("")
        lines.append(f"Write on the trunk's static features, `{t['preset']}`: {sp['static_features']} s per meta-step "
                     f"against {sp['whole_net']} s running the whole net at every write step ({t['speedup']}x; "
                     f"meta-gradients equal to {t['max_relative_gradient_difference']:.1e} relative; "
                     f"{t['measured_as']}).")
    ax.set_xlabel("training time (minutes, wall clock)"), ax.set_ylabel("error / query error (training episodes)")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    plots.save(fig, out / "recipe_ablation.png")
    return lines + ["", "![recipe ablation](recipe_ablation.png)", ""]


def training_curves(folder: Path, out: Path) -> list[str]:
    """Training-episode error (squared error of the last read iterate, per pattern) versus CPU time."""
    files = sorted(folder.glob("*.csv"))
    if not files:
        return []
    lines = ["## Training cost: error on training episodes versus training time", "",
             "| checkpoint | steps | wall-clock minutes (1 thread) | last error (query error) |", "|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for f in files:
        rows = list(csv.DictReader(f.open()))
        if not rows:
            continue
        t = [float(r["seconds"]) / 60 for r in rows]
        e = [float(r["final_error"]) / max(float(r["query_error"]), 1e-9) for r in rows]
        ax.plot(t, e, label=f.stem)
        last = rows[-1]
        lines.append(f"| {f.stem} | {last['step']} | {float(last['seconds']) / 60:.1f} | "
                     f"{float(last['final_error']):.2f} ({float(last['query_error']):.2f}) |")
    ax.set_xlabel("training time (minutes, wall clock)"), ax.set_ylabel("error / query error (training episodes)")
    ax.set_yscale("log"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    plots.save(fig, out / "training_curves.png")
    return lines + ["", "![training curves](training_curves.png)", ""]


def build(results: Path = Path("results"), ckpt_root: Path = Path("checkpoints"),
          paper_csv: Path = Path("results/paper_reference.csv"), command: str = "ebmm report") -> Path:
    everything = load_results(results / "eval")
    rows = [r for r in everything if not r["_file"].endswith(comparisons.LOADS_SUFFIX)]   # one cell each
    paper = load_paper(paper_csv)
    doc = ["# Results", "", f"Made by `{command}` from the evaluation JSONs in results/eval/ "
           "(each records the command that made it). Paper numbers: results/paper_reference.csv.",
           "Cells read `mean [p5, p95]`: the mean error per pattern, and the 5th and 95th percentiles over "
           "episodes of the per-episode mean (the paper's error bars).", ""]
    doc += binary_tables(rows, paper)
    doc += comparisons.binary_margins(rows)
    for task in sorted({r["task"] for r in rows} - {"binary"}):
        doc += image_table(task, rows)
        doc += comparisons.load_tables(task, everything)
        fig = comparisons.load_curve(task, everything, results / f"loads_{task}.png")
        if fig:
            doc += [f"![error against the number of stored patterns, {task}]({fig.name})", ""]
        fig = rate_curve(task, comparisons.prefer_loads(everything), paper, results / f"rate_{task}.png")
        if fig:
            doc += [f"![distortion/rate, {task}]({fig.name})", ""]
        fig = distortion_curve(task, rows, results / f"distortion_{task}.png")
        if fig:
            doc += [f"![error against the occluded area, {task}]({fig.name})", ""]
    doc += grids(rows, ckpt_root, results)
    export_training_logs(ckpt_root, results / "training")
    doc += training_curves(results / "training", results)
    doc += recipe_ablation(results / "training" / "recipe-ablation", results)
    extra = results / "NOTES.md"
    if extra.exists():
        doc += [extra.read_text()]
    path = results / "README.md"
    path.write_text("\n".join(doc) + "\n")
    return path
