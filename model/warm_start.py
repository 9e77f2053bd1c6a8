"""Warm starts of a deep energy's static part before meta-training (the CPU recipe's first ingredient).

`autoencode_trunk`: the energy's trunk (what `EnergyNet.static_features` computes first: the ResNet
blocks and the embedding of the FC energy, the feature map of the conv energy) is trained as the encoder of
an autoencoder on training images, with a linear decoder to pixel logits and the binary cross-entropy of
the reconstruction; the decoder is thrown away. Only parameters the embedding depends on change: the
writable slice, the layers above the embedding and the loops keep their initial values, so meta-training
starts from the same place except for a trunk that already tells the images apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .memory import EBMM


@dataclass
class WarmStartLog:
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)      # mean BCE per pixel, one per step
    changed: list[str] = field(default_factory=list)       # parameter names the warm start trained

    def summary(self) -> dict:
        """What the resume state and the card keep of it."""
        def mean(v: list[float]) -> float:
            return round(sum(v) / len(v), 4) if v else float("nan")
        return {"kind": "autoencoder", "steps": self.steps, "seconds": round(self.seconds, 1),
                "loss_first_10": mean(self.losses[:10]), "loss_last_10": mean(self.losses[-10:]),
                "parameters": len(self.changed)}


def _embedding(model: EBMM, x: Tensor) -> Tensor:
    p = dict(model.energy.named_parameters())
    feats = model.energy.static_features(p, x)
    if feats is None:
        raise ValueError(f"{type(model.energy).__name__} has no static features to warm-start")
    return feats[0].flatten(1)


def autoencode_trunk(model: EBMM, images: Tensor, seconds: float = 0.0, steps: int = 0, batch: int = 64,
                     lr: float = 1e-3, seed: int = 0) -> WarmStartLog:
    """Train model's trunk in place as an autoencoder's encoder on images (M, *input_shape) in [0, 1], for
    `steps` steps or, if 0, for `seconds` of wall clock. Returns the log (losses per step)."""
    if steps <= 0 and seconds <= 0:
        raise ValueError("autoencode_trunk needs steps > 0 or seconds > 0")
    g = torch.Generator().manual_seed(seed)
    probe = images[:2]
    with torch.enable_grad():
        emb = _embedding(model, probe)
        grads = torch.autograd.grad(emb.sum(), [t for _, t in model.energy.named_parameters()], allow_unused=True)
    trunk = [(n, t) for (n, t), gr in zip(model.energy.named_parameters(), grads, strict=True) if gr is not None]
    if not trunk:
        raise ValueError("the energy's embedding depends on no parameter")
    dim, pixels = emb.shape[1], images[0].numel()
    decoder = torch.nn.Linear(dim, pixels, device=emb.device, dtype=emb.dtype)
    with torch.no_grad():
        decoder.weight.mul_(0.1)
    for t in model.parameters():
        t.requires_grad_(False)
    for _, t in trunk:
        t.requires_grad_(True)
    opt = torch.optim.Adam([t for _, t in trunk] + list(decoder.parameters()), lr=lr)
    log = WarmStartLog(changed=[f"energy.{n}" for n, _ in trunk])
    t0 = time.perf_counter()
    try:
        while (log.steps < steps) if steps > 0 else (time.perf_counter() - t0 < seconds):
            idx = torch.randint(0, images.shape[0], (batch,), generator=g)
            x = images[idx.to(images.device)]
            with torch.enable_grad():
                logits = decoder(_embedding(model, x))
                loss = F.binary_cross_entropy_with_logits(logits, x.flatten(1))
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            log.steps += 1
            log.losses.append(float(loss.detach()))
    finally:                                   # ready for meta-training, also after a failure
        log.seconds = time.perf_counter() - t0
        for t in model.parameters():
            t.requires_grad_(True)
    return log
