"""Warm start of a deep memory's static part: the binary-code autoencoder of `code_hopfield`, trained on
a task's training split before meta-training (plain backpropagation, no loops).

Each step takes a batch of training images, occludes half of them (the protocol's 16x16 block of random
values) and asks every image, occluded or not, to decode to its clean self through a random prefix of
its straight-through +-1 code (nested dropout over `lengths`). A consistency term pulls every tanh code,
clean or occluded, to the sign of the clean image's code: the encoder learns to map an occluded image
to the code its clean image has, and to saturate, which is what a Hopfield memory over the codes needs.
Saved as safetensors + a JSON card (never pickle).
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor

from .energy import BinaryCodec

WEIGHTS, CARD = "model.safetensors", "card.json"


@dataclass
class CodecConfig:
    task: str = "characters"
    code: int = 180                                   # K, the longest code
    lengths: tuple[int, ...] = (67, 95, 127, 135, 180)   # prefixes a memory may use
    width: int = 32
    distortion: str = "block:16"
    consistency: float = 0.05                         # weight of the code-consistency term
    seconds: float = 600.0
    batch: int = 128
    lr: float = 2e-3                                  # Adam, cosine-decayed over `seconds`
    seed: int = 0
    threads: int = 1
    curve_every: int = 100
    extra: dict = field(default_factory=dict)


def _recon_loss(logits: Tensor, target: Tensor, binary: bool) -> Tensor:
    if binary:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).sum(1).mean()
    return (torch.sigmoid(logits) - target).pow(2).flatten(1).sum(1).mean()


def codec_loss(net: BinaryCodec, x: Tensor, q: Tensor, lengths: tuple[int, ...], consistency: float,
               binary: bool, g: torch.Generator) -> Tensor:
    """x clean (B, *S), q occluded copies: both decode to x; codes pulled to sign(code of x)."""
    inp = torch.cat([x, q])
    pre = net(inp)                                                            # (2B, K)
    z = torch.tanh(pre)
    hard = z + (torch.sign(z) - z).detach()                   # straight-through +-1 (tanh's gradient)
    keep = torch.tensor(lengths)[torch.randint(len(lengths), (inp.shape[0],), generator=g)]
    mask = (torch.arange(z.shape[1])[None, :] < keep[:, None]).to(z.dtype)
    loss = _recon_loss(net.decode_logits(hard * mask), torch.cat([x, x]), binary)
    target = torch.sign(z[: x.shape[0]]).detach().repeat(2, 1)
    return loss + consistency * (z - target).pow(2).sum(1).mean()


@torch.no_grad()
def codec_errors(net: BinaryCodec, images: Tensor, lengths: tuple[int, ...], distortion: str,
                 binary: bool, seed: int = 0) -> dict:
    """Held-out error per prefix length (Hamming for binary data, squared error otherwise), decoding
    the clean image's code and the occluded query's code, and the share of code bits that flip."""
    from . import distortions
    q = distortions.parse(distortion)(images, torch.Generator().manual_seed(seed)).x
    zc, zq = torch.sign(torch.tanh(net(images))), torch.sign(torch.tanh(net(q)))
    out: dict = {}
    for n in lengths:
        row = {}
        for tag, z in (("clean", zc), ("occluded", zq)):
            mask = (torch.arange(z.shape[1])[None, :] < n).to(z.dtype)
            rec = torch.sigmoid(net.decode_logits(z * mask))
            d = ((rec > 0.5).float() != images).float() if binary else (rec - images).pow(2)
            row[tag] = round(float(d.flatten(1).sum(1).mean()), 3)
        row["flipped_bits"] = round(float((zc[:, :n] != zq[:, :n]).float().sum(1).mean()), 3)
        out[str(n)] = row
    return out


def pretrain_codec(cfg: CodecConfig, out: str | Path) -> Path:
    from . import data, distortions
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    train = data.load(cfg.task, "train").images
    test = data.load(cfg.task, "test").images
    binary = bool(((train == 0) | (train == 1)).all())
    net = BinaryCodec(train.shape[1], cfg.code, cfg.width)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    distort = distortions.parse(cfg.distortion)
    t0, step, curve = time.time(), 0, []
    while (elapsed := time.time() - t0) < cfg.seconds:
        for group in opt.param_groups:
            group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * elapsed / cfg.seconds))
        x = train[torch.randint(len(train), (cfg.batch,), generator=g)]
        loss = codec_loss(net, x, distort(x, g).x, cfg.lengths, cfg.consistency, binary, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % cfg.curve_every == 0:
            curve.append({"step": step, "seconds": round(time.time() - t0, 1), "loss": round(float(loss), 4)})
            print(f"codec {cfg.task} step {step} {curve[-1]['seconds']} s loss {curve[-1]['loss']}", flush=True)
    net.eval()
    sub = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:2000]]
    card = {"kind": "codec", "name": Path(out).name, "architecture": "BinaryCodec",
            "net": {"channels": train.shape[1], "code": cfg.code, "width": cfg.width},
            "config": asdict(cfg), "data": {"task": cfg.task, "split": "train", "images": len(train),
                                            "binary": binary},
            "training": {"steps": step, "seconds": round(time.time() - t0, 1), "curve": curve,
                         "command": "ebmm " + " ".join(shlex.quote(a) for a in sys.argv[1:])},
            "evaluation": {"held_out_images": len(sub), "metric": "hamming" if binary else "squared_error",
                           "per_code_length": codec_errors(net, sub, cfg.lengths, cfg.distortion, binary)},
            "parameters": sum(t.numel() for t in net.parameters())}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n: t.detach().contiguous() for n, t in net.state_dict().items()}, str(folder / WEIGHTS))
    (folder / CARD).write_text(json.dumps(card, indent=1) + "\n")
    return folder


def load_codec(folder: str | Path) -> tuple[BinaryCodec, dict]:
    folder = Path(folder)
    card = json.loads((folder / CARD).read_text())
    net = BinaryCodec(**card["net"])
    net.load_state_dict(load_file(str(folder / WEIGHTS)))
    return net.eval(), card
