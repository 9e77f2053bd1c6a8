"""Classical Hopfield networks on s = 2x-1: Hebb, Storkey, projection (pseudo-inverse) rules."""
from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Baseline, State, _signed


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
    """Projection rule W = S (S^T S + ridge I)^+ S^T (S = D x N); the classical rule keeps W's diagonal.

    `zero_diagonal=True` removes the self-coupling, which helps below capacity and collapses above it
    (FEASIBILITY.md: 0.13 vs 4.37 error bits at N = 64, 63.5 vs 7.92 at N = 96, 8 flipped bits).
    `diag_gain` g scales the diagonal instead (g = 1 classical, g = 0 zero diagonal) and `ridge` adds
    lambda I to the Gram matrix (a regularised projection); `fit_tuned_pinv` picks both on training
    episodes. For D > `dense_max_dim` (images) W is kept factored as P^T G^+ P: same dynamics, N D + N^2
    numbers in RAM instead of D^2; `memory_floats` still counts the classical D (D+1) / 2.
    """
    zero_diagonal: bool = False
    diag_gain: float = 1.0           # multiplies W's diagonal (ignored when zero_diagonal)
    ridge: float = 0.0               # lambda added to the Gram matrix's diagonal
    dense_max_dim: int = 512

    @property
    def rule(self) -> str:  # type: ignore[override]
        if self.zero_diagonal:
            return "pinv_zd"
        tags = (f"_g{self.diag_gain:.3g}" if self.diag_gain != 1.0 else "") + \
               (f"_ridge{self.ridge:.3g}" if self.ridge else "")
        return "pinv" + tags

    @property
    def gain(self) -> float:
        return 0.0 if self.zero_diagonal else self.diag_gain

    def _couplings(self, s: Tensor) -> dict[str, Tensor]:
        gram = (s @ s.transpose(1, 2)).double()                      # (M, N, N)
        if self.ridge:
            gram = gram + self.ridge * torch.eye(gram.shape[-1], dtype=gram.dtype)
            ginv = torch.linalg.inv(gram).to(s.dtype)
        else:
            ginv = torch.linalg.pinv(gram, hermitian=True).to(s.dtype)
        if s.shape[-1] <= self.dense_max_dim:
            w = s.transpose(1, 2) @ ginv @ s                         # (M, D, D)
            return {"W": w - (1 - self.gain) * torch.diag_embed(torch.diagonal(w, dim1=-2, dim2=-1))}
        diag = ((s.transpose(1, 2) @ ginv) * s.transpose(1, 2)).sum(-1)  # (M, D): diagonal of W
        return {"P": s, "Ginv": ginv, "diag": (1 - self.gain) * diag}


@dataclass(kw_only=True)
class TunedPinv(HopfieldPinv):
    """The projection rule with its knobs fitted on *training* episodes (`fit_episodes`): the diagonal
    gain alone (search="gain") or the gain and a ridge lambda, as a fraction of D (search="ridge")."""
    search: str = "gain"
    gains: tuple[float, ...] = tuple(i / 10 for i in range(11))
    ridges: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)

    @property
    def name(self) -> str:
        return f"hopfield_pinv_tuned_{self.search}"

    def fit_episodes(self, x: Tensor, q: Tensor, metric_fn) -> dict:
        """Grid search on training episodes x, q (M, N, D); metric_fn(out, x) -> mean error."""
        d = x.shape[-1]
        best: tuple[float, float, float] | None = None
        for lam in (self.ridges if self.search == "ridge" else (0.0,)):
            for g in self.gains:
                self.diag_gain, self.ridge = g, lam * d
                err = float(metric_fn(self.retrieve_batch(self.store_batch(x), q), x))
                if best is None or err < best[0] - 1e-9:
                    best = (err, g, lam * d)
        assert best is not None
        self.diag_gain, self.ridge = best[1], best[2]
        return {"diag_gain": best[1], "ridge": best[2], "train_error": round(best[0], 4)}
