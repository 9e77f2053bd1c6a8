"""Learned static parts for baselines: an ordered (nested-dropout) conv autoencoder and a memoryless
conv inpainting prior, trained on a task's training split and shipped as safetensors + a JSON card.

- `CodecNet`: 3 stride-2 convs -> a K-float code -> mirrored decoder. Trained with nested dropout
  (Rippel et al. 2014): each image keeps only a random prefix of its code, so any prefix of length L
  in `lengths` is a code of L floats. A nearest-neighbour memory stores N codes of budget/N floats:
  the compression a deep static part can give a memory, with no write loop at all.
- `InpaintNet`: dilated 3x3 convs with residuals (receptive field > 32 pixels), trained on
  occluded -> clean pairs of the training split: how much of an occluded block its context alone
  fills, with 0 memory floats.
Shapes: B images, C/H/W image, K code floats.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS, CARD = "model.safetensors", "card.json"
# every budget / N the evaluation asks for (16K, 8K, 4K floats at N = 16..128), and a few more
LENGTHS = (16, 31, 42, 63, 84, 126, 168, 252, 336, 504)


class CodecNet(nn.Module):
    """x (B, C, 32, 32) in [0, 1] <-> code (B, K); `decode(code[:, :L])` for any trained prefix L."""

    def __init__(self, channels: int = 1, code: int = 504, width: int = 32):
        super().__init__()
        w = width
        self.code = code
        self.enc = nn.Sequential(nn.Conv2d(channels, w, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(4 * w * 16, code))
        self.dec_in = nn.Linear(code, 4 * w * 16)
        self.dec = nn.Sequential(nn.SiLU(), nn.Unflatten(1, (4 * w, 4, 4)),
                                 nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(w, channels, 4, 2, 1))

    def encode(self, x: Tensor, length: int | None = None) -> Tensor:
        z = self.enc(2 * x - 1)                                  # (B, K)
        return z if length is None else z[:, :length]

    def decode_logits(self, z: Tensor) -> Tensor:
        """z (B, L) with L <= K: the missing tail of the code is zero (what nested dropout trains)."""
        if z.shape[1] < self.code:
            z = F.pad(z, (0, self.code - z.shape[1]))
        return self.dec(self.dec_in(z))                          # (B, C, 32, 32)

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decode_logits(z))


class InpaintNet(nn.Module):
    """q (B, C, H, W) in [0, 1] -> restored image in [0, 1]; residual dilated convs, no memory."""

    def __init__(self, channels: int = 1, width: int = 48, dilations: tuple[int, ...] = (1, 2, 4, 8, 4, 2, 1)):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=d, dilation=d) for d in dilations)
        self.out = nn.Conv2d(width + channels, channels, 1)

    def forward(self, q: Tensor) -> Tensor:
        s = 2 * q - 1
        h = F.silu(self.inp(s))
        for conv in self.blocks:
            h = h + F.silu(conv(h))
        return torch.sigmoid(self.out(torch.cat([h, s], 1)))


NETS: dict[str, type[nn.Module]] = {"autoencoder": CodecNet, "inpainting": InpaintNet}


@dataclass
class LearnedConfig:
    kind: str = "autoencoder"          # "autoencoder" or "inpainting"
    task: str = "characters"           # training split of this dataset
    distortion: str = "block:16"       # inpainting: the protocol's occlusion
    seconds: float = 480.0             # wall-clock budget
    batch: int = 128
    lr: float = 2e-3                   # Adam, cosine-decayed to 0 over `seconds`
    seed: int = 0
    threads: int = 1
    net: dict[str, Any] = field(default_factory=dict)   # constructor arguments of the net


def _binary(images: Tensor) -> bool:
    return bool(((images == 0) | (images == 1)).all())


def _loss(out_logits_or_probs: Tensor, target: Tensor, binary: bool, logits: bool) -> Tensor:
    if binary:
        return (F.binary_cross_entropy_with_logits(out_logits_or_probs, target) if logits
                else F.binary_cross_entropy(out_logits_or_probs.clamp(1e-6, 1 - 1e-6), target))
    out = torch.sigmoid(out_logits_or_probs) if logits else out_logits_or_probs
    return (out - target).pow(2).sum((1, 2, 3)).mean() / target[0].numel()


def _step(net: nn.Module, cfg: LearnedConfig, x: Tensor, binary: bool, g: torch.Generator) -> Tensor:
    if cfg.kind == "autoencoder":
        z = net.encode(x)                                                    # (B, K)
        keep = torch.tensor(LENGTHS)[torch.randint(len(LENGTHS), (x.shape[0],), generator=g)]
        z = z * (torch.arange(z.shape[1])[None, :] < keep[:, None]).to(z.dtype)   # nested dropout
        return _loss(net.decode_logits(z), x, binary, logits=True)
    from .. import distortions
    q = distortions.parse(cfg.distortion)(x, g).x
    return _loss(net(q), x, binary, logits=False)


@torch.no_grad()
def held_out_error(net: nn.Module, kind: str, images: Tensor, binary: bool,
                   distortion: str = "block:16", seed: int = 0) -> dict[str, float]:
    """Per-image error on held-out images (Hamming for binary data, squared error otherwise):
    per code length for an autoencoder, from occluded queries for the inpainting prior."""
    from .. import distortions

    def err(out: Tensor) -> float:
        d = ((out > 0.5).float() != images).float() if binary else (out - images).pow(2)
        return round(float(d.flatten(1).sum(1).mean()), 3)

    if kind == "autoencoder":
        z = torch.cat([net.encode(images[i:i + 512]) for i in range(0, len(images), 512)])
        return {str(n): err(torch.cat([net.decode(z[i:i + 512, :n]) for i in range(0, len(z), 512)]))
                for n in LENGTHS}
    q = distortions.parse(distortion)(images, torch.Generator().manual_seed(seed)).x
    return {"query": err(q), "restored": err(torch.cat([net(q[i:i + 512]) for i in range(0, len(q), 512)]))}


def train_learned(cfg: LearnedConfig, out: str | Path, log_every: int = 100) -> Path:
    """Train one learned baseline for cfg.seconds on the task's training split; save weights + card."""
    from .. import data
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train = data.load(cfg.task, "train").images
    test = data.load(cfg.task, "test").images
    binary = _binary(train)
    net = NETS[cfg.kind](channels=train.shape[1], **cfg.net)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    t0, step, curve = time.time(), 0, []
    while (elapsed := time.time() - t0) < cfg.seconds:
        for group in opt.param_groups:          # cosine decay over the wall-clock budget
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * elapsed / cfg.seconds))
        x = train[torch.randint(len(train), (cfg.batch,), generator=g)]
        loss = _step(net, cfg, x, binary, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % log_every == 0:
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": round(float(loss), 5)})
            print(f"{cfg.kind} {cfg.task} step {step} {curve[-1]['seconds']} s loss {curve[-1]['loss']}", flush=True)
    seconds = time.time() - t0
    net.eval()
    sub = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:2000]]
    ev = held_out_error(net, cfg.kind, sub, binary, cfg.distortion)
    card = {"kind": f"baseline-{cfg.kind}", "name": Path(out).name,
            "architecture": type(net).__name__, "net": {"channels": train.shape[1], **cfg.net},
            "config": asdict(cfg), "data": {"task": cfg.task, "split": "train", "images": len(train),
                                            "binary": binary},
            "training": {"steps": step, "seconds": round(seconds, 1), "curve": curve,
                         "command": "ebmm " + " ".join(shlex.quote(a) for a in sys.argv[1:])},
            "evaluation": {"held_out_images": len(sub), "metric": "hamming" if binary else "squared_error",
                           **({"per_code_length": ev} if cfg.kind == "autoencoder" else ev)},
            "parameters": sum(t.numel() for t in net.parameters()),
            "memory_floats": 0}
    return save_learned(net, out, card)


def save_learned(net: nn.Module, out: str | Path, card: dict[str, Any]) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {n: t.detach().contiguous() for n, t in net.state_dict().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"net": json.dumps(card["net"], sort_keys=True)})
    (folder / WEIGHTS).chmod(0o644)
    (folder / CARD).write_text(json.dumps(card, indent=1) + "\n")
    return folder


def load_learned(folder: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """The net a baseline card describes, with its weights (safetensors only; no pickle)."""
    folder = Path(folder)
    card = json.loads((folder / CARD).read_text())
    kind = card["kind"].removeprefix("baseline-")
    net = NETS[kind](**card["net"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    net.eval()
    for t in net.parameters():
        t.requires_grad_(False)
    return net, card
