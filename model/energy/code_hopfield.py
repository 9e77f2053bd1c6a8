"""A deep, distributed image memory: a learned binary-code autoencoder (static, nonlinear) and a
writable Hopfield coupling matrix over its codes that every pattern of a write shares.

In plain terms: the encoder maps an image to a d-bit code (tanh, trained to be near +-1, and trained so
that an occluded image maps to its clean image's code); the writable slice is a symmetric d x d matrix
M (d (d + 1) / 2 memory floats: d = 67, 95, 127, 135, 180 give the paper's 2.3K, 4.6K, 8.1K, 9.2K, 16.3K);
recall is a few Hopfield hops r <- tanh(g M r) from the query's code; the decoder turns the recalled code
back into pixels. With s = 2x - 1 and z = Enc(x):

    E(x) = -h/2 z^T M z                       (Hebb: one write step adds z z^T)
           + c/2 |z - tanh(g M z)|^2          (a stored code is a fixed point of one hop: the delta rule)
           + lambda/2 |s - D(r_k)|^2          (pixels pulled to the decoded recall r_k, k hops from z)
           + q/4 sum_pixels (s - D(r_k))^4    (pulls hardest where the query disagrees: the occlusion)
           - w/2 |s|^2                        (double well: keeps confident pixels)

The write is T gradient steps on the paper's writing loss with E itself as its energy term, from the
meta-learned theta_bar: the gradient of the c term in M is the delta rule (error times code, outer
product), that of the h term the Hebb rule, and that of the pixel terms back-propagates the decoded
recall's error through the decoder and the hops. No pattern owns any part of M; capacity is graded
(Hopfield-like: rising error with load, no slot cliff). Shapes: B images, D = C*H*W pixels, d code bits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .base import _GAIN, EnergyNet, Params, _signed, inv_softplus, symmetric_from_triu


class BinaryCodec(nn.Module):
    """x (B, C, 32, 32) in [0, 1] -> pre-code (B, K) -> tanh code; code (B, L <= K) -> pixel logits.
    Trained with nested dropout (random prefix lengths) and a straight-through sign, so that any
    trained prefix of the +-1 code decodes, and with occluded inputs mapped to the clean image."""

    def __init__(self, channels: int = 1, code: int = 180, width: int = 32):
        super().__init__()
        w = width
        self.code = code
        self.enc = nn.Sequential(nn.Conv2d(channels, w, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(w, 2 * w, 4, 2, 1), nn.SiLU(),
                                 nn.Conv2d(2 * w, 4 * w, 4, 2, 1), nn.SiLU(), nn.Flatten(),
                                 nn.Linear(4 * w * 16, code))
        self.dec = nn.Sequential(nn.Linear(code, 4 * w * 16), nn.SiLU(), nn.Unflatten(1, (4 * w, 4, 4)),
                                 nn.ConvTranspose2d(4 * w, 2 * w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(w, channels, 4, 2, 1))

    def forward(self, x: Tensor, decode: bool = False) -> Tensor:
        """Images (B, C, H, W) -> pre-codes (B, K); with decode=True, codes (B, L <= K) -> pixel logits
        (a missing tail is zero, as nested dropout trains). One entry point, so that functional_call
        can run either half on substituted parameters."""
        if not decode:          # normalised per image (the code cannot drift out of tanh's range)
            return 2.0 * F.layer_norm(self.enc(2 * x - 1), (self.code,))
        if x.shape[1] < self.code:
            x = F.pad(x, (0, self.code - x.shape[1]))
        return self.dec(x)

    def decode_logits(self, z: Tensor) -> Tensor:
        return self(z, decode=True)


class CodeHopfieldEnergy(EnergyNet):
    """The deep distributed image memory described in the module docstring (arch "code_hopfield")."""

    def __init__(self, input_shape: tuple[int, ...], code: int = 127, codec_code: int = 180,
                 width: int = 32, hops: int = 3, scale: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        if not 1 <= code <= codec_code:
            raise ValueError(f"code={code}: expected 1..codec_code={codec_code}")
        self.input_shape, self.code, self.hops = tuple(input_shape), code, hops
        self.codec = BinaryCodec(c, codec_code, width)           # static, warm-started (pretrain_codec)
        iu = torch.triu_indices(code, code)
        self.register_buffer("iu", iu, persistent=False)
        self.memory_triu = nn.Parameter(torch.zeros(iu.shape[1]))   # writable: d (d + 1) / 2
        # scalar knobs, stored divided by _GAIN so that the network's small meta-learning rate moves them
        self.hebb_raw = nn.Parameter(torch.tensor(inv_softplus(0.05) / _GAIN))
        self.fix_raw = nn.Parameter(torch.tensor(inv_softplus(1.0) / _GAIN))
        self.gain_raw = nn.Parameter(torch.tensor(inv_softplus(3.0) / _GAIN))
        self.comp_raw = nn.Parameter(torch.tensor(inv_softplus(0.05) / _GAIN))
        self.quart_raw = nn.Parameter(torch.tensor(inv_softplus(1.0) / _GAIN))
        self.well = nn.Parameter(torch.tensor(0.0))
        self._init_scale(scale)

    # -- static part ------------------------------------------------------------------------------
    def warm_start(self, codec: nn.Module) -> None:
        """Copy a pretrained BinaryCodec's weights into the static part."""
        self.codec.load_state_dict(codec.state_dict())

    def _codec_params(self, p: Params) -> Params:
        return {n[6:]: t for n, t in p.items() if n.startswith("codec.")}

    def encode(self, p: Params, x: Tensor) -> Tensor:
        """(B, *S) images -> (B, d) codes in (-1, 1)."""
        pre = functional_call(self.codec, self._codec_params(p), (x,))
        return torch.tanh(pre[:, : self.code])

    def decode(self, p: Params, r: Tensor) -> Tensor:
        """(B, d) codes -> (B, *S) signed pixels in (-1, 1)."""
        logits = functional_call(self.codec, self._codec_params(p), (r,), {"decode": True})
        return torch.tanh(0.5 * logits).view(-1, *self.input_shape)

    # -- memory -------------------------------------------------------------------------------------
    def matrix(self, p: Params) -> Tensor:
        return symmetric_from_triu(p["memory_triu"], self.iu, self.code)          # (d, d)

    def recall(self, p: Params, z: Tensor, hops: int | None = None) -> Tensor:
        """k Hopfield hops r <- tanh(g M r) from the codes z (B, d)."""
        m, g = self.matrix(p), F.softplus(p["gain_raw"] * _GAIN)
        r = z
        for _ in range(self.hops if hops is None else hops):
            r = torch.tanh(g * (r @ m))
        return r

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x).flatten(1)                                                 # (B, D)
        z = self.encode(p, x)                                                     # (B, d)
        m, g = self.matrix(p), F.softplus(p["gain_raw"] * _GAIN)
        one = torch.tanh(g * (z @ m))
        e = -0.5 * F.softplus(p["hebb_raw"] * _GAIN) * ((z @ m) * z).sum(-1)
        e = e + 0.5 * F.softplus(p["fix_raw"] * _GAIN) * (z - one).pow(2).sum(-1)
        r = one
        for _ in range(self.hops - 1):
            r = torch.tanh(g * (r @ m))
        diff = s - self.decode(p, r).flatten(1)                                  # (B, D)
        e = e + 0.5 * F.softplus(p["comp_raw"] * _GAIN) * diff.pow(2).sum(-1)
        e = e + 0.25 * F.softplus(p["quart_raw"] * _GAIN) * diff.pow(4).sum(-1)
        e = e - 0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1)
        return e * p["log_scale"].exp()

    def familiarity_views(self, p: Params, q: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The query's own code decoded, and the recall of the read's result decoded: a stored
        pattern's code is a fixed point, so the two agree; a never-stored one's recall moves."""
        zq = self.encode(p, q)
        rx = self.recall(p, self.encode(p, x))
        return (self.decode(p, zq) + 1) / 2, (self.decode(p, rx) + 1) / 2


def code_budget(floats: int) -> int:
    """The largest code length d whose coupling matrix has at most `floats` memory floats."""
    return int((math.isqrt(8 * floats + 1) - 1) // 2)
