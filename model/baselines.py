"""Baseline associative memories behind one interface, vectorised over episodes (M) with bmm.

Every baseline writes a batch of patterns and reads queries back, like EBMM (paper section 4):
  classical Hopfield nets on s = 2x-1 (Hebb; Storkey 1997; projection / pseudo-inverse, Personnaz
  et al. 1985), the modern Hopfield net (Ramsauer et al. 2020), nearest-neighbour lookup over the full
  patterns, over PCA codes or over downscaled copies at a float budget, and no memory at all.
Shapes: M episodes, N stored patterns, B queries, S the pattern shape, D = prod(S).
`memory_floats` counts only what a write produces; fitted parts (the PCA basis) are static
parameters, like EBMM's meta-learned weights.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
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


# --------------------------------------------------------------------------------------------------
# classical Hopfield networks
# --------------------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class _Hopfield(Baseline):
    """Sign dynamics s <- sign(W s) on s = 2x-1; a zero field keeps the unit's previous state.

    update="sync": all units at once, until nothing changes or `max_iters` sweeps (2-cycles stop there).
    update="async": units one at a time in a random order per sweep (shared by all episodes and
    queries, seeded), which always converges for symmetric W with non-negative diagonal.
    Sync is the default: on 128-bit strings async was no better for Hebb, Storkey and pinv (often
    worse, and 5-10x slower); it only rescues zero-diagonal pinv above capacity (N = 96, 8 flips:
    18.1 vs 63.5 error bits, where sync falls into a 2-cycle).
    """
    max_iters: int = 20              # sweeps of the sign dynamics
    update: str = "sync"             # "sync" or "async"
    seed: int = 0                    # unit order of async sweeps

    rule = ""

    def __post_init__(self) -> None:
        assert self.update in ("sync", "async"), f"update must be 'sync' or 'async', got {self.update!r}"

    @property
    def name(self) -> str:
        suffix = ("_async" if self.update == "async" else "") + (f"_it{self.max_iters}" if self.max_iters != 20 else "")
        return f"hopfield_{self.rule}{suffix}"

    def memory_floats(self, n_patterns: int, shape: tuple[int, ...]) -> int:
        d = math.prod(shape)
        return d * (d + 1) // 2      # a symmetric matrix with its diagonal (thresholds), whatever N is

    @abstractmethod
    def _couplings(self, s: Tensor) -> dict[str, Tensor]: ...    # s (M, N, D)

    def store_batch(self, patterns: Tensor) -> State:
        return self._couplings(_signed(patterns))

    def retrieve_batch(self, state: State, queries: Tensor) -> Tensor:
        s = _signed(queries)                                         # (M, B, D)
        s = self._sync(state, s) if self.update == "sync" else self._async(state, s)
        return ((s + 1) / 2).view_as(queries).to(queries.dtype)

    def _sync(self, state: dict[str, Tensor], s: Tensor) -> Tensor:
        for _ in range(self.max_iters):
            h = _field(state, s)                                     # (M, B, D)
            new = torch.where(h > 0, 1.0, torch.where(h < 0, -1.0, s))
            if torch.equal(new, s):
                break
            s = new
        return s

    def _async(self, state: dict[str, Tensor], s: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        s = s.clone()
        for _ in range(self.max_iters):
            h = _field(state, s)          # recomputed each sweep so that float drift cannot pile up
            changed = False
            for i in torch.randperm(s.shape[-1], generator=g).tolist():
                hi = h[..., i]                                       # (M, B)
                new = torch.where(hi > 0, 1.0, torch.where(hi < 0, -1.0, s[..., i]))
                delta = new - s[..., i]                              # (M, B) in {-2, 0, 2}
                if delta.any():
                    s[..., i] = new
                    h += delta.unsqueeze(-1) * _row(state, i).unsqueeze(1)
                    changed = True
            if not changed:
                break
        return s


def _field(state: dict[str, Tensor], s: Tensor) -> Tensor:
    """Local fields W s for s (M, B, D); W dense (M, D, D) or factored as P^T G^+ P."""
    if "W" in state:
        return s @ state["W"]                                        # W symmetric
    h = (s @ state["P"].transpose(1, 2)) @ state["Ginv"] @ state["P"]  # (M, B, N) -> (M, B, D)
    return h - state["diag"].unsqueeze(1) * s


def _row(state: dict[str, Tensor], i: int) -> Tensor:
    """Row i of W: (M, D)."""
    if "W" in state:
        return state["W"][:, i]
    p = state["P"]                                                   # (M, N, D)
    r = (p[:, :, i].unsqueeze(1) @ state["Ginv"] @ p).squeeze(1)    # (M, D)
    r[:, i] -= state["diag"][:, i]
    return r


def _zero_diagonal(w: Tensor) -> Tensor:
    return w - torch.diag_embed(torch.diagonal(w, dim1=-2, dim2=-1))


@dataclass(kw_only=True)
class HopfieldHebb(_Hopfield):
    """W = (1/N) sum_i s_i s_i^T with a zero diagonal (capacity ~0.14 D).

    The paper's Hebb row (0.4 / 5.0 / 9.8 / 13.0 / 16.5 bits at N = 16..96) matches one synchronous
    step (max_iters=1) from 8 flipped bits (0.65 / 4.78 / 9.65 / 13.5 / 20.0), not the converged net.
    """
    rule = "hebb"

    def _couplings(self, s: Tensor) -> dict[str, Tensor]:
        return {"W": _zero_diagonal(s.transpose(1, 2) @ s / s.shape[1])}   # (M, D, D)


@dataclass(kw_only=True)
class HopfieldStorkey(_Hopfield):
    """Storkey (1997): w_ij += (s_i s_j - s_i h_ji - h_ij s_j) / D, h_ij = sum_{k != i,j} w_ik s_k.

    With a zero diagonal and h = W s this is W <- (1 + 2/D) W + (s s^T - s h^T - h s^T) / D.
    """
    rule = "storkey"

    def _couplings(self, s: Tensor) -> dict[str, Tensor]:
        m, n, d = s.shape
        w = s.new_zeros(m, d, d)
        for k in range(n):                                           # incremental: one pattern at a time
            x = s[:, k]                                              # (M, D)
            h = (w @ x.unsqueeze(-1)).squeeze(-1)                    # (M, D)
            # x x^T - x h^T - h x^T as one rank-2 bmm: [x, h] [x - h, -x]^T
            u, v = torch.stack([x, h], -1), torch.stack([x - h, -x], -1)  # (M, D, 2)
            w = torch.baddbmm(w, u, v.transpose(1, 2), beta=1 + 2 / d, alpha=1 / d)
            w.diagonal(dim1=1, dim2=2).zero_()
        return {"W": w}


@dataclass(kw_only=True)
class HopfieldPinv(_Hopfield):
    """Projection rule W = S (S^T S)^+ S^T (S = D x N); the classical rule keeps W's diagonal.

    `zero_diagonal=True` removes the self-coupling, which helps below capacity and collapses above it
    (FEASIBILITY.md: 0.13 vs 4.37 error bits at N = 64, 63.5 vs 7.92 at N = 96, 8 flipped bits).
    For D > `dense_max_dim` (images) W is kept factored as P^T G^+ P: same dynamics, N D + N^2 numbers
    in RAM instead of D^2; `memory_floats` still counts the classical D (D+1) / 2.
    """
    zero_diagonal: bool = False
    dense_max_dim: int = 512

    @property
    def rule(self) -> str:  # type: ignore[override]
        return "pinv_zd" if self.zero_diagonal else "pinv"

    def _couplings(self, s: Tensor) -> dict[str, Tensor]:
        gram = (s @ s.transpose(1, 2)).double()                      # (M, N, N)
        ginv = torch.linalg.pinv(gram, hermitian=True).to(s.dtype)
        if s.shape[-1] <= self.dense_max_dim:
            w = s.transpose(1, 2) @ ginv @ s                         # (M, D, D)
            return {"W": _zero_diagonal(w) if self.zero_diagonal else w}
        diag = ((s.transpose(1, 2) @ ginv) * s.transpose(1, 2)).sum(-1)  # (M, D): diagonal of W
        return {"P": s, "Ginv": ginv, "diag": diag if self.zero_diagonal else torch.zeros_like(diag)}


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
# registry
# --------------------------------------------------------------------------------------------------

def make_baselines(kind: str, budget_floats: int, train_images: Tensor | None, n_patterns: int,
                   binary: bool | None = None) -> list[Baseline]:
    """The baselines that fit a task. kind: "binary" (strings) or "grayscale" / "colour" (images).

    binary=None: strings are binary; images are binary when every training pixel is 0 or 1.
    Image sets: nearest_pca only with train_images; baselines whose budget cannot hold one float per
    pattern are left out. hopfield_pinv joins binary images as a reference at its true size, D (D+1) / 2
    (524,800 floats at 32x32, far over any EBMM budget); it runs factored, so it is cheap to evaluate.
    """
    if kind == "binary":
        # classical rules both run to convergence and after one synchronous update (the paper's
        # Hebb row matches the latter; see results/README.md)
        return [HopfieldHebb(), HopfieldHebb(max_iters=1), HopfieldStorkey(), HopfieldStorkey(max_iters=1),
                HopfieldPinv(), HopfieldPinv(max_iters=1), HopfieldPinv(zero_diagonal=True),
                ModernHopfield(binary=True), NearestFull(), NoMemory()]
    if kind not in ("grayscale", "colour"):
        raise ValueError(f"kind must be 'binary', 'grayscale' or 'colour', got {kind!r}")
    if binary is None:
        binary = train_images is not None and bool(((train_images == 0) | (train_images == 1)).all())
    out: list[Baseline] = [ModernHopfield(binary=binary), NearestFull()]
    if budget_floats >= n_patterns:
        if train_images is not None:
            out.append(NearestPCA(budget_floats, binary).fit(train_images))
        channels = 3 if kind == "colour" else 1
        if budget_floats >= n_patterns * channels:
            out.append(NearestDownscaled(budget_floats, binary))
    if binary:
        out.append(HopfieldPinv())
    return out + [NoMemory()]
