"""The meta-objective (paper section 3.3): write N patterns, read them back from distorted queries,
and score every read iterate against the originals (step-wise squared error), averaged over patterns.
Backpropagating this through both loops trains the energy network and the rules of both loops.

`Distill` adds an optional term for the first meta-steps of a run: a teacher memory (a shipped checkpoint,
fixed) writes the same patterns and reads the same queries; from each of the first S states of the teacher's
read trajectory, one read step of the model being trained should land on the teacher's recall. It is
supervision along the path a working memory takes, where the meta-loss scores only the model's own path."""
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
    distill_error: float = 0.0   # the distillation term before its weight (0 without a teacher)


class Distill:
    """A fixed teacher memory whose read trajectories supervise the model's read steps (see above)."""

    def __init__(self, teacher: EBMM, weight: float = 1.0, states: int = 3):
        if weight <= 0 or states < 1:
            raise ValueError(f"distillation weight={weight}, states={states}: both must be positive")
        self.teacher = teacher.eval()
        for t in self.teacher.parameters():
            t.requires_grad_(False)
        self.params = self.teacher.params(detach=True)
        self.weight, self.states = weight, states

    @torch.no_grad()
    def trajectory(self, patterns: Tensor, queries: Tensor) -> tuple[Tensor, Tensor]:
        """The teacher's first S read states (S, Q, *shape) and its recall (Q, *shape)."""
        written = write(self.teacher, self.params, patterns).weights
        traj = read(self.teacher, self.params, written, queries, energies="last").iterates
        return traj[:min(self.states, traj.shape[0] - 1)], traj[-1]


def distill_term(model: EBMM, p, written, distill: Distill, patterns: Tensor, queries: Tensor) -> Tensor:
    """Mean squared error per query of one model read step from each teacher state to the teacher's recall."""
    states, recall = distill.trajectory(patterns, queries)
    nxt = read(model, p, written, states.flatten(0, 1), steps=1, create_graph=True, energies="last").iterates[-1]
    return (nxt.view_as(states) - recall.unsqueeze(0)).pow(2).flatten(2).sum(-1).mean()


def episode_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True,
                 read_queries: int | None = None, read_steps: int | None = None,
                 distill: Distill | None = None) -> MetaLoss:
    """One episode: patterns (N, *S) written, queries (N, *S) their distorted copies.

    read_queries: read back only the first Q queries (a cheaper, unbiased meta-loss when the episode's
    patterns are in random order); read_steps: K for this loss (default: the model's); distill: add the
    teacher's term on the same queries."""
    p = model.params()
    written = write(model, p, patterns, create_graph=True).weights
    stored = patterns
    if read_queries is not None and read_queries < queries.shape[0]:
        patterns, queries = patterns[:read_queries], queries[:read_queries]
    traj = read(model, p, written, queries, steps=read_steps, create_graph=True).iterates   # (K+1, Q, *S)
    err = (traj - patterns.unsqueeze(0)).pow(2).flatten(2).sum(-1)            # (K+1, Q)
    loss = err[1:].mean() if stepwise else err[-1].mean()
    err = err.detach()
    d = 0.0
    if distill is not None:
        term = distill_term(model, p, written, distill, stored, queries)
        loss, d = loss + distill.weight * term, float(term.detach())
    return MetaLoss(loss, float(err[-1].mean()), float(err[0].mean()), d)


def meta_loss(model: EBMM, patterns: Tensor, queries: Tensor, stepwise: bool = True,
              read_queries: int | None = None, read_steps: int | None = None,
              distill: Distill | None = None) -> MetaLoss:
    """Meta-batch of episodes: patterns, queries (M, N, *S); the mean of the episodes' losses."""
    parts = [episode_loss(model, patterns[i], queries[i], stepwise, read_queries, read_steps, distill)
             for i in range(patterns.shape[0])]
    m = len(parts)
    return MetaLoss(torch.stack([q.loss for q in parts]).mean(),
                    sum(q.final_error for q in parts) / m, sum(q.query_error for q in parts) / m,
                    sum(q.distill_error for q in parts) / m)
