"""The meta-objective (paper section 3.3): write N patterns, read them back from distorted queries,
and score every read iterate against the originals (step-wise squared error), averaged over patterns.
Backpropagating this through both loops trains the energy network and the rules of both loops."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .memory import EBMM, read, write


@dataclass
class MetaLoss:
    loss: Tensor          # scalar with a graph through both loops
    final_error: float    # mean squared error per pattern of the last iterate (diagnostic)
    query_error: float    # the same for the distorted query itself


def episode_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True,
                 read_queries: int | None = None, read_steps: int | None = None) -> MetaLoss:
    """One episode: patterns (N, *S) written, queries (N, *S) their distorted copies.

    read_queries: read back only the first Q queries (a cheaper, unbiased meta-loss when the episode's
    patterns are in random order); read_steps: K for this loss (default: the model's)."""
    p = model.params()
    written = write(model, p, patterns, create_graph=True).weights
    if read_queries is not None and read_queries < queries.shape[0]:
        patterns, queries = patterns[:read_queries], queries[:read_queries]
    traj = read(model, p, written, queries, steps=read_steps, create_graph=True).iterates   # (K+1, Q, *S)
    err = (traj - patterns.unsqueeze(0)).pow(2).flatten(2).sum(-1)            # (K+1, Q)
    loss = err[1:].mean() if stepwise else err[-1].mean()
    err = err.detach()
    return MetaLoss(loss, float(err[-1].mean()), float(err[0].mean()))


def meta_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True,
              read_queries: int | None = None, read_steps: int | None = None) -> MetaLoss:
    """Meta-batch of episodes: patterns, queries (M, N, *S); the mean of the episodes' losses."""
    parts = [episode_loss(model, patterns[i], queries[i], stepwise, read_queries, read_steps)
             for i in range(patterns.shape[0])]
    m = len(parts)
    return MetaLoss(torch.stack([q.loss for q in parts]).mean(),
                    sum(q.final_error for q in parts) / m, sum(q.query_error for q in parts) / m)
