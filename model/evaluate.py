"""The paper's evaluation protocols: seeded episodes of held-out patterns, written, read back from
distorted queries, scored per pattern; EBMM and the baselines on the very same episodes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from . import baselines as bl
from . import distortions
from .memory import EBMM, ReadResult, append, read, write

METRICS = {
    "error_bits": "bits that differ from the stored string (output thresholded at 0.5), per pattern",
    "hamming": "pixels that differ from the stored binary image (output thresholded at 0.5), per image",
    "squared_error": "sum of squared pixel differences over all channels, per image",
}


@dataclass
class Protocol:
    task: str              # "binary" or a dataset name
    patterns: int          # N written per episode
    distortion: str        # model.distortions spec
    episodes: int = 1000   # M; the paper's error bars are 5th-95th percentiles over 1000 batches
    seed: int = 0


@lru_cache(maxsize=4)
def _split(task: str, split: str):
    """A dataset split, loaded once per process: `ebmm evaluate` runs many cells on the same data."""
    from . import data
    return data.load(task, split)


def metric_for(task: str, binary_data: bool) -> str:
    if task == "binary":
        return "error_bits"
    return "hamming" if binary_data else "squared_error"


def per_pattern_error(out: Tensor, target: Tensor, metric: str, pattern_dims: int) -> Tensor:
    """out, target (..., *S) with len(S) = pattern_dims -> (...,): the error of each pattern."""
    if metric == "squared_error":
        d = (out - target).pow(2)
    else:
        d = ((out > 0.5).to(target.dtype) != target).to(out.dtype)
    return d.flatten(-pattern_dims).sum(-1)


def summarise(per_episode: Tensor) -> dict[str, float]:
    """Mean and 5th/95th percentiles over episodes of the per-episode mean error."""
    q = torch.quantile(per_episode.double(), torch.tensor([0.05, 0.95], dtype=torch.double))
    return {"error_mean": round(float(per_episode.mean()), 4), "error_p5": round(float(q[0]), 4),
            "error_p95": round(float(q[1]), 4)}


# graded loads: patterns per episode at which `ebmm evaluate` reports image memories by default
IMAGE_LOADS = (16, 32, 64, 96, 128)
FIT_SEED = 1_000_003          # training episodes for baselines' knobs: another seed, the train split
FIT_EPISODES = {"binary": 200, "images": 8}


def make_episodes(proto: Protocol, shape: tuple[int, ...], split: str = "test") -> tuple[Tensor, Tensor, bool]:
    """Patterns (M, N, *S) of a split (held-out: "test"), their distorted queries, whether binary."""
    g = torch.Generator().manual_seed(proto.seed)
    if proto.task == "binary":
        x = (torch.rand(proto.episodes, proto.patterns, *shape, generator=g) < 0.5).float()
        binary = True
    else:
        from . import data
        ds = _split(proto.task, split)
        x = data.sample_episodes(ds, proto.patterns, proto.episodes, g)
        binary = bool(((ds.images == 0) | (ds.images == 1)).all())
    if tuple(x.shape[2:]) != tuple(shape):
        raise ValueError(f"task {proto.task!r} gives patterns of shape {tuple(x.shape[2:])}, "
                         f"the model takes {tuple(shape)}")
    q = distortions.parse(proto.distortion)(x.flatten(0, 1), g).x.view_as(x)
    return x, q, binary


@dataclass
class Episode:
    """One seeded episode written and read back: patterns, queries, the read, and the time each loop took."""
    x: Tensor                  # (N, *S)
    q: Tensor                  # (N, *S)
    binary: bool
    read: ReadResult
    write_seconds: float
    read_seconds: float


def one_episode(model: EBMM, proto: Protocol) -> Episode:
    """The first episode of `proto` written into `model` and read back from its distorted queries."""
    x, q, binary = make_episodes(Protocol(proto.task, proto.patterns, proto.distortion, 1, proto.seed),
                                 tuple(model.cfg.input_shape))
    p = model.params(detach=True)
    t0 = time.perf_counter()
    w = write(model, p, x[0]).weights
    t1 = time.perf_counter()
    res = read(model, p, w, q[0])
    return Episode(x[0], q[0], binary, res, t1 - t0, time.perf_counter() - t1)


def run_ebmm(model: EBMM, x: Tensor, q: Tensor, read_steps: int | None = None,
             exact: bool = False) -> Tensor:
    """Write each episode's patterns and read its queries back: (M, N, *S) -> (M, N, *S).

    exact=True skips the write and sets the writable slice from the patterns' exact codes
    (`EBMM.exact_weights`): the same read over exactly stored codes, a baseline."""
    p = model.params(detach=True)
    dev = next(iter(p.values())).device                     # episodes live on the CPU; the model may not
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        xi = x[i].to(dev)
        w = model.exact_weights(p, xi) if exact else write(model, p, xi).weights
        out[i] = read(model, p, w, q[i].to(dev), steps=read_steps).iterates[-1].cpu()
    return out


def run_ebmm_append(model: EBMM, x: Tensor, q: Tensor) -> Tensor:
    """Each episode written as its first half, then the second half appended (with the first half's append
    state where the energy keeps one, as a service session does), and read back."""
    p = model.params(detach=True)
    dev = next(iter(p.values())).device
    out = torch.empty_like(x)
    h = x.shape[1] // 2
    for i in range(x.shape[0]):
        xi = x[i].to(dev)
        state = model.energy.append_state(xi[:h])
        w = append(model, p, write(model, p, xi[:h]).weights, xi[h:], h, state).weights
        out[i] = read(model, p, w, q[i].to(dev)).iterates[-1].cpu()
    return out


def _append_rule(model: EBMM) -> str:
    """How the energy appends, in words (model.memory.append)."""
    e = model.energy
    if e.redeals_on_append:
        return "redeal: the slots dealt again as a write of all patterns at once would deal them"
    if e.writes_additively:
        return "add: further write steps on the new patterns, each adding what a write of all would add"
    if e.append_state(torch.zeros(1, *model.cfg.input_shape)) is not None:
        kept = "the stored patterns themselves" if e.append_state_grows else "sums over the stored patterns"
        return f"restate: the session keeps {kept} and writes all patterns from theta_bar"
    return "continue: further write steps from the written weights on the new patterns"


def evaluate(model: EBMM, proto: Protocol, with_baselines: bool = False,
             read_steps: int | None = None, train_task: str | None = None,
             with_append: bool = False) -> dict[str, Any]:
    """One protocol cell: EBMM (and, if asked, every baseline) on the same seeded episodes.

    train_task: the data the model was meta-trained on; baselines fit their static parts (PCA bases)
    on it too, so that a transfer test (e.g. characters -> mnist) gives them no more than the model."""
    shape = tuple(model.cfg.input_shape)
    x, q, binary = make_episodes(proto, shape)
    metric = metric_for(proto.task, binary)
    dims = len(shape)
    steps = model.cfg.loop.read_steps if read_steps is None else read_steps
    t0 = time.perf_counter()
    out = run_ebmm(model, x, q, read_steps)
    seconds = time.perf_counter() - t0
    res: dict[str, Any] = {
        "task": proto.task, "patterns": proto.patterns, "memory_floats": model.memory_floats,
        "distortion": proto.distortion, "distortion_text": distortions.describe(proto.distortion),
        "metric": metric, "metric_text": METRICS[metric], "episodes": proto.episodes, "seed": proto.seed,
        "read_steps": steps,
        **summarise(per_pattern_error(out, x, metric, dims).mean(1)),
        "query_error_mean": round(float(per_pattern_error(q, x, metric, dims).mean()), 4),
        "seconds_per_episode": round(seconds / proto.episodes, 5),
    }
    if with_append:
        halves = run_ebmm_append(model, x, q)
        res["append_halves"] = {**summarise(per_pattern_error(halves, x, metric, dims).mean(1)),
                                "how": f"{proto.patterns // 2} written, then {proto.patterns - proto.patterns // 2} "
                                       "appended (model.memory.append), on the same episodes",
                                "rule": _append_rule(model)}
    if with_baselines:
        res["baselines"] = run_baselines(model, proto, x, q, binary, metric, train_task or proto.task)
        res["baselines_fitted_on"] = train_task or proto.task
    return res


def run_baselines(model: EBMM, proto: Protocol, x: Tensor, q: Tensor, binary: bool, metric: str,
                  train_task: str) -> dict[str, dict[str, Any]]:
    """Every baseline that fits the task on the test episodes x, q; knobs fitted on training episodes."""
    shape = tuple(x.shape[2:])
    kind = model.cfg.kind if proto.task == "binary" else ("colour" if x.shape[2] == 3 else "grayscale")
    train = None if train_task == "binary" else _split(train_task, "train").images
    learned = {} if train is None else bl.learned_artifacts(train_task)
    dims = x.dim() - 2

    def mean_error(out: Tensor, target: Tensor) -> Tensor:
        return per_pattern_error(out, target, metric, dims).mean()

    fit_x = fit_q = None
    out: dict[str, dict[str, Any]] = {}
    if model.exact_weights(model.params(detach=True), x[0]) is not None:
        recon = run_ebmm(model, x, q, exact=True)
        out["exact_codes_ebmm_read"] = {**summarise(per_pattern_error(recon, x, metric, dims).mean(1)),
                                        "memory_floats": model.memory_floats}
    for b in bl.make_baselines(kind, model.memory_floats, train, proto.patterns, binary=binary, learned=learned):
        row: dict[str, Any] = {}
        if hasattr(b, "fit_episodes"):
            if fit_x is None:
                n_fit = FIT_EPISODES["binary" if proto.task == "binary" else "images"]
                fit_task = proto.task if proto.task == "binary" else train_task
                fit_x, fit_q, _ = make_episodes(Protocol(fit_task, proto.patterns, proto.distortion, n_fit,
                                                         FIT_SEED + proto.seed), shape, split="train")
            fitted = b.fit_episodes(fit_x, fit_q, mean_error)
            row["fitted_on_training_episodes"] = {"episodes": fit_x.shape[0], **fitted}
        recon = torch.cat([b.retrieve_batch(b.store_batch(x[i:i + 50]), q[i:i + 50])
                           for i in range(0, x.shape[0], 50)])
        out[b.name] = {**summarise(per_pattern_error(recon, x, metric, dims).mean(1)),
                       "memory_floats": b.memory_floats(proto.patterns, shape), **row}
    return out
