"""Beyond one deterministic read: the k best candidates per query (top-k), and stochastic reads (samples).

Both run several descents of the memory's own read from different starting points:
- starts: the query itself, then the energy family's own candidates where it has them (slot memories:
  the stored slots nearest the query in code space, each decoded and pasted over the query where the
  two disagree, so the descent starts inside that slot's basin), else the query with a random 10% of
  its entries replaced by noise (distributed memories: different starts fall into different basins);
- top-k: every start descended, duplicates dropped, ranked by familiarity (model/familiarity.py);
- samples: each sample starts from a candidate drawn with probability softmax(familiarity / T) and
  descends with annealed Langevin noise at temperature T (`read(..., temperature=T)`), so a query
  ambiguous between two stored patterns yields both, in proportion to how well each fits it.
Shapes: B queries, C candidates, S samples, *P the pattern shape.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .energy import Params
from .familiarity import memory_familiarity
from .memory import EBMM, read

PERTURB = 0.1                   # fraction of entries replaced in the default starts


@dataclass
class Candidates:
    patterns: Tensor           # (B, C, *P), best first; C <= k (duplicates dropped)
    familiarity: Tensor        # (B, C)
    energies: Tensor           # (B, C), energy of each candidate under the whole memory
    count: Tensor              # (B,) int: how many of the C are real (the rest repeat the last)


def starts(model: EBMM, p: Params, weights: Params, q: Tensor, n: int, g: torch.Generator) -> Tensor:
    """(B, n, *P) starting points: the query first, then the family's candidates or perturbed queries."""
    own = model.energy.candidate_starts(model._energy_params({**p, **weights}), q, n - 1)
    if own is None:
        noise = torch.rand((q.shape[0], n - 1, *q.shape[1:]), generator=g).to(q)
        pick = torch.rand((q.shape[0], n - 1, *q.shape[1:]), generator=g).to(q) < PERTURB
        binary = model.cfg.kind == "binary"
        own = torch.where(pick, noise.round() if binary else noise, q[:, None].expand_as(noise))
    return torch.cat([q[:, None], own], 1)


def _descend(model: EBMM, p: Params, weights: Params, x0: Tensor, q: Tensor, mask: Tensor | None,
             steps: int | None, window: int, temperature: float = 0.0, g: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
    """x0 (B, n, *P) descended; familiarity against the queries q (B, *P); energies."""
    b, n = x0.shape[:2]
    flat = x0.flatten(0, 1)
    m = None if mask is None else mask[:, None].expand_as(x0).flatten(0, 1)
    if m is not None:                                             # known pixels are the query's
        flat = torch.where(m.bool(), q[:, None].expand_as(x0).flatten(0, 1), flat)
    r = read(model, p, weights, flat, m, steps, temperature=temperature, generator=g)
    out = r.iterates[-1].view_as(x0)
    qq = q[:, None].expand_as(x0).flatten(0, 1)
    # candidates are ranked on the whole query (a masked read keeps the known pixels, so comparing only
    # those would score every candidate 1)
    fam = memory_familiarity(model, p, weights, qq, out.flatten(0, 1), window)
    return out, fam.view(b, n), r.energies[-1].view(b, n)


DISTINCT = 0.02                 # candidates closer than this (fraction of entries, or mean |difference|) are one


def _distinct(x: Tensor, y: Tensor, binary: bool) -> bool:
    if binary:
        return float(((x > 0.5) != (y > 0.5)).float().mean()) > DISTINCT
    return float((x - y).abs().mean()) > DISTINCT


def top_k(model: EBMM, p: Params, weights: Params, q: Tensor, k: int, mask: Tensor | None = None,
          steps: int | None = None, window: int = 0, seed: int = 0) -> Candidates:
    """The k best distinct candidates per query (fewer where the starts found fewer; see `count`)."""
    g = torch.Generator().manual_seed(seed)
    x0 = starts(model, p, weights, q, max(2 * k, k + 3), g)
    out, fam, en = _descend(model, p, weights, x0, q, mask, steps, window)
    binary = model.cfg.kind == "binary"
    out_cpu, fam_cpu = out.cpu(), fam.cpu()                         # the greedy loop below, off the device
    pats, fams, ens, counts = [], [], [], []
    for b in range(q.shape[0]):
        kept: list[int] = []
        for i in fam_cpu[b].argsort(descending=True).tolist():
            if all(_distinct(out_cpu[b, i], out_cpu[b, j], binary) for j in kept):
                kept.append(i)
            if len(kept) == k:
                break
        counts.append(len(kept))
        kept += [kept[-1]] * (k - len(kept))
        pats.append(out[b, kept]), fams.append(fam[b, kept]), ens.append(en[b, kept])
    return Candidates(torch.stack(pats), torch.stack(fams), torch.stack(ens), torch.tensor(counts, device=q.device))


def sample(model: EBMM, p: Params, weights: Params, q: Tensor, n: int, temperature: float,
           mask: Tensor | None = None, steps: int | None = None, window: int = 0,
           seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """n stochastic reads per query: (B, n, *P) samples, their familiarity (B, n) and energies (B, n)."""
    g = torch.Generator().manual_seed(seed)
    cands = top_k(model, p, weights, q, min(8, max(n, 2)), mask, steps, window, seed)
    logits = cands.familiarity.cpu() / max(temperature, 1e-6)      # drawn on the CPU with a CPU generator
    idx = torch.arange(cands.familiarity.shape[1])[None] < cands.count.cpu()[:, None]
    logits = logits.masked_fill(~idx, float("-inf"))
    pick = torch.multinomial(torch.softmax(logits, -1), n, replacement=True, generator=g).to(q.device)  # (B, n)
    x0 = torch.stack([cands.patterns[b, pick[b]] for b in range(q.shape[0])])             # (B, n, *P)
    return _descend(model, p, weights, x0, q, mask, steps, window, temperature, g)
