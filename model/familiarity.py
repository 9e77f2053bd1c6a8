"""Familiarity: how well a query agrees with what the memory recalls from it, and whether it was stored.

A stored pattern, clean or occluded, is recalled as itself, so the recall agrees with the query
everywhere except inside the occlusion (slot memories compare two views instead: see
`memory_familiarity`). A query that was never stored is recalled as some other
pattern (every memory answers with something), which disagrees with it in many places. The score is

    familiarity = 1 - (disagreement outside the w x w square where recall and query disagree most)
                      / (number of entries outside that square),

with disagreement the summed |recall - query| over channels (w = 0 for bit strings: no square). With a
mask, only the known pixels count and no square is removed. It lies in [0, 1]; 1 is perfect
agreement. `calibrate` picks the threshold on the training split (0.5% of never-stored clean
queries above it) so that at most about 1% of held-out ones are called a match; `ebmm familiarity`
stores it in the card.
"""
from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import Tensor

from . import distortions
from .energy import Params
from .energy.base import window_sums  # noqa: F401 (the baselines import it from here)
from .memory import EBMM, read, write

FALSE_MATCH_RATE = 0.01      # the aim on held-out data
CALIBRATION_RATE = 0.005     # the quantile taken on training data: half the aim, a margin for the spread


def familiarity(query: Tensor, recall: Tensor, window: int = 0, known: Tensor | None = None) -> Tensor:
    """query, recall (B, *S) in [0, 1] -> (B,) familiarity in [0, 1] (see the module docstring)."""
    e = (recall - query).abs()
    if known is not None:
        k = known.to(e.dtype)
        return 1 - (e * k).flatten(1).sum(1) / k.flatten(1).sum(1).clamp_min(1)
    if e.dim() == 4:                                          # images: channels summed per pixel
        e = e.sum(1) / e.shape[1]                             # (B, H, W)
    w = min(window, *e.shape[-2:]) if e.dim() == 3 else 0
    if w <= 0 or w * w >= e[0].numel():                      # no square, or one that would cover it all
        return 1 - e.flatten(1).mean(1)
    total = e.flatten(1).sum(1)
    worst = window_sums(e, w).flatten(1).max(1).values
    return 1 - (total - worst) / (e[0].numel() - w * w)


def memory_familiarity(model: EBMM, p: Params, weights: Params, q: Tensor, x: Tensor, window: int,
                       known: Tensor | None = None) -> Tensor:
    """Familiarity of queries q given what the memory recalled from them, x (both (B, *P)).

    Energies that can say what a stored pattern would look like through their own static part give two
    views to compare (slot memories: the query projected on their subspace, and the slot nearest the
    recall, decoded), so that what the subspace cannot hold does not count against a stored pattern; the
    others compare the query with the recall. With a mask, the known pixels of query and recall."""
    if known is None:
        views = model.energy.familiarity_views(model._energy_params({**p, **weights}), q, x)
        if views is not None:
            return familiarity(*views, window)
    return familiarity(q, x, window, known)


def query_familiarity(model: EBMM, p: Params, weights: Params, q: Tensor, x: Tensor, window: int,
                      known: Tensor | None = None) -> Tensor:
    """Whether each query was stored: the energy's own score where it has one (EnergyNet.familiarity_score,
    from the written memory and the query alone), else `memory_familiarity` of the query and its recall x.
    Candidates (top-k, samples) are ranked by `memory_familiarity`, which compares each with the query."""
    score = model.energy.familiarity_score(model._energy_params({**p, **weights}), q, known, x)
    if score is not None:
        return score
    return memory_familiarity(model, p, weights, q, x, window, known)


def default_window(model: EBMM, distortion: str) -> int:
    """The occlusion's side for images read with a block distortion (block:16 -> 16); 0 otherwise."""
    if len(model.cfg.input_shape) != 3:
        return 0
    d = distortions.parse(distortion)
    return int(d.args[0]) if d.kind == "block" else 0


def roc_auc(pos: Tensor, neg: Tensor) -> float:
    """P(a stored query scores above a never-stored one), ties counted half."""
    pos, neg = pos.double(), neg.double()
    allv = torch.cat([pos, neg])
    ranks = allv.argsort().argsort().double() + 1
    for v in allv.unique():                                  # average ranks of ties
        same = allv == v
        if same.sum() > 1:
            ranks[same] = ranks[same].mean()
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def scores(model: EBMM, stored: Tensor, other: Tensor, distortion: str, window: int,
           generator: torch.Generator) -> dict[str, Tensor]:
    """Episodes stored (M, N, *S) written; queries from them and from never-stored `other` (M, N, *S),
    clean and distorted: familiarity per query, flattened over episodes."""
    p = model.params(detach=True)
    out: dict[str, list[Tensor]] = {k: [] for k in ("stored_clean", "new_clean", "stored_distorted",
                                                       "new_distorted", "new_nearest")}
    dist = distortions.parse(distortion)
    for i in range(stored.shape[0]):
        # how near each never-stored pattern is to the nearest stored one (summed squared difference:
        # Hamming for bits), to tell near-duplicates among the never-stored that are called a match
        out["new_nearest"].append(torch.cdist(other[i].flatten(1).double(), stored[i].flatten(1).double())
                                  .min(1).values.pow(2).float())
        w = write(model, p, stored[i]).weights
        for tag, x in (("stored", stored[i]), ("new", other[i])):
            for kind, q in (("clean", x), ("distorted", dist(x, generator).x)):
                recall = read(model, p, w, q, energies="last").iterates[-1]
                out[f"{tag}_{kind}"].append(query_familiarity(model, p, w, q, recall, window))
    return {k: torch.cat(v) for k, v in out.items()}


def _episodes(task: str, split: str, n: int, episodes: int, shape: tuple[int, ...],
              g: torch.Generator, sources: int = 0) -> tuple[Tensor, Tensor]:
    """Pairs of disjoint sets: (M, N, *S) to store and (M, N, *S) never stored. sources > 0: each episode's
    images come from that many source photos of the split (crops of one photo overlap, so the fewer the
    photos, the more never-stored crops lie near a stored one)."""
    if task == "binary":
        x = (torch.rand(episodes, 2 * n, *shape, generator=g) < 0.5).float()
    else:
        from . import data
        ds = data.load(task, split)
        if sources:
            x = torch.stack([ds.images[idx] for idx in _crowded_indices(ds, 2 * n, episodes, sources, g)])
        else:
            x = data.sample_episodes(ds, 2 * n, episodes, g)
    return x[:, :n], x[:, n:]


def source_count(task: str, split: str = "test") -> int:
    """How many source photos a split's images are cropped from (0 for data without that notion)."""
    if task == "binary":
        return 0
    from . import data
    return len(data.load(task, split).info.get("photos", []))


def _crowded_indices(ds: Any, size: int, episodes: int, sources: int, g: torch.Generator) -> list[Tensor]:
    """Per episode, `size` distinct images drawn from `sources` random source photos (a split stores each
    photo's crops as one contiguous run of len / photos images)."""
    photos = len(ds.info.get("photos", []))
    if photos == 0 or len(ds) % photos:
        raise ValueError(f"sources={sources}: {ds.name} {ds.split} does not list its source photos")
    per = len(ds) // photos
    sources = min(sources, photos)
    if sources * per < size:
        raise ValueError(f"sources={sources}: {sources * per} images, fewer than the {size} an episode needs")
    out = []
    for _ in range(episodes):
        chosen = torch.randperm(photos, generator=g)[:sources]
        pool = (chosen[:, None] * per + torch.arange(per)[None]).flatten()
        out.append(pool[torch.randperm(pool.numel(), generator=g)[:size]])
    return out


def calibrate(model: EBMM, task: str, distortion: str, patterns: int = 64, episodes: int = 20,
              seed: int = 0, rate: float = CALIBRATION_RATE, sources: int | None = None) -> dict[str, Any]:
    """Threshold from the training split: the (1 - CALIBRATION_RATE) quantile of never-stored clean
    queries' familiarity (0.5% of them above it), so that on held-out data at most about 1% are.

    sources: draw each training episode from this many source photos; by default as many as the held-out
    split has (`source_count`), so that never-stored crops lie as near stored ones as they will there (0:
    from the whole split; data without source photos ignores it)."""
    g = torch.Generator().manual_seed(seed)
    window = default_window(model, distortion)
    shape = tuple(model.cfg.input_shape)
    if not source_count(task, "train"):              # no source photos to crowd episodes by
        sources = 0
    elif sources is None:
        sources = source_count(task, "test")
    s = scores(model, *_episodes(task, "train", patterns, episodes, shape, g, sources), distortion, window, g)
    return {"threshold": threshold_for(s["new_clean"], rate), "window": window,
            "false_match_rate_target": FALSE_MATCH_RATE,
            "calibration_quantile": 1 - rate,
            "calibrated_on": {"task": task, "split": "train", "patterns": patterns, "episodes": episodes,
                              "distortion": distortion, "seed": seed,
                              **({"source_photos_per_episode": sources} if sources else {})}}


def threshold_for(new: Tensor, rate: float) -> float:
    """The lowest threshold on a 1e-6 grid at which at most `rate` of the never-stored scores `new` match
    (score >= threshold): just above the (k+1)-th largest score, k = floor(rate n). Where scores tie there
    (scores clamped to 0 tie for most never-stored queries of a good memory), it lies above the tie, not on
    it: a threshold of 0 would call every query a match."""
    v = new.double().flatten()
    v = v[~v.isnan()].sort(descending=True).values
    if v.numel() == 0:
        raise ValueError("no never-stored scores to calibrate on")
    k = min(int(math.floor(rate * v.numel())), v.numel() - 1)
    return min(round(math.floor(float(v[k]) * 1e6) / 1e6 + 1e-6, 6), 1.0)


def _false_matches(s: dict[str, Tensor], threshold: float) -> dict[str, Any]:
    """The never-stored clean queries called a match, and how near they lie to a stored pattern (summed
    squared difference to the nearest one) beside every never-stored query: are they near-duplicates?"""
    near, hit = s["new_nearest"].double(), s["new_clean"] >= threshold
    q = lambda v, a: round(float(torch.quantile(v, a)), 3)  # noqa: E731
    return {"count": int(hit.sum()), "of": int(hit.numel()),
            "nearest_stored_error": {"median": q(near[hit], 0.5), "max": round(float(near[hit].max()), 3)}
            if bool(hit.any()) else None,
            "every_never_stored_nearest_error": {"p1": q(near, 0.01), "p5": q(near, 0.05), "median": q(near, 0.5)},
            "measure": "sum of squared differences to the nearest stored pattern of the episode (bits: Hamming)"}


def evaluate_familiarity(model: EBMM, task: str, distortion: str, threshold: float, window: int,
                         patterns: int = 64, episodes: int = 50, seed: int = 1) -> dict[str, Any]:
    """Held-out (test split): ROC AUC stored against never-stored, clean and distorted; match rates."""
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    s = scores(model, *_episodes(task, "test", patterns, episodes, tuple(model.cfg.input_shape), g),
               distortion, window, g)
    rate = lambda v: round(float((v >= threshold).double().mean()), 5)  # noqa: E731
    return {"task": task, "split": "test", "patterns": patterns, "episodes": episodes, "distortion": distortion,
            "seed": seed, "threshold": threshold, "window": window,
            "roc_auc_clean": round(roc_auc(s["stored_clean"], s["new_clean"]), 5),
            "roc_auc_distorted": round(roc_auc(s["stored_distorted"], s["new_distorted"]), 5),
            "match_rate": {k: rate(v) for k, v in s.items() if k != "new_nearest"},
            "median": {k: round(float(v.median()), 5) for k, v in s.items() if k != "new_nearest"},
            "false_matches": _false_matches(s, threshold),
            "seconds": round(time.perf_counter() - t0, 1)}
