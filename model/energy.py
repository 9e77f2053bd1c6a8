"""Energy networks E(x; theta) -> (B,), written as pure functions of an explicit parameter dict.

Each network owns its parameters (initial values, names) as an nn.Module, but its energy is
computed by `energy(params, x)` from a dict, so that the write loop can substitute written
weights for the writable slice without touching the module (paper appendix A; MAML style).
Writable slices are separate parameters named `memory.*`; `memory_floats` counts them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Params = dict[str, Tensor]


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _linear(module: nn.Module, prefix: str, d_in: int, d_out: int, gain: float = 2.0) -> None:
    """Register He-initialised `prefix.weight` (d_out, d_in) and zero `prefix.bias` on module."""
    w = torch.randn(d_out, d_in) * math.sqrt(gain / d_in)
    module.register_parameter(prefix.replace(".", "_") + "_w", nn.Parameter(w))
    module.register_parameter(prefix.replace(".", "_") + "_b", nn.Parameter(torch.zeros(d_out)))


def _conv(module: nn.Module, prefix: str, c_in: int, c_out: int, k: int, gain: float = 2.0) -> None:
    w = torch.randn(c_out, c_in, k, k) * math.sqrt(gain / (c_in * k * k))
    module.register_parameter(prefix.replace(".", "_") + "_w", nn.Parameter(w))
    module.register_parameter(prefix.replace(".", "_") + "_b", nn.Parameter(torch.zeros(c_out)))


def lin(p: Params, name: str, x: Tensor) -> Tensor:
    return F.linear(x, p[name + "_w"], p[name + "_b"])


def conv(p: Params, name: str, x: Tensor, stride: int = 1) -> Tensor:
    w = p[name + "_w"]
    return F.conv2d(x, w, p[name + "_b"], stride=stride, padding=w.shape[-1] // 2)


def layer_norm(h: Tensor, dims: int, weight: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """LayerNorm over the last `dims` dimensions, written out: torch's fused layer_norm has a wrong
    third derivative (its double-backward is not differentiable correctly), and the meta-gradient
    through a write with the grad-norm term needs exactly that order (tests/model/test_memory.py)."""
    red = tuple(range(-dims, 0))
    mu = h.mean(dim=red, keepdim=True)
    var = (h - mu).pow(2).mean(dim=red, keepdim=True)
    out = (h - mu) * torch.rsqrt(var + eps)
    return out if weight is None else out * weight


def symmetric_from_triu(t: Tensor, iu: Tensor, n: int) -> Tensor:
    """The (n, n) symmetric matrix whose upper triangle (diagonal included) is t (n(n+1)/2,)."""
    upper = t.new_zeros(n, n).index_put((iu[0], iu[1]), t)
    return upper + upper.T - torch.diag(torch.diagonal(upper))


def _signed(x: Tensor) -> Tensor:
    """Data live in [0, 1]; the networks see them centred in [-1, 1]."""
    return 2.0 * x - 1.0


def principal_basis(images: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Signed flattened images (M, D), their mean (D,) and top-`rank` principal directions (rank, D);
    the SVD runs in float64."""
    s = _signed(images).flatten(1).double()
    mu = s.mean(0)
    _, _, vh = torch.linalg.svd(s - mu, full_matrices=False)
    return s.float(), mu.float(), vh[:rank].float()


class EnergyNet(nn.Module):
    """Base class: parameters live on the module; `energy(params, x)` is a pure function."""

    input_shape: tuple[int, ...]

    @property
    def writable(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.named_parameters() if n.startswith("memory"))

    @property
    def memory_floats(self) -> int:
        params = dict(self.named_parameters())
        return sum(params[n].numel() for n in self.writable)

    def energy(self, p: Params, x: Tensor) -> Tensor:  # x (B, *input_shape) -> (B,)
        raise NotImplementedError

    @property
    def capacity(self) -> int | None:
        """Patterns a write can store apart (each in memory of its own); None where capacity is graded."""
        return None

    def write_energy(self, p: Params, x: Tensor) -> Tensor:
        """The energy term of the writing loss for the batch x being written (N, *input_shape) -> (N,).
        The paper's: E itself. An energy may instead give a term that says where each pattern is stored
        (`SubspaceSlotEnergy` with assign="indexed": its attention part bounds E's from above)."""
        return self.energy(p, x)

    def familiarity_views(self, p: Params, q: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Two images whose agreement says whether query q was stored, given the recall x (model/
        familiarity.py: memory_familiarity); None: compare q and x themselves."""
        return None

    def candidate_starts(self, p: Params, q: Tensor, n: int) -> Tensor | None:
        """(B, n, *input_shape) starting points for descents into n different stored patterns near the
        queries q (top-k and sampling, model/sampling.py), where the family can name them; else None."""
        return None

    def append_plan(self, p: Params, n_old: int, n_new: int) -> dict | None:
        """How to store n_new more patterns in a memory holding n_old (p: with the written slice), for
        energies with a rule of their own (which then also define `finish_append`); None: further write
        steps from the written weights."""
        return None

    @property
    def redeals_on_append(self) -> bool:
        """True where `append_plan` gives the memory a write of all patterns at once would."""
        return False

    def exact_memory(self, p: Params, x: Tensor) -> Params | None:
        """The writable slice set straight from the patterns x (N, *input_shape), with no write loop,
        where the energy has such a closed form (slot memories: each slot the code of its pattern);
        None otherwise. A baseline: what the write adds over storing the codes."""
        return None

    def head(self, p: Params, h: Tensor) -> Tensor:
        """Shared energy read-out, scaled by a learned log-scale (the initial-scale trap)."""
        return lin(p, "out", h).squeeze(-1) * p["log_scale"].exp()

    def _init_scale(self, value: float) -> None:
        self.log_scale = nn.Parameter(torch.tensor(math.log(value)))


# --------------------------------------------------------------------------------------------------
# binary strings: gated RNN (appendix, "binary strings")
# --------------------------------------------------------------------------------------------------

class GatedRNNEnergy(EnergyNet):
    """z = [x, h]; c = tanh([memory(x), static(z)]); u = sigmoid(gate(z)); h <- u c + (1-u) h."""

    def __init__(self, input_shape: tuple[int, ...], hidden: int = 1024, memory: int = 63,
                 hops: int = 5, scale: float = 1.0):
        super().__init__()
        (d,) = input_shape
        self.input_shape, self.hops = tuple(input_shape), hops
        _linear(self, "memory", d, memory, gain=1.0)           # the writable slice: d*memory + memory
        _linear(self, "static", d + hidden, hidden - memory, gain=1.0)
        _linear(self, "gate", d + hidden, hidden, gain=1.0)
        _linear(self, "out", hidden, 1, gain=1.0)
        self._init_scale(scale)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x)                                         # (B, D)
        m = lin(p, "memory", s)                                # (B, d_mem), the same at every hop
        h = s.new_zeros(s.shape[0], p["gate_b"].shape[0])      # (B, H)
        for _ in range(self.hops):
            z = torch.cat([s, h], dim=-1)                      # (B, D+H)
            c = torch.tanh(torch.cat([m, lin(p, "static", z)], dim=-1))
            u = torch.sigmoid(lin(p, "gate", z))
            h = u * c + (1 - u) * h
        return self.head(p, h)


# --------------------------------------------------------------------------------------------------
# binary strings: writable quadratic energy (the Hopfield budget, 128*129/2 = 8,256 floats)
# --------------------------------------------------------------------------------------------------

class QuadraticEnergy(EnergyNet):
    """In plain terms (the shipped `binary128`): a meta-tuned quadratic energy, i.e. a Hopfield net whose
    couplings are written by the paper's writing loss, which contains the Hebb and delta rules.

    E(x) = -1/2 s^T M s - b^T s with s = 2x-1 and M symmetric and writable (upper triangle).

    One write step on the energy term adds the Hebb outer products; the alpha term makes each step a
    delta-rule update, whose fixed point is the projection (pseudo-inverse) rule. `diag` is a static,
    meta-learned gain on M's diagonal (self-coupling hurts retrieval below capacity).
    """

    def __init__(self, input_shape: tuple[int, ...], scale: float = 1.0):
        super().__init__()
        d = math.prod(input_shape)                              # images are flattened
        self.input_shape, self.dim = tuple(input_shape), d
        iu = torch.triu_indices(d, d)
        self.register_buffer("iu", iu, persistent=False)
        self.memory_triu = nn.Parameter(torch.zeros(iu.shape[1]))  # (D(D+1)/2,) writable
        self.bias = nn.Parameter(torch.zeros(d))
        self.diag = nn.Parameter(torch.tensor(1.0))
        self._init_scale(scale)

    def matrix(self, p: Params) -> Tensor:
        m = symmetric_from_triu(p["memory_triu"], self.iu, self.dim)     # (D, D)
        return m + torch.diag(torch.diagonal(m) * (p["diag"] - 1))        # diagonal scaled by the gain

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x).flatten(1)                               # (B, D)
        e = -0.5 * ((s @ self.matrix(p)) * s).sum(-1) - s @ p["bias"]
        return e * p["log_scale"].exp()


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
        """(B, r) codes, (S, r) slots -> (B, S) half squared distances, as matmuls."""
        return 0.5 * (f.pow(2).sum(-1, keepdim=True) - 2 * f @ k.T + k.pow(2).sum(-1))

    def _pixel_terms(self, p: Params, s: Tensor, st: Tensor, f: Tensor, recall: Tensor) -> Tensor:
        u = self.basis
        e = 0.5 * F.softplus(p["comp_raw"] * _GAIN) * (st - f @ u).pow(2).sum(-1)
        e = e + 0.25 * F.softplus(p["quart_raw"] * _GAIN) * (st - recall @ u).pow(4).sum(-1)
        return e - 0.5 * (p["well"] * _GAIN) * s.pow(2).sum(-1)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s, st, f = self._code(x)
        k = p["memory_slots"]                                         # (S, r)
        beta = (p["log_beta"] * _GAIN).exp()
        d = self._half_sq_dist(f, k)                                  # (B, S)
        if self.assign == "shared":
            disp = (k - p["anchor"]).pow(2).sum(-1)                   # (S,)
            d = d + F.softplus(p["pen_raw"] * _GAIN) * self.unit * disp / (disp + self.tau)
        e = -torch.logsumexp(-beta * d, dim=-1) / beta
        kbar = torch.softmax(-beta * d, dim=-1) @ k                   # (B, r)
        return (e + self._pixel_terms(p, s, st, f, kbar)) * p["log_scale"].exp()

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
        nearest = k[self._half_sq_dist(fx, k).argmin(1)]                # (B, r)
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


_GAIN = 30.0


def inv_softplus(y: float) -> float:
    """x with softplus(x) = y: how positive quantities are stored unconstrained."""
    return float(torch.log(torch.expm1(torch.tensor(float(y)))))


# --------------------------------------------------------------------------------------------------
# images: ResNet encoders
# --------------------------------------------------------------------------------------------------

def _resblock_init(m: nn.Module, name: str, c_in: int, c_out: int) -> None:
    _conv(m, f"{name}.a", c_in, c_out, 3)
    _conv(m, f"{name}.b", c_out, c_out, 3, gain=0.5)
    _conv(m, f"{name}.skip", c_in, c_out, 1, gain=1.0)


def _resblock(p: Params, name: str, x: Tensor) -> Tensor:
    """3x3 stride-2 conv, 3x3 conv, plus a 1x1 stride-2 skip; smooth activations (second order)."""
    h = conv(p, f"{name}_b", F.silu(conv(p, f"{name}_a", x, stride=2)))
    return F.silu(h + conv(p, f"{name}_skip", x, stride=2))


class ResNetFCEnergy(EnergyNet):
    """ResBlocks -> Linear(embed) -> LayerNorm -> tanh([memory(d), static(hidden-d)]) -> gated hops."""

    def __init__(self, input_shape: tuple[int, ...], memory: int = 32,
                 channels: tuple[int, ...] = (32, 64, 96), embed: int = 256, hidden: int = 512,
                 head: int = 1024, hops: int = 3, scale: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.hops, self.channels = tuple(input_shape), hops, tuple(channels)
        for i, c_out in enumerate(channels):
            _resblock_init(self, f"res{i}", c if i == 0 else channels[i - 1], c_out)
        flat = channels[-1] * (h >> len(channels)) * (w >> len(channels))
        _linear(self, "embed", flat, embed)
        self.embed_ln = nn.Parameter(torch.ones(embed))
        _linear(self, "memory", embed, memory, gain=1.0)       # writable: (embed + 1) * d
        _linear(self, "static", embed, hidden - memory, gain=1.0)
        _linear(self, "cell", 2 * hidden, hidden, gain=1.0)
        _linear(self, "gate", 2 * hidden, hidden, gain=1.0)
        _linear(self, "proj", hidden, head, gain=1.0)
        _linear(self, "out", head, 1, gain=1.0)
        self._init_scale(scale)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        h = _signed(x)
        for i in range(len(self.channels)):
            h = _resblock(p, f"res{i}", h)                     # (B, C_i, H/2^i, W/2^i)
        f = layer_norm(lin(p, "embed", h.flatten(1)), 1, p["embed_ln"])
        inp = torch.tanh(torch.cat([lin(p, "memory", f), lin(p, "static", f)], dim=-1))  # (B, hidden)
        state = torch.zeros_like(inp)
        for _ in range(self.hops):
            z = torch.cat([inp, state], dim=-1)                # (B, 2*hidden)
            c = torch.tanh(layer_norm(lin(p, "cell", z), 1))
            u = torch.sigmoid(lin(p, "gate", z))
            state = u * c + (1 - u) * state
        return self.head(p, torch.tanh(lin(p, "proj", state)))


class ResNetConvEnergy(EnergyNet):
    """ResBlocks -> two bottleneck blocks whose 3x3 conv is [memory Conv(d), static Conv(width-d)]
    with LayerNorm + tanh and a 1x1 (+avg-pool) residual -> convolutional gated hops -> MLP head."""

    def __init__(self, input_shape: tuple[int, ...], memory: int = 8,
                 channels: tuple[int, ...] = (32, 64), width: int = 128, bottleneck: int = 64,
                 hidden: int = 1024, hops: int = 3, scale: float = 1.0):
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.hops, self.channels = tuple(input_shape), hops, tuple(channels)
        for i, c_out in enumerate(channels):
            _resblock_init(self, f"res{i}", c if i == 0 else channels[i - 1], c_out)
        c_prev = channels[-1]
        for j in range(2):
            _conv(self, f"bn{j}.reduce", c_prev, bottleneck, 1)
            _conv(self, f"memory{j}", bottleneck, memory, 3, gain=1.0)   # writable: 9*bneck*d + d
            _conv(self, f"bn{j}.static", bottleneck, width - memory, 3, gain=1.0)
            _conv(self, f"bn{j}.skip", c_prev, width, 1, gain=1.0)
            c_prev = width
        _conv(self, "cell", 2 * width, width, 3, gain=1.0)
        _conv(self, "gate", 2 * width, width, 3, gain=1.0)
        side = (h >> len(channels)) // 2
        _linear(self, "proj", width * side * side, hidden, gain=1.0)
        _linear(self, "out", hidden, 1, gain=1.0)
        self._init_scale(scale)

    def _bottleneck(self, p: Params, j: int, x: Tensor, down: bool) -> Tensor:
        r = F.silu(conv(p, f"bn{j}_reduce", x))                                  # (B, bneck, h, w)
        h = torch.cat([conv(p, f"memory{j}", r), conv(p, f"bn{j}_static", r)], dim=1)  # (B, width, h, w)
        h = torch.tanh(layer_norm(h, 3))
        skip = conv(p, f"bn{j}_skip", x)
        if down:
            h, skip = F.avg_pool2d(h, 2), F.avg_pool2d(skip, 2)
        return h + skip

    def energy(self, p: Params, x: Tensor) -> Tensor:
        h = _signed(x)
        for i in range(len(self.channels)):
            h = _resblock(p, f"res{i}", h)
        h = self._bottleneck(p, 0, h, down=False)
        inp = self._bottleneck(p, 1, h, down=True)              # (B, width, 4, 4)
        state = torch.zeros_like(inp)
        for _ in range(self.hops):
            z = torch.cat([inp, state], dim=1)                  # (B, 2*width, 4, 4)
            c = torch.tanh(layer_norm(conv(p, "cell", z), 3))
            u = torch.sigmoid(conv(p, "gate", z))
            state = u * c + (1 - u) * state
        return self.head(p, torch.tanh(lin(p, "proj", state.flatten(1))))


ARCHITECTURES: dict[str, type[EnergyNet]] = {
    "gated_rnn": GatedRNNEnergy,
    "quadratic": QuadraticEnergy,
    "subspace_quadratic": SubspaceQuadraticEnergy,
    "subspace_slots": SubspaceSlotEnergy,
    "resnet_fc": ResNetFCEnergy,
    "resnet_conv": ResNetConvEnergy,
}
