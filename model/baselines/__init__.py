"""Baseline associative memories behind one interface (base.py), vectorised over episodes with bmm:
classical Hopfield rules and tuned projection rules (hopfield.py); modern Hopfield, nearest-neighbour
lookups, occlusion-robust lookups that paste into the query, a memoryless inpainting prior and no memory
(nearest.py); the learned static parts some of them use (learned.py). `make_baselines` says which fit a
task; baselines with `fit_episodes` choose their knobs on training episodes, never on test ones.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .base import Baseline, State
from .hopfield import HopfieldHebb, HopfieldPinv, HopfieldStorkey, TunedPinv
from .learned import LENGTHS, load_learned
from .nearest import (
    InpaintPrior,
    ModernHopfield,
    NearestDownscaled,
    NearestFull,
    NearestPaste,
    NearestPCA,
    NearestPCABits,
    NetCodec,
    NoMemory,
    PCACodec,
    PixelCodec,
)

__all__ = [
    "Baseline", "HopfieldHebb", "HopfieldPinv", "HopfieldStorkey", "InpaintPrior", "ModernHopfield",
    "NearestDownscaled", "NearestFull", "NearestPCA", "NearestPCABits", "NearestPaste", "NetCodec", "NoMemory",
    "PCACodec", "PixelCodec", "State", "TunedPinv",
    "learned_artifacts", "make_baselines",
]

LEARNED_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "baselines"


def learned_artifacts(task: str, root: str | Path | None = None) -> dict[str, torch.nn.Module]:
    """The shipped learned baselines for a training task: {"autoencoder": net, "inpainting": net},
    each present only if its folder (ROOT/TASK-KIND) exists."""
    root = Path(root) if root is not None else LEARNED_DIR
    out = {}
    for kind in ("autoencoder", "inpainting"):
        folder = root / f"{task}-{kind}"
        if (folder / "card.json").is_file():
            out[kind] = load_learned(folder)[0]
    return out


def make_baselines(kind: str, budget_floats: int, train_images: Tensor | None, n_patterns: int,
                   binary: bool | None = None, learned: dict[str, torch.nn.Module] | None = None
                   ) -> list[Baseline]:
    """The baselines that fit a task. kind: "binary" (strings) or "grayscale" / "colour" (images).

    binary=None: strings are binary; images are binary when every training pixel is 0 or 1.
    Image sets: the PCA ones only with train_images, the learned ones only with `learned` nets;
    baselines whose budget cannot hold one float per pattern are left out. hopfield_pinv joins binary
    images as a reference at its true size, D (D+1) / 2 (524,800 floats at 32x32, far over any EBMM
    budget); it runs factored, so it is cheap to evaluate.
    """
    if kind == "binary":
        # classical rules both run to convergence and after one synchronous update (the paper's
        # Hebb row matches the latter; see results/README.md)
        return [HopfieldHebb(), HopfieldHebb(max_iters=1), HopfieldStorkey(), HopfieldStorkey(max_iters=1),
                HopfieldPinv(), HopfieldPinv(max_iters=1), HopfieldPinv(zero_diagonal=True),
                TunedPinv(search="gain"), TunedPinv(search="ridge"),
                ModernHopfield(binary=True), NearestFull(), NoMemory()]
    if kind not in ("grayscale", "colour"):
        raise ValueError(f"kind must be 'binary', 'grayscale' or 'colour', got {kind!r}")
    if binary is None:
        binary = train_images is not None and bool(((train_images == 0) | (train_images == 1)).all())
    learned = learned or {}
    out: list[Baseline] = [ModernHopfield(binary=binary), NearestFull()]
    dim = int(train_images[0].numel()) if train_images is not None else None
    if dim is not None:
        out.append(NearestPaste(PixelCodec(dim), binary))
    per_pattern = budget_floats // n_patterns
    if per_pattern >= 1:
        if train_images is not None:
            pca = NearestPCA(budget_floats, binary).fit(train_images)
            out.append(pca)
            r = pca.rank(n_patterns)
            out.append(NearestPaste(PCACodec(pca.mean, pca.basis[:, :r].contiguous()), binary))
            if binary:                    # with the span memory's bit fit (SubspaceSpanEnergy._bit_fit)
                out.append(NearestPCABits(PCACodec(pca.mean, pca.basis[:, :r].contiguous()), binary))
        lengths = [n for n in LENGTHS if n <= per_pattern]
        if "autoencoder" in learned and lengths:
            out.append(NearestPaste(NetCodec(learned["autoencoder"], lengths[-1]), binary))
        channels = 3 if kind == "colour" else 1
        if per_pattern >= channels:
            out.append(NearestDownscaled(budget_floats, binary))
    if "inpainting" in learned:
        out.append(InpaintPrior(learned["inpainting"], binary))
    if binary:
        out.append(HopfieldPinv())
    return out + [NoMemory()]
