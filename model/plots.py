"""Figures: retrieval grids (query, each read iterate, original), energy along reading, rate curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor


def _as_image(x: Tensor) -> Tensor:
    """(*S) -> (H, W, C) for display; 128-bit strings are shown as 8x16 tiles."""
    if x.dim() == 1:
        n = x.numel()
        width = 16 if n % 16 == 0 else n
        x = x.view(1, n // width, width)
    return x.permute(1, 2, 0).clamp(0, 1)


def save(fig: plt.Figure, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def retrieval_grid(iterates: Tensor, originals: Tensor, path: str | Path, rows: int = 8,
                   title: str = "") -> Path:
    """iterates (K+1, B, *S) starting at the query; one row per pattern: query, iterates, original."""
    k1, b = iterates.shape[:2]
    rows = min(rows, b)
    fig, axes = plt.subplots(rows, k1 + 1, figsize=(1.1 * (k1 + 1), 1.1 * rows), squeeze=False)
    for r in range(rows):
        for c in range(k1 + 1):
            img = _as_image(originals[r] if c == k1 else iterates[c, r])
            ax = axes[r][c]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("query" if c == 0 else ("original" if c == k1 else f"step {c}"), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    return save(fig, path)


def energy_curve(energies: Tensor, path: str | Path, title: str = "") -> Path:
    """energies (K+1, B): mean and 5-95% band of the energy along reading."""
    e = energies.double()
    q = torch.quantile(e, torch.tensor([0.05, 0.95], dtype=torch.double), dim=1)
    steps = range(e.shape[0])
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot(steps, e.mean(1), marker="o", label="mean")
    ax.fill_between(steps, q[0], q[1], alpha=0.3, label="5-95%")
    ax.set_xlabel("read step"), ax.set_ylabel("energy"), ax.legend()
    ax.set_title(title, fontsize=8)
    return save(fig, path)
