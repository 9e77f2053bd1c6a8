"""Modern Hopfield, nearest-neighbour lookups (full, PCA codes, downscaled) and no memory."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..familiarity import window_sums
from .base import Baseline, State, _finish, _gather, _nearest


# --------------------------------------------------------------------------------------------------
# modern Hopfield, nearest neighbours, no memory
# --------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ModernHopfield(Baseline):
    """xi <- X softmax(beta X^T xi) on centred codes 2x-1 (Ramsauer et al. 2020, eq. 3).

    beta=None means 4 / sqrt(D), 4x attention's scaling, for near one-shot retrieval. On 128-bit strings
    (N <= 96, <= 32 flips) binarised outputs were exact for any beta >= 1 / sqrt(D) with 1 or 3 steps;
    beta = 0.03 erred 0.3-29 bits in one step and collapsed to the patterns' mean in three.
    """
    beta: float | None = None        # inverse temperature; None: 4 / sqrt(D)
    iters: int = 1                   # update steps (one usually suffices)
    binary: bool = False             # binarise the output at 0.5

    @property
    def name(self) -> str:
        suffix = ("" if self.beta is None else f"_b{self.beta:.3g}") + (f"_it{self.iters}" if self.iters != 1 else "")
        return f"modern_hopfield{suffix}"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return n_patterns * math.prod(shape)

    def store_batch(self, patterns: Tensor) -> State:
        return 2 * patterns.flatten(2) - 1                           # (M, N, D)

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        x = state                                                    # (M, N, D)
        beta = self.beta if self.beta is not None else 4 / math.sqrt(x.shape[-1])
        xi = 2 * queries.flatten(2) - 1                              # (M, B, D)
        for _ in range(self.iters):
            xi = torch.softmax(beta * xi @ x.transpose(1, 2), -1) @ x  # (M, B, N) -> (M, B, D)
        return _finish((xi + 1) / 2, self.binary).view_as(queries)


@dataclass
class NearestFull(Baseline):
    """Returns the stored pattern nearest to the query (squared L2)."""
    name: str = "nearest_full"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return n_patterns * math.prod(shape)

    def store_batch(self, patterns: Tensor) -> State:
        return patterns.flatten(2).clone()                           # (M, N, D)

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        return _gather(state, _nearest(state, queries.flatten(2))).view_as(queries)


@dataclass(eq=False)                 # tensor fields: compare by identity
class NearestPCA(Baseline):
    """Nearest neighbour over r-dimensional PCA codes, r = floor(budget / N); returns the reconstruction.

    The basis is fitted once on training data (`fit`) and is static, not memory.
    """
    budget_floats: int
    binary: bool = False             # binarise the reconstruction at 0.5
    name: str = "nearest_pca"
    mean: Tensor | None = field(default=None, repr=False)   # (D,)
    basis: Tensor | None = field(default=None, repr=False)  # (D, R), columns by decreasing variance

    def fit(self, train_images: Tensor) -> NearestPCA:
        x = train_images.flatten(1).double()                         # (n, D)
        self.mean = x.mean(0)
        xc = x - self.mean
        if x.shape[0] > x.shape[1]:                                  # full basis from the covariance
            _, evecs = torch.linalg.eigh(xc.T @ xc)
            basis = evecs.flip(-1)
        else:                                                        # fewer images than pixels
            basis = torch.linalg.svd(xc, full_matrices=False).Vh.T
        self.mean, self.basis = self.mean.float(), basis.float().contiguous()
        return self

    def rank(self, n_patterns: int) -> int:
        assert self.basis is not None, "NearestPCA: call fit(train_images) before storing"
        r = min(self.budget_floats // n_patterns, self.basis.shape[1])
        if r < 1:
            raise ValueError(f"nearest_pca: budget_floats={self.budget_floats} < n_patterns={n_patterns}")
        return r

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return n_patterns * self.rank(n_patterns)

    def _encode(self, x: Tensor, r: int) -> Tensor:
        return (x.flatten(2) - self.mean) @ self.basis[:, :r]       # (M, *, r)

    def store_batch(self, patterns: Tensor) -> State:
        return self._encode(patterns, self.rank(patterns.shape[1]))  # (M, N, r)

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        r = state.shape[-1]
        code = _gather(state, _nearest(state, self._encode(queries, r)))  # (M, B, r)
        out = code @ self.basis[:, :r].T + self.mean                 # (M, B, D)
        return _finish(out, self.binary).view_as(queries)


@dataclass
class NearestDownscaled(Baseline):
    """Nearest neighbour over area-downscaled copies (N C h w <= budget); returns the bilinear upscale."""
    budget_floats: int
    binary: bool = False             # binarise the upscaled copy at 0.5
    name: str = "nearest_downscaled"

    def size(self, n_patterns: int, shape: tuple[int, ...]) -> tuple[int, int]:
        """The largest (h, w) with the image's aspect ratio such that N C h w <= budget."""
        assert len(shape) == 3, f"nearest_downscaled needs (C, H, W) images, got shape {shape}"
        c, hh, ww = shape
        for h in range(hh, 0, -1):
            w = max(1, min(ww, round(h * ww / hh)))
            if n_patterns * c * h * w <= self.budget_floats:
                return h, w
        raise ValueError(f"nearest_downscaled: budget_floats={self.budget_floats} < N*C={n_patterns * c}")

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        h, w = self.size(n_patterns, shape)
        return n_patterns * shape[0] * h * w

    def store_batch(self, patterns: Tensor) -> State:
        m, n, c, hh, ww = patterns.shape
        small = F.interpolate(patterns.reshape(m * n, c, hh, ww), size=self.size(n, (c, hh, ww)), mode="area")
        return small.view(m, n, *small.shape[1:])                    # (M, N, C, h, w)

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        m, b, c, hh, ww = queries.shape
        h, w = state.shape[-2:]
        q = F.interpolate(queries.reshape(m * b, c, hh, ww), size=(h, w), mode="area").view(m, b, -1)
        best = _gather(state.flatten(2), _nearest(state.flatten(2), q))  # (M, B, C h w)
        up = F.interpolate(best.view(m * b, c, h, w), size=(hh, ww), mode="bilinear", align_corners=False)
        return _finish(up, self.binary).view_as(queries)


@dataclass
class NoMemory(Baseline):
    """Returns the query: the error a memory has to beat."""
    name: str = "no_memory"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return 0

    def store_batch(self, patterns: Tensor) -> State:
        return patterns.new_zeros(patterns.shape[0], 0)

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        return queries.clone()




# --------------------------------------------------------------------------------------------------
# codes for a nearest-neighbour memory: the pixels, PCA codes, or a learned autoencoder's codes
# --------------------------------------------------------------------------------------------------

class Codec:
    """What a nearest-neighbour memory stores per pattern: encode (M, N, *S) -> (M, N, F), and back."""
    name: str

    def floats(self) -> int: ...                                     # F, per pattern

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor, shape: tuple[int, ...]) -> Tensor: ...


@dataclass
class PixelCodec(Codec):
    dim: int
    name: str = "full"

    def floats(self) -> int:
        return self.dim

    def encode(self, x: Tensor) -> Tensor:
        return x.flatten(2).clone()

    def decode(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        return z.view(*z.shape[:2], *shape)


@dataclass(eq=False)
class PCACodec(Codec):
    mean: Tensor                      # (D,)
    basis: Tensor                     # (D, r)
    name: str = "pca"

    def floats(self) -> int:
        return self.basis.shape[1]

    def encode(self, x: Tensor) -> Tensor:
        return (x.flatten(2) - self.mean) @ self.basis

    def decode(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        return (z @ self.basis.T + self.mean).clamp(0, 1).view(*z.shape[:2], *shape)


@dataclass(eq=False)
class NetCodec(Codec):
    """The first `length` floats of a nested-dropout autoencoder's code (model/baselines/learned.py)."""
    net: torch.nn.Module
    length: int
    name: str = "autoencoder"

    def floats(self) -> int:
        return self.length

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        flat = x.flatten(0, 1)
        z = torch.cat([self.net.encode(flat[i:i + 1024], self.length) for i in range(0, len(flat), 1024)])
        return z.view(*x.shape[:2], -1)

    @torch.no_grad()
    def decode(self, z: Tensor, shape: tuple[int, ...]) -> Tensor:
        flat = z.flatten(0, 1)
        out = torch.cat([self.net.decode(flat[i:i + 1024]) for i in range(0, len(flat), 1024)])
        return out.view(*z.shape[:2], *shape)


# --------------------------------------------------------------------------------------------------
# nearest stored pattern by an occlusion-robust distance, pasted where it disagrees with the query
# --------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class NearestPaste(Baseline):
    """Reads keep the query's pixels: the stored pattern nearest by a robust distance is decoded and
    pasted over the query only where the two disagree by more than `threshold`.

    The distance is the L1 disagreement outside the `window` x `window` square where the candidate
    disagrees most (0: plain L1), so an occluded block does not count against the right pattern.
    `region="window"` pastes only inside that square, "image" anywhere. `fit` picks window, threshold
    and region on training episodes (`fit_episodes`).
    """
    codec: Codec
    binary: bool = False
    window: int = 16
    threshold: float = 0.3
    region: str = "window"            # "window" or "image"

    @property
    def name(self) -> str:
        return f"nearest_robust_{self.codec.name}_paste"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return n_patterns * self.codec.floats()

    def store_batch(self, patterns: Tensor) -> State:
        return {"codes": self.codec.encode(patterns), "shape": torch.tensor(patterns.shape[2:])}

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        shape = tuple(int(v) for v in state["shape"])
        recon = self.codec.decode(state["codes"], shape)             # (M, N, *S)
        return torch.stack([self._one(recon[m], queries[m], self.window, self.threshold, self.region)
                            for m in range(queries.shape[0])])

    def _choose(self, recon: Tensor, q: Tensor, w: int) -> tuple[Tensor, Tensor | None]:
        """recon (N, C, H, W), q (B, C, H, W) -> chosen index (B,) and its window mask (B, 1, H, W)."""
        w = min(w, *q.shape[-2:])                                   # a window never exceeds the image
        e = (recon[None] - q[:, None]).abs().sum(2)                  # (B, N, H, W)
        total = e.sum((-2, -1))                                      # (B, N)
        if w <= 0:
            return total.argmin(1), None
        win = window_sums(e, w)                                     # (B, N, H', W')
        best, where = win.flatten(2).max(-1)                         # (B, N)
        idx = (total - best).argmin(1)                               # (B,)
        pos = where.gather(1, idx[:, None]).squeeze(1)               # (B,)
        wp = win.shape[-1]
        r0, c0 = pos // wp, pos % wp
        hh, ww = q.shape[-2:]
        ar, ac = torch.arange(hh, device=q.device)[None], torch.arange(ww, device=q.device)[None]
        rows = (ar >= r0[:, None]) & (ar < r0[:, None] + w)
        cols = (ac >= c0[:, None]) & (ac < c0[:, None] + w)
        return idx, (rows[:, :, None] & cols[:, None, :])[:, None]   # (B, 1, H, W)

    def _one(self, recon: Tensor, q: Tensor, w: int, t: float, region: str) -> Tensor:
        idx, square = self._choose(recon, q, w)
        return self._paste(recon[idx], q, square, t, region)

    def _paste(self, chosen: Tensor, q: Tensor, square: Tensor | None, t: float, region: str) -> Tensor:
        """chosen, q (B, C, H, W): the query with `chosen` pasted where they disagree by more than t."""
        paste = (chosen - q).abs().amax(1, keepdim=True) > t         # (B, 1, H, W)
        if region == "window" and square is not None:
            paste = paste & square
        return _finish(torch.where(paste, chosen, q), self.binary)

    def fit_episodes(self, x: Tensor, q: Tensor, metric_fn, windows: tuple[int, ...] = (0, 8, 12, 16, 20, 24),
                     thresholds: tuple[float, ...] = (0.05, 0.15, 0.3, 0.5)) -> dict:
        """Choose window, threshold and region on *training* episodes x, q (M, N, *S); metric_fn(out, x)
        -> mean error. Returns the choice and its training error."""
        recon = self.codec.decode(self.codec.encode(x), tuple(x.shape[2:]))
        best: tuple[float, int, float, str] | None = None
        for w in sorted({min(w, *x.shape[-2:]) for w in windows}):
            picks = [self._choose(recon[m], q[m], w) for m in range(x.shape[0])]
            for region in (("window", "image") if w > 0 else ("image",)):
                for t in thresholds:
                    out = torch.stack([self._paste(recon[m][i], q[m], sq, t, region)
                                       for m, (i, sq) in enumerate(picks)])
                    err = float(metric_fn(out, x))
                    if best is None or err < best[0] - 1e-9:
                        best = (err, w, t, region)
        assert best is not None
        self.window, self.threshold, self.region = best[1], best[2], best[3]
        return {"window": best[1], "threshold": best[2], "region": best[3], "train_error": round(best[0], 4)}


@dataclass(eq=False)
class NearestPCABits(NearestPaste):
    """The robust nearest stored PCA code, with the same bit fit as the span memory's read (binary images):
    inside the chosen square, the bits whose PCA code is the stored one (r equations in the square's pixels,
    solved in the box [-1, 1] by accelerated projected gradient with a growing double well, from the pasted
    reconstruction); the strongest baseline with the span memory's trick, at the budget of N stored codes."""
    steps: int = 500
    well: float = 0.002

    @property
    def name(self) -> str:
        return "nearest_robust_pca_bits"

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        shape = tuple(int(v) for v in state["shape"])
        recon = self.codec.decode(state["codes"], shape)
        return torch.stack([self._solve(state["codes"][m], recon[m], queries[m]) for m in range(queries.shape[0])])

    def _solve(self, codes: Tensor, recon: Tensor, q: Tensor) -> Tensor:
        idx, square = self._choose(recon, q, self.window)
        start = self._paste(recon[idx], q, square, self.threshold, self.region)      # (B, C, H, W) in [0, 1]
        if square is None:
            return start
        u = self.codec.basis                                                         # (D, r), orthonormal
        inside = square.expand_as(q).flatten(1)                                      # (B, D)
        s = 2 * start.flatten(1) - 1
        # the code in signed pixels s = 2x - 1: (s + 1 - 2 mean) u = 2 f for the stored image
        blank = torch.where(inside, torch.zeros_like(s), s)
        base = (blank + 1 - 2 * self.codec.mean) @ u - 2 * codes[idx]               # (B, r)
        z = torch.where(inside, s, torch.zeros_like(s))
        prev = z
        mask = inside.to(s.dtype)
        for k in range(self.steps):
            y = z + (k / (k + 3)) * (z - prev)
            res = base + y @ u                                                       # (B, r)
            g = (res @ u.T) * mask                                                   # half the gradient
            prev, z = z, ((y - g + (self.well * k / self.steps) * y).clamp(-1, 1)) * mask
        out = torch.where(inside, (z + 1) / 2, start.flatten(1))
        return _finish(out.view_as(q), self.binary)


@dataclass(eq=False)
class InpaintPrior(Baseline):
    """A memoryless learned prior: a conv net trained on occluded -> clean training images restores the
    query from its own context (model/baselines/learned.py). 0 memory floats."""
    net: torch.nn.Module
    binary: bool = False
    name: str = "inpainting_prior"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        return 0

    def store_batch(self, patterns: Tensor) -> State:
        return patterns.new_zeros(patterns.shape[0], 0)

    @torch.no_grad()
    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        flat = queries.flatten(0, 1)
        out = torch.cat([self.net(flat[i:i + 1024]) for i in range(0, len(flat), 1024)])
        return _finish(out, self.binary).view_as(queries)
