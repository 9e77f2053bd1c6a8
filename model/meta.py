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


def episode_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True) -> MetaLoss:
    """One episode: patterns (N, *S) written, queries (N, *S) their distorted copies."""
    p = model.params()
    written = write(model, p, patterns, create_graph=True).weights
    traj = read(model, p, written, queries, create_graph=True).iterates      # (K+1, N, *S)
    err = (traj - patterns.unsqueeze(0)).pow(2).flatten(2).sum(-1)            # (K+1, N)
    loss = err[1:].mean() if stepwise else err[-1].mean()
    err = err.detach()
    return MetaLoss(loss, float(err[-1].mean()), float(err[0].mean()))


def meta_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True) -> MetaLoss:
    """Meta-batch of episodes: patterns, queries (M, N, *S); the mean of the episodes' losses."""
    parts = [episode_loss(model, patterns[i], queries[i], stepwise) for i in range(patterns.shape[0])]
    m = len(parts)
    return MetaLoss(torch.stack([q.loss for q in parts]).mean(),
                    sum(q.final_error for q in parts) / m, sum(q.query_error for q in parts) / m)
