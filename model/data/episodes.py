"""Random patterns and episodes: sets of distinct stored patterns, one class each when classes allow."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import Dataset

_DENSE_LIMIT = 20_000_000     # above E*M random keys, draw subsets with Floyd's algorithm instead


def random_binary(n: int, d: int = 128, generator: torch.Generator | None = None) -> Tensor:
    """(n, d) float32 uniform random bits, the paper's random binary strings."""
    if n < 0 or d < 1:
        raise ValueError(f"random_binary: need n >= 0 and d >= 1, got n={n}, d={d}")
    return (torch.rand((n, d), generator=generator) < 0.5).to(torch.float32)


def distinct_indices(m: int, n: int, episodes: int, generator: torch.Generator | None = None) -> Tensor:
    """(E, n) int64: per row, n distinct indices from range(m) in random order."""
    if not 0 <= n <= m:
        raise ValueError(f"n_patterns: cannot draw {n} distinct items from {m}")
    if episodes * m <= _DENSE_LIMIT:
        keys = torch.rand((episodes, m), generator=generator)               # (E, M)
        return keys.topk(n, dim=1).indices                                  # (E, n), order is random
    chosen = torch.empty((episodes, n), dtype=torch.int64)                  # Floyd: uniform subsets
    for k, j in enumerate(range(m - n, m)):
        t = torch.randint(0, j + 1, (episodes,), generator=generator)      # (E,)
        taken = (chosen[:, :k] == t[:, None]).any(dim=1)                    # (E,)
        chosen[:, k] = torch.where(taken, torch.full_like(t, j), t)
    order = torch.rand((episodes, n), generator=generator).argsort(dim=1)   # (E, n)
    return chosen.gather(1, order)


def _one_per_class(labels: Tensor, n: int, episodes: int, generator: torch.Generator | None) -> Tensor:
    """(E, n) indices of images from n distinct classes, one random image of each."""
    classes, class_of = labels.unique(return_inverse=True)                  # (K,), (M,)
    order = class_of.argsort(stable=True)                                   # (M,) grouped by class
    counts = torch.bincount(class_of, minlength=len(classes))               # (K,)
    starts = counts.cumsum(0) - counts                                      # (K,)
    picked = distinct_indices(len(classes), n, episodes, generator)         # (E, n) class ids
    offset = (torch.rand((episodes, n), generator=generator) * counts[picked]).long()
    offset = torch.minimum(offset, counts[picked] - 1)
    return order[starts[picked] + offset]                                   # (E, n)


def episode_indices(source: Dataset | Tensor, n_patterns: int, episodes: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """(E, N) indices into source; distinct within an episode, distinct classes when enough exist."""
    labels = source.labels if isinstance(source, Dataset) else None
    m = len(source.images) if isinstance(source, Dataset) else len(source)
    if episodes < 0:
        raise ValueError(f"episodes: must be >= 0, got {episodes}")
    if labels is not None and labels.unique().numel() >= n_patterns:
        return _one_per_class(labels, n_patterns, episodes, generator)
    return distinct_indices(m, n_patterns, episodes, generator)


def sample_episodes(source: Dataset | Tensor, n_patterns: int, episodes: int,
                    generator: torch.Generator | None = None) -> Tensor:
    """(E, N, *S) episodes of distinct images (from distinct classes when the source has enough)."""
    images = source.images if isinstance(source, Dataset) else source       # (M, *S)
    idx = episode_indices(source, n_patterns, episodes, generator)          # (E, N)
    return images[idx]                                                      # (E, N, *S)
