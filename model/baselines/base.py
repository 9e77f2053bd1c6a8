"""The baseline interface and tensor helpers shared by every baseline memory.

Baseline associative memories behind one interface, vectorised over episodes (M) with bmm.

Every baseline writes a batch of patterns and reads queries back, like EBMM (paper section 4):
  classical Hopfield nets on s = 2x-1 (Hebb; Storkey 1997; projection / pseudo-inverse, Personnaz
  et al. 1985), the modern Hopfield net (Ramsauer et al. 2020), nearest-neighbour lookup over the full
  patterns, over PCA codes or over downscaled copies at a float budget, and no memory at all.
Shapes: M episodes, N stored patterns, B queries, S the pattern shape, D = prod(S).
`memory_floats` counts only what a write produces; fitted parts (the PCA basis) are static
parameters, like EBMM's meta-learned weights.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

State = Tensor | dict[str, Tensor]


class Baseline(ABC):
    """store/retrieve one episode; store_batch/retrieve_batch M episodes at once (what harnesses call)."""
    name: str

    @abstractmethod
    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int: ...

    @abstractmethod
    def store_batch(self, patterns: Tensor) -> State: ...          # (M, N, *S) in [0,1]

    @abstractmethod
    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor: ...  # (M, B, *S) -> (M, B, *S)

    def store(self, patterns: Tensor) -> State:                     # (N, *S)
        return self.store_batch(patterns.unsqueeze(0))

    def retrieve(self, state: State, queries: Tensor) -> Tensor:    # (B, *S) -> (B, *S)
        return self.retrieve_batch(state, queries.unsqueeze(0))[0]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _signed(x: Tensor) -> Tensor:
    """[0,1] -> {-1,+1} with 0.5 mapped to +1, flattened per pattern: (M, N, *S) -> (M, N, D)."""
    return torch.where(x.flatten(2) >= 0.5, 1.0, -1.0)


def _nearest(keys: Tensor, queries: Tensor) -> Tensor:
    """Index of the nearest key by squared L2 distance: keys (M, N, F), queries (M, B, F) -> (M, B)."""
    d2 = keys.pow(2).sum(-1).unsqueeze(1) - 2 * queries @ keys.transpose(1, 2)  # (M, B, N); |q|^2 is constant
    return d2.argmin(-1)


def _gather(rows: Tensor, idx: Tensor) -> Tensor:
    """rows (M, N, F), idx (M, B) -> (M, B, F)."""
    return torch.gather(rows, 1, idx.unsqueeze(-1).expand(-1, -1, rows.shape[-1]))


def _finish(x: Tensor, binary: bool) -> Tensor:
    x = x.clamp(0.0, 1.0)
    return (x >= 0.5).to(x.dtype) if binary else x


