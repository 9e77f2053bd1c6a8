"""Energies on the training data's principal subspace: a writable quadratic and the slot memories."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (_GAIN, EnergyNet, Params, _signed, inv_softplus, memo_on, principal_basis, symmetric_from_triu,
                   window_sums)


def _dot_slots(f: Tensor, k: Tensor) -> Tensor:
    """f k_i for (B, r) codes and slots (S, r), or a set of slots per code (B, S, r) -> (B, S)."""
    return f @ k.T if k.dim() == 2 else torch.bmm(k, f.unsqueeze(-1)).squeeze(-1)


# Reads of at most this many queries multiply by the basis's transpose as a view of the basis itself, not
# as a second contiguous copy: one query's products are streams of the basis from memory, and two copies
# (2 MB for characters32) do not stay in one core's cache. On one Intel Xeon host a one-query read of
# characters32 took 0.96 ms this way against 1.42 with the copy, photos32 3.32 against 3.56. From 4 queries
# on the copy was faster for photos32 (4.08 against 4.70 ms), while the view stayed faster for characters32
# up to 8 (scripts/check_basis_view.py, results/explore/slot-basis-view.json); one limit for both: 2.
_VIEW_ROWS = 2


def _mix_slots(a: Tensor, k: Tensor) -> Tensor:
    """sum_i a_i k_i for (B, S) weights and slots (S, r), or (B, S, r) -> (B, r)."""
    return a @ k if k.dim() == 2 else torch.bmm(a.unsqueeze(1), k).squeeze(1)


def spd_factor(a: Tensor) -> tuple[Tensor | None, Tensor]:
    """What `spd_solve` needs of a: (its Cholesky factor, a), or (None, a) where a factor fails."""
    chol, info = torch.linalg.cholesky_ex(a)
    return (chol if bool((info == 0).all()) else None), a


def spd_solve(a: Tensor, rhs: Tensor, factor: tuple[Tensor | None, Tensor] | None = None) -> Tensor:
    """a^-1 rhs for symmetric positive definite a (..., n, n), rhs (..., n, k): Cholesky, falling back to LU
    where a factor fails (factor: `spd_factor(a)`, when the caller solves with a more than once). Also a
    workaround: MKL's batched LU failed at n = 179 with 2 threads ("pivots given to lu_solve must all be
    >= 1"), where Cholesky does not."""
    chol, a = spd_factor(a) if factor is None else factor
    return torch.linalg.solve(a, rhs) if chol is None else torch.cholesky_solve(rhs, chol)


def orthonormal_rows(owner: object, u: Tensor) -> bool:
    """Whether u's rows are orthonormal to 1e-5, remembered on owner while u is the same tensor."""
    def check() -> bool:
        eye = torch.eye(u.shape[0], dtype=u.dtype, device=u.device)
        return bool((u @ u.T - eye).abs().max() < 1e-5)
    return memo_on(owner, "_orthonormal_memo", u, check)


class SubspaceQuadraticEnergy(EnergyNet):
    """A writable quadratic energy on a learned linear subspace of the pixels:

        E(x) = -1/2 f^T M f + lambda/2 ||s||^2 - b^T s,    f = U s,  s = 2x - 1,

    with U (r, D) static (meta-learned, started from the training data's principal components), M
    symmetric (r, r) and writable: r (r + 1) / 2 memory floats (r = 180 gives 16,290). Writing with the
    grad-norm term is a delta rule in the subspace, so the stored codes become fixed points; reading
    moves the query towards the stored pattern it is closest to, and the [0, 1] clip keeps the pixels
    that the memory agrees with.
    """

    def __init__(self, input_shape: tuple[int, ...], rank: int = 180, scale: float = 1.0):
        super().__init__()
        d = math.prod(input_shape)
        self.input_shape, self.dim, self.rank = tuple(input_shape), d, rank
        q, _ = torch.linalg.qr(torch.randn(d, rank))
        self.basis = nn.Parameter(q.T.contiguous())                 # (r, D), orthonormal rows
        iu = torch.triu_indices(rank, rank)
        self.register_buffer("iu", iu, persistent=False)
        self.memory_triu = nn.Parameter(torch.zeros(iu.shape[1]))   # (r(r+1)/2,) writable
        self.bias = nn.Parameter(torch.zeros(d))
        self.confine = nn.Parameter(torch.tensor(0.0))              # lambda = softplus(confine)
        self._init_scale(scale)

    def data_init(self, images: Tensor) -> None:
        """Start U at the top-r principal directions of (a sample of) the training images."""
        _, _, u = principal_basis(images, self.rank)
        with torch.no_grad():
            self.basis.copy_(u)
            self.bias.zero_()

    def matrix(self, p: Params) -> Tensor:
        return symmetric_from_triu(p["memory_triu"], self.iu, self.rank)   # (r, r)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x).flatten(1)                                    # (B, D)
        f = (s @ p["basis"].T) * math.sqrt(self.rank / self.dim)     # (B, r), |f|^2 ~ r: rates transfer
        e = -0.5 * ((f @ self.matrix(p)) * f).sum(-1)
        e = e + 0.5 * F.softplus(p["confine"]) * s.pow(2).sum(-1) - s @ p["bias"]
        return e * p["log_scale"].exp()


class SubspaceSlotEnergy(EnergyNet):
    """In plain terms: a meta-tuned modern Hopfield memory over PCA codes. With assign="indexed" (the
    shipped image memories) each pattern gets a slot of its own, and a handful of meta-learned scalars
    tune the read; there are no deep weights. Past S patterns, slots are shared and recall breaks down.

    The energy, with writable slots in a fixed linear subspace of the pixels:

        E(x) = -1/beta log sum_i exp(-beta (1/2 |f - k_i|^2 + c h(|k_i - a_i|^2)))      (attention)
               + lambda/2 |s~ - f U|^2                          (shrinks what the subspace cannot hold)
               + q/4 sum_pixels (s~ - kbar U)^4                 (pulls only pixels far from the recall)
               - w/2 |s|^2                                      (double well: keeps confident corners)

    with s = 2x - 1, s~ = s - centre, f = s~ U^T (r-dim code, U static, started at the principal
    directions), slots K (S, r) writable (S r memory floats), kbar = softmax-weighted slot mean, a_i a
    static copy of the slots' initial value (anchor) and h(d) = d / (d + tau) a saturating occupancy
    penalty: a slot already moved by an earlier write step costs c, which sends later patterns that
    collide on it to free slots (gradient writes from a shared init otherwise merge patterns).
    Reading from the query moves its subspace code to the recalled slot, shrinks the residual, and the
    quartic term overwrites only the pixels that disagree strongly with the recall (the occluded block).

    assign="indexed" replaces the occupancy penalty by a write that says where each pattern goes: the
    energy term of the writing loss for pattern i of N is its distance to its own slots {k : k mod N = i}
    (N <= S: every slot holds a pattern, small batches are stored several times) or to slot i mod S
    (N > S: patterns share slots and each slot moves to their mean, so past S patterns recall blends
    them and errs more than returning the query; results/eval/*-loads.json). For
    N <= S that distance bounds the attention term of E(x_i) from above (a softmin is at most any of its
    terms), so the write lowers a bound of the attention energy of what it stores, and no two patterns
    share a slot. The pixel terms recall the pattern's own slots instead of the softmax mean (so the
    whole write term is not a bound of E where the quartic term is on). No anchor, no penalty.
    """

    def __init__(self, input_shape: tuple[int, ...], rank: int = 126, slots: int = 128,
                 scale: float = 1.0, assign: str = "shared"):
        super().__init__()
        if assign not in ("shared", "indexed"):
            raise ValueError(f"assign={assign!r}: expected 'shared' or 'indexed'")
        d = math.prod(input_shape)
        self.input_shape, self.dim, self.rank, self.slots = tuple(input_shape), d, rank, slots
        self.assign = assign
        q, _ = torch.linalg.qr(torch.randn(d, rank))
        # U and the centre stay at the data's principal directions and mean (static buffers): learning
        # them with the rest made U non-orthonormal and the read and write unstable (measured)
        self.register_buffer("basis", q.T.contiguous())              # (r, D)
        self.register_buffer("centre", torch.zeros(d))
        self.memory_slots = nn.Parameter(torch.randn(slots, rank))  # (S, r) writable; init = theta_bar
        if assign == "shared":
            self.anchor = nn.Parameter(self.memory_slots.detach().clone())  # static, meta-learned
            self.register_buffer("tau", torch.tensor(1.0))
        # scalar knobs are stored divided by _GAIN so that the network's (small) meta-learning rate
        # moves them at a useful pace; the energy multiplies them back
        self.log_beta = nn.Parameter(torch.tensor(0.0))
        if assign == "shared":
            self.pen_raw = nn.Parameter(torch.tensor(inv_softplus(0.25) / _GAIN))   # c = softplus * unit
        self.comp_raw = nn.Parameter(torch.tensor(inv_softplus(0.2) / _GAIN))   # lambda
        self.quart_raw = nn.Parameter(torch.tensor(-6.0 / _GAIN))          # q, starts ~0
        self.well = nn.Parameter(torch.tensor(0.0))                         # w (either sign)
        self.register_buffer("unit", torch.tensor(1.0))               # typical half distance
        self._init_scale(scale)

    def data_init(self, images: Tensor) -> None:
        s, mu, u = principal_basis(images, self.rank)
        codes = (s - mu) @ u.T                                        # (M, r)
        idx = torch.randperm(codes.shape[0], generator=torch.Generator().manual_seed(0))
        anchors = codes[idx[: self.slots]]
        sub = codes[idx[: 256]]
        half = 0.5 * torch.cdist(sub, sub).pow(2)
        m = float(half[half > 0].median())
        with torch.no_grad():
            self.basis.copy_(u)
            self.centre.copy_(mu)
            self.memory_slots.copy_(anchors)
            self.unit.fill_(m)
            if self.assign == "shared":
                self.anchor.copy_(anchors)
                self.tau.fill_(0.025 * m)
            self.log_beta.fill_(math.log(400.0 / m) / _GAIN)

    def _code(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        s = _signed(x).flatten(1)                                     # (B, D)
        st = s - self.centre
        return s, st, st @ self.basis.T                               # f: (B, r)

    @staticmethod
    def _half_sq_dist(f: Tensor, k: Tensor) -> Tensor:
        """(B, r) codes, (S, r) slots (or one set per code, (B, S, r)) -> (B, S) half squared distances."""
        return 0.5 * (f.pow(2).sum(-1, keepdim=True) - 2 * _dot_slots(f, k) + k.pow(2).sum(-1))

    @property
    def stacks_weights(self) -> bool:
        return True

    def _slot_free_terms(self, p: Params, s: Tensor, st: Tensor, f: Tensor) -> Tensor:
        """The pixel terms that do not depend on the slots: the residual shrink and the double well."""
        shrink = 0.5 * F.softplus(p["comp_raw"] * _GAIN) * (st - f @ self.basis).pow(2).sum(-1)
        return shrink - 0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1)

    def _pixel_terms(self, p: Params, s: Tensor, st: Tensor, f: Tensor, recall: Tensor) -> Tensor:
        quartic = 0.25 * F.softplus(p["quart_raw"] * _GAIN) * (st - recall @ self.basis).pow(4).sum(-1)
        return self._slot_free_terms(p, s, st, f) + quartic

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s, st, f = self._code(x)
        k = p["memory_slots"]                                         # (S, r)
        beta = (p["log_beta"] * _GAIN).exp()
        d = self._half_sq_dist(f, k)                                  # (B, S)
        if self.assign == "shared":
            disp = (k - p["anchor"]).pow(2).sum(-1)                   # (S,)
            d = d + F.softplus(p["pen_raw"] * _GAIN) * self.unit * disp / (disp + self.tau)
        e = -torch.logsumexp(-beta * d, dim=-1) / beta
        kbar = _mix_slots(torch.softmax(-beta * d, dim=-1), k)        # (B, r)
        return (e + self._pixel_terms(p, s, st, f, kbar)) * p["log_scale"].exp()

    def fill_read_cache(self, p: Params, x: Tensor, cache: dict) -> bool:
        if "beta" not in cache:
            k, u = p["memory_slots"], self.basis
            beta = float((p["log_beta"] * _GAIN).exp())
            logit_bias = -0.5 * beta * k.pow(2).sum(-1)                        # (S,), or (B, S) stacked
            if self.assign == "shared":
                disp = (k - p["anchor"]).pow(2).sum(-1)
                logit_bias = logit_bias - beta * F.softplus(p["pen_raw"] * _GAIN) * self.unit * disp / (disp + self.tau)
            lam, well = float(F.softplus(p["comp_raw"] * _GAIN)), float(p["well"] * _GAIN)
            if x.shape[0] <= _VIEW_ROWS:    # one copy of the basis streamed, for both products
                ut = u.T
            else:                           # a contiguous transpose, once per basis, not per read
                ut = memo_on(self, "_basis_t_memo", u, lambda: u.T.contiguous())
            cache.update(beta=beta, logit_bias=logit_bias, kt=k.transpose(-2, -1).contiguous(), ut=ut,
                         lam=lam, well=well, quart=float(F.softplus(p["quart_raw"] * _GAIN)),
                         scale2=float(2 * p["log_scale"].exp()), shift=-(1 + self.centre), wc=well * self.centre,
                         ortho=orthonormal_rows(self, u))
        return True

    def energy_grad(self, p: Params, x: Tensor, cache: dict) -> Tensor | None:
        """dE/dx written out. With att = softmax(-beta d), kbar = att K, res = s~ - kbar U and h = dE/dkbar =
        -q res^3 U^T: dE/df = f - kbar + beta (att (h.k_i) K - (h.kbar) kbar) (the attention term, and the
        quartic term through kbar), dE/ds~ = lambda (r - r U^T U) + q res^3 + (dE/df) U with r = s~ - f U,
        dE/ds = dE/ds~ - w s, and dE/dx = 2 scale dE/ds. The slots' occupancy penalty does not depend on x.

        As computed: the softmax drops the row constant |f|^2 / 2 of d, and for orthonormal rows of U
        (r U^T = 0) dE/ds~ = (lambda - w) s~ + q res^3 - w centre + (dE/df - lambda f) U, so a step makes four
        products with U and folds the rest into them."""
        self.fill_read_cache(p, x, cache)
        k, u = p["memory_slots"], self.basis
        c = cache
        st = torch.add(c["shift"], x.flatten(1), alpha=2.0)                   # s~ = 2x - 1 - centre
        f = st @ c["ut"]                                                       # (B, r)
        if k.dim() == 2:
            att = torch.softmax(torch.addmm(c["logit_bias"], f, c["kt"], alpha=c["beta"]), dim=-1)   # (B, S)
        else:                                           # one written memory per query (stacked)
            att = torch.softmax(torch.bmm(f.unsqueeze(1), c["kt"]).squeeze(1).mul_(c["beta"])
                                .add_(c["logit_bias"]), dim=-1)
        kbar = _mix_slots(att, k)                                              # (B, r)
        res3 = torch.addmm(st, kbar, u, alpha=-1.0).pow_(3).mul_(c["quart"])  # q res^3, (B, D)
        hn = res3 @ c["ut"]                                                    # -dE/dkbar, (B, r)
        hk = hn @ c["kt"] if k.dim() == 2 else torch.bmm(hn.unsqueeze(1), c["kt"]).squeeze(1)
        t1 = _mix_slots(att.mul_(hk), k)                                       # att (h.k_i) K, negated
        sc = (hn * kbar).sum(-1, keepdim=True).mul_(c["beta"]).sub_(1.0)       # -(beta h.kbar + 1)
        if c["ortho"]:
            g_f = torch.add(kbar.mul_(sc), t1, alpha=-c["beta"]).add_(f, alpha=1.0 - c["lam"])  # dE/df - lambda f
            base = res3.add_(st, alpha=c["lam"] - c["well"]).sub_(c["wc"])
        else:
            g_f = torch.add(kbar.mul_(sc), t1, alpha=-c["beta"]).add_(f)                         # dE/df
            r = st - f @ u
            base = res3.add_(r - (r @ c["ut"]) @ u, alpha=c["lam"]).sub_(st, alpha=c["well"]).sub_(c["wc"])
        return torch.addmm(base, g_f, u, beta=c["scale2"], alpha=c["scale2"]).view_as(x)

    def energy_cached(self, p: Params, x: Tensor, cache: dict) -> Tensor:
        """E(x) from the read's cache (see `energy_grad`): the attention term from the shifted logits,
        -1/beta logsumexp(beta (f k_i - |k_i|^2 / 2)) + |f|^2 / 2, and |s~ - f U|^2 = |s~|^2 - |f|^2 for
        orthonormal rows of U: two products with U instead of three; the sums of squares (and of fourth
        powers, as squares of squares) are dot products."""
        if "beta" not in cache or not cache["ortho"]:
            return self.energy(p, x)
        c, k, u = cache, p["memory_slots"], self.basis
        st = torch.add(c["shift"], x.flatten(1), alpha=2.0)
        f = st @ c["ut"]
        if k.dim() == 2:
            logits = torch.addmm(c["logit_bias"], f, c["kt"], alpha=c["beta"])
        else:
            logits = torch.bmm(f.unsqueeze(1), c["kt"]).squeeze(1).mul_(c["beta"]).add_(c["logit_bias"])
        f2, st2 = torch.linalg.vecdot(f, f), torch.linalg.vecdot(st, st)
        e = 0.5 * f2 - torch.logsumexp(logits, dim=-1) / c["beta"]
        kbar = _mix_slots(torch.softmax(logits, dim=-1), k)
        res2 = torch.addmm(st, kbar, u, alpha=-1.0).square_()    # torch's pow(4) is ten times a square here
        quart = torch.linalg.vecdot(res2, res2)
        s = st + self.centre
        s2 = torch.linalg.vecdot(s, s)
        e = e + 0.5 * c["lam"] * (st2 - f2) + 0.25 * c["quart"] * quart - 0.5 * c["well"] * s2
        return e * (c["scale2"] / 2)

    @property
    def writes_in_closed_form(self) -> bool:
        return self.assign == "indexed"             # the shared assignment's occupancy penalty: autograd

    @property
    def capacity(self) -> int | None:
        return self.slots if self.assign == "indexed" else None

    def assignment(self, n: int, device: torch.device | None = None) -> Tensor:
        """(N, S) weights: which slots pattern i of a batch of N is written to (each slot's column sums
        to 1, so a slot shared by several patterns moves to their mean at the same rate)."""
        if n < 1:
            raise ValueError(f"a write needs at least one pattern, got {n}")
        slot = torch.arange(self.slots, device=device)[None, :]
        pat = torch.arange(n, device=device)[:, None]
        a = (slot % n == pat) if n <= self.slots else (pat % self.slots == slot)
        a = a.float()
        return a / a.sum(0, keepdim=True).clamp_min(1)

    def exact_memory(self, p: Params, x: Tensor) -> Params | None:
        if self.assign != "indexed":
            return None
        _, _, f = self._code(x)                                       # (N, r) exact codes
        a = self.assignment(x.shape[0], x.device).to(f.dtype)          # (N, S), columns sum to 1
        return {"memory_slots": a.T @ f}                              # (S, r): own code, or the mean

    def _decode(self, codes: Tensor) -> Tensor:
        """(B, r) subspace codes -> (B, *input_shape) images in [0, 1]."""
        return ((codes @ self.basis + self.centre + 1) / 2).clamp(0, 1).view(-1, *self.input_shape)

    def familiarity_views(self, p: Params, q: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The query projected on the subspace, and the slot nearest the recall x, decoded: a stored
        pattern's slot holds its code, so the two agree up to the occlusion; never-stored queries
        recall another pattern's slot."""
        _, _, fq = self._code(q)
        _, _, fx = self._code(x)
        k = p["memory_slots"]
        near = self._half_sq_dist(fx, k).argmin(1)
        nearest = k[near] if k.dim() == 2 else k[torch.arange(k.shape[0], device=k.device), near]   # (B, r)
        return self._decode(fq), self._decode(nearest)

    def candidate_starts(self, p: Params, q: Tensor, n: int) -> Tensor | None:
        """The n distinct slots nearest each query in code space (copies of one pattern's slots count
        once), decoded to pixels and pasted over the query where they disagree by more than 0.25."""
        _, _, f = self._code(q)
        k = p["memory_slots"]                                         # (S, r)
        order = self._half_sq_dist(f, k).argsort(1).cpu()             # (B, S), nearest first
        same = (self._half_sq_dist(k, k) < 0.05 * self.unit).cpu()    # (S, S): copies of one pattern
        recon = self._decode(k)                                       # (S, *P)
        picks = []
        for b in range(q.shape[0]):              # greedy, on the CPU: one device sync per query at most
            kept: list[int] = []
            for s in order[b].tolist():
                if not any(bool(same[s, t]) for t in kept):
                    kept.append(s)
                if len(kept) == n:
                    break
            picks.append(kept + [kept[-1]] * (n - len(kept)))
        cand = recon[torch.tensor(picks, device=q.device)]            # (B, n, *P)
        qq = q[:, None].expand_as(cand)
        return torch.where((cand - qq).abs() > 0.25, cand, qq)

    def append_plan(self, p: Params, n_old: int, n_new: int) -> dict | None:
        """Slots re-dealt as a write of all n_old + n_new patterns at once would deal them: each slot's
        old owners keep their (mean) code, slots of new patterns restart from theta_bar and are written
        by the new patterns only, and a slot shared by old and new patterns ends as the mean of all."""
        if self.assign != "indexed":
            return None
        total = n_old + n_new
        k_old = p["memory_slots"]                                     # (S, r) written
        a = self.assignment(total, k_old.device)                      # (total, S), columns sum to 1
        owners = a > 0
        old_owners, new_owners = owners[:n_old].sum(0), owners[n_old:].sum(0)    # (S,)
        share = old_owners / (old_owners + new_owners).clamp_min(1)   # (S,) weight of the old mean
        if total <= self.slots:      # one owner per slot: its old code sits in the old slot of its index
            src = torch.arange(self.slots, device=k_old.device) % total
            old_mean = k_old[src.clamp(max=max(n_old - 1, 0))]
        else:                        # slot k's old owners are the same set in both deals
            old_mean = k_old
        fresh = self.memory_slots.detach().to(k_old)                  # theta_bar
        start = torch.where((new_owners > 0)[:, None], fresh, old_mean)
        new_a = owners[n_old:].float()
        new_a = new_a / new_a.sum(0, keepdim=True).clamp_min(1)       # (n_new, S): columns sum to 1
        return {"start": {"memory_slots": start}, "assign": new_a, "share": share, "old_mean": old_mean}

    @property
    def redeals_on_append(self) -> bool:
        return self.assign == "indexed"

    def finish_append(self, written: Params, plan: dict) -> Params:
        share = plan["share"][:, None].to(written["memory_slots"])
        return {"memory_slots": share * plan["old_mean"] + (1 - share) * written["memory_slots"]}

    def write_energy(self, p: Params, x: Tensor, assign: Tensor | None = None) -> Tensor:
        if self.assign == "shared":
            return self.energy(p, x)
        s, st, f = self._code(x)
        k = p["memory_slots"]
        a = (self.assignment(x.shape[0], x.device) if assign is None else assign).to(k.dtype)   # (N, S)
        d = self._half_sq_dist(f, k)                                  # (N, S)
        own = (a * d).sum(-1)                       # N <= S: a sum of whole d_k, so >= softmin_k d_k
        recall = (a @ k) / a.sum(-1, keepdim=True).clamp_min(1e-12)
        return (own + self._pixel_terms(p, s, st, f, recall)) * p["log_scale"].exp()

    def write_grad(self, p: Params, x: Tensor, assign: Tensor | None, cache: dict) -> tuple[Tensor, Params] | None:
        """The indexed write's energy term per pattern and its sum's gradient in the slots K: with a (N, S) the
        assignment, A_n = sum_S a_nS, recall_n = a_n K / A_n, res = s~ - recall U and h = q res^3 U^T,
        dE/dK = scale ((sum_n a_nS) k_S - a^T f - (a / A)^T h). The codes f, the terms that do not depend on
        K (the residual shrink, the double well) and the assignment are the patterns' alone: once per write,
        so that a step makes two products with U (autograd's makes four, and recomputes f)."""
        if self.assign != "indexed" or p["memory_slots"].dim() != 2:
            return None
        k, u = p["memory_slots"], self.basis
        if "f" not in cache:
            s, st, f = self._code(x)
            a = (self.assignment(x.shape[0], x.device) if assign is None else assign).to(k.dtype)   # (N, S)
            share = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
            cache.update(st=st, f=f, a=a, share=share, col=a.sum(0)[:, None], af=a.T @ f,
                         fixed=self._slot_free_terms(p, s, st, f),
                         quart=F.softplus(p["quart_raw"] * _GAIN), scale=p["log_scale"].exp())
        c = cache
        res = torch.addmm(c["st"], c["share"] @ k, u, alpha=-1.0)                # s~ - recall U, (N, D)
        res2 = res.square()
        own = (c["a"] * self._half_sq_dist(c["f"], k)).sum(-1)
        e = (own + c["fixed"] + 0.25 * c["quart"] * torch.linalg.vecdot(res2, res2)) * c["scale"]
        h = (res2.mul_(res) @ u.T).mul_(c["quart"])                               # q res^3 U^T, (N, r)
        grad = (c["col"] * k - c["af"] - c["share"].T @ h) * c["scale"]
        return e, {"memory_slots": grad}


class SubspaceSpanEnergy(EnergyNet):
    """In plain terms: a correlation-matrix (Hebbian) memory over PCA codes whose recall fits the query's
    visible pixels within the span of what was stored. Every pattern of a write adds to the same symmetric
    r x r matrix M (no slot of its own: r (r + 1) / 2 memory floats); the read finds the image in the span
    of M that best explains the query outside its most damaged 16x16 window and pulls that window to it.

        f = (s - centre) U^T                                   (r-dim PCA code, U static)
        E(x) = -h/2 sum_{i<=j} M_ij f_i f_j                    (Hebb: a write step adds f f^T)
               + lambda/2 sum_p (1 - k_p) (s_p - R_p)^2        (the damaged window pulled to the recall)
               - w/2 |s|^2                                     (double well)

    R = centre + U^T M a with a the ridge least-squares fit of s - centre over the pixels k = 1, where k
    masks out the window of largest residual, refitted `fits` times (a robust fit in the span of M); R and
    k are held fixed within a step of the read (in s) and of the write (in M); see `energy`. With
    N stored patterns the span is N-dimensional (N < r), so recall degrades gradually with the load and
    past r patterns it becomes the unconstrained PCA fit of the visible pixels: graded capacity, no cliff.

    For binary images (`bit_fit_steps` > 0), R's window is instead the bits that put the image's code in
    the span: a stored image's code lies in it, which is r - N linear equations in the window's pixels;
    their solution in the box [-1, 1] is not unique, but pushed to the box's corners it nearly always is
    the stored bits (`_bit_fit`). The least-squares fit blurs instead: 38.5 Hamming at rank 126 against
    14.06 with the bit fit on the same 200 held-out episodes of 64 characters
    (results/explore/characters-span8k.json, results/eval/characters32-span8k-loads.json).
    """

    # familiarity with the bit fit: the score less this many times `bit_fit_residual` of the recall; chosen
    # on the training split (scripts/tune_span_familiarity.py: occluded ROC AUC of characters32-span4k 0.912
    # with 0, 0.968 with 60, the best of 0-300; the larger spans gain too and stay at 1.0 clean)
    familiarity_residual_weight = 60.0

    def __init__(self, input_shape: tuple[int, ...], rank: int = 126, window: int = 16, fits: int = 2,
                 scale: float = 1.0, bit_fit_steps: int = 0, bit_fit_well: float = 0.5):
        super().__init__()
        d = math.prod(input_shape)
        self.input_shape, self.dim, self.rank, self.window, self.fits = tuple(input_shape), d, rank, window, fits
        self.bit_fit_steps, self.bit_fit_well = bit_fit_steps, bit_fit_well
        q, _ = torch.linalg.qr(torch.randn(d, rank))
        self.register_buffer("basis", q.T.contiguous())                   # (r, D)
        self.register_buffer("centre", torch.zeros(d))
        iu = torch.triu_indices(rank, rank)
        self.register_buffer("iu", iu, persistent=False)
        self.memory_triu = nn.Parameter(torch.zeros(iu.shape[1]))        # writable, theta_bar = 0
        self.hebb_raw = nn.Parameter(torch.tensor(inv_softplus(1e-6) / _GAIN))   # tiny: M only needs a span
        self.pull_raw = nn.Parameter(torch.tensor(inv_softplus(1.0) / _GAIN))
        self.ridge_raw = nn.Parameter(torch.tensor(math.log(1e-3) / _GAIN))
        self.well = nn.Parameter(torch.tensor(0.0))
        self._init_scale(scale)

    def data_init(self, images: Tensor) -> None:
        _, mu, u = principal_basis(images, self.rank)
        with torch.no_grad():
            self.basis.copy_(u)
            self.centre.copy_(mu)

    def matrix(self, p: Params) -> Tensor:
        return symmetric_from_triu(p["memory_triu"], self.iu, self.rank)          # (r, r)

    def _window_geometry(self) -> tuple[int, int, int, int]:
        c, h, w = self.input_shape if len(self.input_shape) == 3 else (1, 1, self.dim)
        return c, h, w, min(self.window, h, w)

    def _window_position(self, r: Tensor) -> Tensor:
        """(B, D) residuals -> (B,) index of the window x window square (all channels) of largest residual
        energy, over the (H - k + 1) (W - k + 1) positions: the part of each image the fit leaves out next."""
        c, h, w, k = self._window_geometry()
        e = r.detach().double().pow(2).view(-1, c, h, w).sum(1)                   # (B, H, W)
        # integral images (a 16 x 16 pooling costs 256 adds per window), in float64: their running totals
        # reach the whole image's residual energy, where float32 would round away differences between windows
        return window_sums(e, k).flatten(1).argmax(1)

    def _window_pixels(self, pos: Tensor) -> Tensor:
        """(B,) window positions -> (B, P) pixel indices (P = c k k)."""
        c, h, w, k = self._window_geometry()
        iy, ix = pos // (w - k + 1), pos % (w - k + 1)                             # (B,)
        dy = torch.arange(k, device=pos.device)
        rows = (iy[:, None] + dy[None, :])[:, :, None] * w + (ix[:, None] + dy[None, :])[:, None, :]  # (B, k, k)
        chans = torch.arange(c, device=pos.device)[:, None, None] * (h * w)
        return (rows[:, None] + chans[None]).flatten(1)                            # (B, c k k)

    def window_grams(self) -> Tensor:
        """(positions, r, r): sum of u_p u_p^T over each window's pixels (U's columns), computed once per
        basis: a recall leaves a window out with M G M, r^3, instead of gathering its P rows of U^T M, P r^2."""
        def build() -> Tensor:
            c, h, w, k = self._window_geometry()
            n = (h - k + 1) * (w - k + 1)
            ut = self.basis.T
            out = []
            for start in range(0, n, 32):
                pos = torch.arange(start, min(start + 32, n), device=ut.device)
                uw = ut[self._window_pixels(pos)]                                  # (b, P, r)
                out.append(uw.transpose(1, 2) @ uw)
            return torch.cat(out)
        return memo_on(self, "_window_grams_memo", self.basis, build)

    def span(self, p: Params) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """What the recall needs of M alone: the Gram matrix b^T b (r, r) of the span in pixels b = U^T M
        (D, r), the ridge, M itself, and for the bit fit an orthonormal basis of the directions outside the
        span (r, r - N; None without the bit fit). A read computes them once, not at every step. b itself is
        never formed: the recall multiplies by it as U^T then M (qt b = (qt U^T) M, c b^T = (c M) U, M
        symmetric), B (r D + r^2) per product instead of the D r^2 of building it: one-query reads of the photo
        span memories took about half as long (results/explore/serving-before-after/)."""
        m = self.matrix(p)
        # b^T b = M U U^T M = M^2 for orthonormal rows of U (the SVD's): r^3 instead of D r^2
        if orthonormal_rows(self, self.basis):
            gram = m @ m
        else:
            u = self.basis
            gram = m @ memo_on(self, "_basis_gram_memo", u, lambda: u @ u.T) @ m
        ridge = (p["ridge_raw"] * _GAIN).exp() * torch.diagonal(gram).sum() / self.rank + 1e-20  # > 0 unwritten
        outside = self._span_split(m)[1] if self.bit_fit_steps else None
        return gram, ridge, m, outside

    @property
    def reads_known_pixels(self) -> bool:
        return True

    def first_fit(self, span: tuple[Tensor, ...]) -> tuple[Tensor | None, Tensor]:
        """`spd_factor` of the first fit's system gram + ridge I, which depends on the memory alone: a read
        that recalls more than once (the look-ahead, then the energy of the result) factors it once."""
        gram, ridge = span[0], span[1]
        return spd_factor(gram + ridge * torch.eye(self.rank, dtype=gram.dtype, device=gram.device))

    def recall(self, p: Params, s: Tensor, span: tuple[Tensor, ...] | None = None,
               known: Tensor | None = None, first: tuple[Tensor | None, Tensor] | None = None
               ) -> tuple[Tensor, Tensor]:
        """Signed images s (B, D) -> their recall R (B, D) in the span of M, and the keep mask (B, D).
        known (B, D) {0, 1}: a masked read's known pixels; the fit then leaves out exactly the others (no
        window is searched for) and the recall fills them. first: `first_fit(span)`, when the caller has it."""
        qt = s - self.centre
        gram, ridge, m, outside = self.span(p) if span is None else span
        eye = torch.eye(self.rank, dtype=s.dtype, device=s.device)
        if known is not None:
            known = (known >= 0.5).to(s.dtype)
            return self._known_recall(qt, (gram, ridge, m, outside), eye, known), known
        a_mat = gram + ridge * eye                  # one system for every query in the first fit
        u = self.basis
        qb = (qt @ u.T) @ m                                                        # qt b: (B, r)
        rhs = qb
        win = None
        for i in range(self.fits):
            factor = first if i == 0 else None
            coef = (spd_solve(a_mat, rhs.T, factor).T if a_mat.dim() == 2  # the right-hand sides as columns
                    else spd_solve(a_mat, rhs.unsqueeze(-1), factor).squeeze(-1))  # (B, r)
            rec = (coef @ m) @ u                                                   # coef b^T: (B, D)
            pos = self._window_position(qt - rec)                                  # (B,)
            win = self._window_pixels(pos)                                         # (B, P)
            if i == self.fits - 1:              # the last window only sets the mask: no system to build
                break
            # the window's rows of b left out: b_w^T b_w = M (sum over the window of u_p u_p^T) M
            mgm = m @ self.window_grams().index_select(0, pos) @ m                 # (B, r, r)
            a_mat = gram + ridge * eye - mgm
            in_win = torch.zeros_like(qt).scatter(1, win, 1.0)
            rhs = qb - ((qt * in_win) @ u.T) @ m                                   # b_w^T qt_w
        keep = torch.ones_like(qt).scatter(1, win, 0.0)
        if outside is not None and outside.shape[1] > 0:     # equations left to solve (fewer than r patterns)
            return self._bit_fit(qt, rec + self.centre, win, outside), keep
        return rec + self.centre, keep

    def _known_recall(self, qt: Tensor, span: tuple[Tensor, ...], eye: Tensor, known: Tensor) -> Tensor:
        """`recall` of centred signed images qt (B, D) fitted on their known pixels only: the ridge least-squares
        code in the span (the unknown pixels' rows of b left out: b^T K b = M U K U^T M), then for binary
        images the bit fit over the unknown pixels (queries with as many unknown pixels solved together)."""
        gram, ridge, m, outside = span
        u = self.basis
        unknown = known == 0
        free = 1 - known
        g_free = torch.cat([(u[None] * f[:, None, :]) @ u.T for f in free.split(8)])   # (B, r, r): U F U^T
        a = gram + ridge * eye - m @ g_free @ m
        rhs = ((qt * known) @ u.T) @ m                                                 # b^T K qt
        rec = (spd_solve(a, rhs.unsqueeze(-1)).squeeze(-1) @ m) @ u + self.centre       # code b^T: (B, D)
        if outside is None or outside.shape[1] == 0:
            return rec
        counts = unknown.sum(1)
        out = rec.clone()
        for n in counts.unique().tolist():
            if n == 0:
                continue
            rows = (counts == n).nonzero().squeeze(1)
            win = unknown[rows].nonzero()[:, 1].view(rows.numel(), n)                 # (b, n) unknown pixels
            out[rows] = self._bit_fit(qt[rows], rec[rows], win, outside)
        return out

    def _bit_fit(self, qt: Tensor, rec: Tensor, win: Tensor, out: Tensor) -> Tensor:
        """For binary images: the window's pixels as the box-constrained ([-1, 1]) solution of the span's
        equations. A stored image's code lies in the span of M, so P_perp U (s - centre) = 0 for it: r - N
        linear equations in the window's P pixels, whose solution in [-1, 1]^P is not unique, but whose
        solution in {-1, 1}^P nearly always is. Accelerated projected gradient (FISTA) on
        |P_perp U (s - centre)|^2 over the window from the least-squares recall, with a double well that
        grows over the steps (bit_fit_well) pushing the pixels to the box's corners. rec: the recall (B, D);
        out: an orthonormal basis of the directions outside the span (r, r - N), so P_perp = out out^T and
        |P_perp U (s - centre)| = |out^T U (s - centre)|: r - N numbers per image."""
        u = self.basis
        a = u.T[win] @ out                                                         # (B, P, r - N)
        at = a.transpose(1, 2).contiguous()                                        # (B, r - N, P)
        blank = qt.scatter(1, win, -self.centre[win])                             # window pixels s_w = 0
        base = ((blank @ u.T) @ out).unsqueeze(1)                                  # (B, 1, r - N)
        z = rec.gather(1, win).clamp(-1, 1).unsqueeze(1)                           # signed window pixels (B, 1, P)
        prev = z
        steps, well = self.bit_fit_steps, self.bit_fit_well
        for k in range(steps):
            y = torch.add(z, z - prev, alpha=k / (k + 3))                          # the accelerated look-ahead
            res = torch.baddbmm(base, y, a)                                        # out^T U (s - c): (B, 1, r - N)
            # a step 1/L on |res|^2 (L = 2 |P_perp U_w|^2 <= 2; its half gradient res a^T), then the well
            # pulling to the box's corners: (1 + w k / steps) y - res a^T in one product, clamped to the box
            prev, z = z, torch.baddbmm(y, res, at, beta=1 + well * k / steps, alpha=-1).clamp_(-1, 1)
        return rec.scatter(1, win, z.squeeze(1))

    def energy(self, p: Params, x: Tensor, span: tuple[Tensor, ...] | None = None,
               recalled: tuple[Tensor, Tensor] | None = None, known: Tensor | None = None) -> Tensor:
        """span: `span(p)`, when the caller has it (a serving read computes it once); recalled: `recall` of
        these very images, when the caller has it; known: a masked read's known pixels (see `recall`)."""
        s = _signed(x).flatten(1)                                                  # (B, D)
        f = (s - self.centre) @ self.basis.T                                       # (B, r)
        # the Hebb term over the upper triangle, each entry once: its gradient in the writable triangle is
        # exactly -h/2 f_i f_j, so a write step adds a multiple of f f^T (the span of M is the stored codes')
        pairs = f[:, self.iu[0]] * f[:, self.iu[1]]                               # (B, r(r+1)/2)
        e = -0.5 * F.softplus(p["hebb_raw"] * _GAIN) * (pairs @ p["memory_triu"])
        # the recall is held fixed within a step of either loop (like the slot memories' attention, which is
        # one-hot): a read step pulls the damaged window to it and leaves the visible pixels, which chose it,
        # alone; a write step is the Hebb rule alone, so that appending is writing more (see `recall`)
        r, keep = (self.recall({**p, "memory_triu": p["memory_triu"].detach()}, s.detach(), span, known)
                   if recalled is None else recalled)
        e = e + 0.5 * F.softplus(p["pull_raw"] * _GAIN) * ((1 - keep) * (s - r).pow(2)).sum(-1)
        e = e - 0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1)
        return e * p["log_scale"].exp()

    def energy_grad(self, p: Params, x: Tensor, cache: dict) -> Tensor | None:
        """dE/ds = -h/2 (M + diag M) f U + lambda (1 - k) (s - R) - w s with f's gradient through U (the Hebb
        sum runs over the upper triangle, so the diagonal counts twice) and R, k held fixed as in `energy`;
        dE/dx = 2 scale dE/ds."""
        if "hebb_m" not in cache:
            m = self.matrix(p)
            m2 = m + torch.diag(torch.diagonal(m))
            cache.update(hebb_m=-0.5 * F.softplus(p["hebb_raw"] * _GAIN) * m2,                  # (r, r)
                         pull=F.softplus(p["pull_raw"] * _GAIN), well=p["well"] * _GAIN,
                         scale2=2 * p["log_scale"].exp(), span=self.span(p))
        c = cache
        s = _signed(x).flatten(1)
        f = (s - self.centre) @ self.basis.T
        r, keep = self._recall_memo(p, s, c)
        g = (f @ c["hebb_m"]) @ self.basis + c["pull"] * (1 - keep) * (s - r) - c["well"] * s
        return (c["scale2"] * g).view_as(x)

    def _recall_memo(self, p: Params, s: Tensor, cache: dict) -> tuple[Tensor, Tensor]:
        """`recall` of s, reused when a read asks again for the same images (the gradient and the energy of
        the query itself: with the bit fit, the recall is most of a read's cost). A masked read's recall
        depends on the known pixels alone, which the read holds fixed: it is computed once per read."""
        known = cache.get("known")                          # (B, D) {0, 1}, from `read`
        key = s if known is None else s * known
        memo = cache.get("recall_memo")
        if memo is not None and memo[0].shape == key.shape and torch.equal(memo[0], key):
            return memo[1], memo[2]
        if known is None and "first_fit" not in cache:
            cache["first_fit"] = self.first_fit(cache["span"])
        r, keep = self.recall(p, s, cache["span"], known, cache.get("first_fit"))
        cache["recall_memo"] = (key, r, keep)
        return r, keep

    def energy_cached(self, p: Params, x: Tensor, cache: dict) -> Tensor:
        """E(x) from the gradient's cache: the Hebb term as 1/2 f H f with the gradient's H = -h/2 (M + diag M)
        (the same sum over the upper triangle, sum_{i<=j} T_ij f_i f_j = f (M + diag M) f / 2), one (B, r) x
        (r, r) product instead of gathering every pair f_i f_j, B r (r + 1) / 2 values."""
        if "span" not in cache:
            return self.energy(p, x, known=cache.get("known"))
        c = cache
        s = _signed(x).flatten(1)
        r, keep = self._recall_memo(p, s, c)
        f = (s - self.centre) @ self.basis.T
        d = s - r
        e = 0.5 * torch.linalg.vecdot(f @ c["hebb_m"], f) + 0.5 * c["pull"] * torch.linalg.vecdot((1 - keep) * d, d)
        e = e - 0.5 * c["well"] * torch.linalg.vecdot(s, s)
        return e * (0.5 * c["scale2"])

    def write_energy(self, p: Params, x: Tensor) -> Tensor:
        """E without its pull term, whose gradient in the written weights is zero (the recall is held fixed
        in M): the same write, without fitting a recall for every stored pattern at every write step."""
        s = _signed(x).flatten(1)
        f = (s - self.centre) @ self.basis.T
        pairs = f[:, self.iu[0]] * f[:, self.iu[1]]
        e = -0.5 * F.softplus(p["hebb_raw"] * _GAIN) * (pairs @ p["memory_triu"])
        return (e - 0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1)) * p["log_scale"].exp()

    def write_grad(self, p: Params, x: Tensor, assign: Tensor | None, cache: dict) -> tuple[Tensor, Params] | None:
        """`write_energy` per pattern and its sum's gradient in the triangle of M, -h/2 scale sum_n f_i f_j over
        i <= j: the same at every step (the write energy is linear in M), computed once per write."""
        if assign is not None:
            return None
        if "pairs" not in cache:            # the codes once: the energy's pairs and the gradient's sum
            s = _signed(x).flatten(1)
            f = (s - self.centre) @ self.basis.T
            hebb, scale = 0.5 * F.softplus(p["hebb_raw"] * _GAIN), p["log_scale"].exp()
            cache.update(pairs=f[:, self.iu[0]] * f[:, self.iu[1]], hebb=hebb, scale=scale,
                         well=0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1),
                         grad=-hebb * scale * (f.T @ f)[self.iu[0], self.iu[1]])
        c = cache
        return (-c["hebb"] * (c["pairs"] @ p["memory_triu"]) - c["well"]) * c["scale"], {"memory_triu": c["grad"]}

    @property
    def writes_additively(self) -> bool:
        return True                      # the write energy is linear in M: each step adds sum f f^T

    def exact_memory(self, p: Params, x: Tensor) -> Params | None:
        """M = sum_i f_i f_i^T (the correlation matrix of the stored codes), with no write loop."""
        f = (_signed(x).flatten(1) - self.centre) @ self.basis.T
        m = f.T @ f
        return {"memory_triu": m[self.iu[0], self.iu[1]]}

    def familiarity_score(self, p: Params, q: Tensor, known: Tensor | None = None,
                          recall: Tensor | None = None) -> Tensor | None:
        """1 - min(D_win, D_all) / R_win, clamped to [0, 1]. R_* is the squared residual of the query's pixels
        fitted (least squares) by the whole PCA subspace, D_* how much worse the span of M alone fits them:
        `all` over every pixel, `win` leaving out the window of largest PCA residual (an occluded square, or
        the worst-fitted part of a clean query). A stored pattern's code lies in the span, so the span fits
        it as well as the subspace does (D near 0: clean on all pixels, occluded with the window left out);
        a never-stored one's code has a part outside the span that only the subspace explains. Relative to
        the fit's own residual, that part counts whatever its directions' variance; comparing the recall with
        the query in pixels does not (AUC 0.78 clean, 0.81 occluded on photos32-span8k). With `known` (a masked
        read), both fits use the known pixels only, and D over them is the score."""
        s = _signed(q).flatten(1)
        eye = torch.eye(self.rank, dtype=s.dtype, device=s.device)
        qt = s - self.centre
        score = (self._known_pixels_score(p, qt, known.to(s.dtype).flatten(1)) if known is not None
                 else self._subspace_fit_score(p, qt, eye))
        if recall is not None and self.bit_fit_steps and self.familiarity_residual_weight:
            score = score - self.familiarity_residual_weight * self.bit_fit_residual(p, recall)
        return score.clamp(0, 1)

    def bit_fit_residual(self, p: Params, recall: Tensor) -> Tensor:
        """(B,) how far the recall, as bits, is from solving the span's equations: |P_perp U (s - centre)|^2
        relative to |U (s - centre)|^2, s the recall thresholded at 0.5. A stored pattern's bits solve them
        (0); a never-stored query's recall, forced into bits, mostly cannot. 0 without the bit fit."""
        s = torch.where(recall.flatten(1) > 0.5, 1.0, -1.0).to(self.centre.dtype)
        outside = self.span(p)[3]
        if outside is None or outside.shape[1] == 0:
            return torch.zeros(s.shape[0], dtype=s.dtype, device=s.device)
        f = (s - self.centre) @ self.basis.T
        return ((f @ outside).pow(2).sum(-1) / f.pow(2).sum(-1).clamp_min(1e-12))

    def _subspace_fit_score(self, p: Params, qt: Tensor, eye: Tensor) -> Tensor:
        """familiarity_score's fit comparison (before clamping) for centred signed queries qt (B, D)."""
        u = self.basis
        f = qt @ u.T                                                              # (B, r): all pixels
        pos = self._window_position(qt - f @ u)
        win = self._window_pixels(pos)
        v = self._span_basis(p, qt.dtype)                                         # (r, n) the span's basis
        keep = torch.ones_like(qt).scatter(1, win, 0.0)
        a = eye - self.window_grams().index_select(0, pos)                        # U K U^T, window left out
        rhs = ((qt * keep) @ u.T)                                                 # U K (s - centre)
        f_pca = spd_solve(a + 1e-4 * eye, rhs.unsqueeze(-1)).squeeze(-1)
        f_span = spd_solve(v.T @ a @ v, (rhs @ v).unsqueeze(-1)).squeeze(-1) @ v.T

        def sq(x: Tensor, known: Tensor | None = None) -> Tensor:
            return (x if known is None else known * x).pow(2).sum(-1)
        r_win = sq(qt - f_pca @ u, keep)
        d_win = sq(qt - f_span @ u, keep) - r_win
        d_all = sq(qt - ((f @ v) @ v.T) @ u) - sq(qt - f @ u)                     # the span's projection
        return 1 - torch.minimum(d_win, d_all) / r_win.clamp_min(1e-12)

    @staticmethod
    def _span_split(m: Tensor) -> tuple[Tensor, Tensor]:
        """Orthonormal bases (r, n) of the span of M and (r, r - n) of the directions outside it (eigenvalues
        above and below 1e-6 of the largest), in M's dtype."""
        ev, vecs = torch.linalg.eigh(m.detach().double())
        inside = ev > 1e-6 * ev.abs().max().clamp_min(1e-30)
        return vecs[:, inside].to(m.dtype), vecs[:, ~inside].to(m.dtype)

    def _span_basis(self, p: Params, dtype: torch.dtype) -> Tensor:
        return self._span_split(self.matrix(p))[0].to(dtype)                   # (r, n) orthonormal

    def _known_pixels_score(self, p: Params, qt: Tensor, keep: Tensor) -> Tensor:
        """familiarity_score over the known pixels keep (B, D) of centred signed queries qt (B, D)."""
        u = self.basis
        eye = torch.eye(self.rank, dtype=qt.dtype, device=qt.device)
        v = self._span_basis(p, qt.dtype)
        a = torch.cat([(u[None] * k[:, None, :]) @ u.T for k in keep.split(8)])   # (B, r, r): U K U^T, 8 at a time
        rhs = (qt * keep) @ u.T
        f_pca = spd_solve(a + 1e-4 * eye, rhs.unsqueeze(-1)).squeeze(-1)
        f_span = spd_solve(v.T @ a @ v, (rhs @ v).unsqueeze(-1)).squeeze(-1) @ v.T
        r_pca = (keep * (qt - f_pca @ u)).pow(2).sum(-1)
        d = (keep * (qt - f_span @ u)).pow(2).sum(-1) - r_pca
        return (1 - d / r_pca.clamp_min(1e-12)).clamp(0, 1)

    def familiarity_views(self, p: Params, q: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """The query's own PCA reconstruction (every direction of the subspace) and its recall within the
        span of M: a stored pattern's code lies in the span, so the two agree outside the damaged window;
        a never-stored one's code has a part outside the span, which the recall cannot follow."""
        s = _signed(q).flatten(1)
        own = ((s - self.centre) @ self.basis.T) @ self.basis + self.centre
        r, _ = self.recall(p, s)
        view = lambda t: ((t + 1) / 2).clamp(0, 1).view_as(q)      # noqa: E731
        return view(own), view(r)
