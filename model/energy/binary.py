"""Energies for binary strings: the paper's gated RNN and a writable quadratic (Hopfield) energy."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import EnergyNet, Params, _linear, _signed, lin, memo_on, symmetric_from_triu


# --------------------------------------------------------------------------------------------------
# binary strings: gated RNN (appendix, "binary strings")
# --------------------------------------------------------------------------------------------------

def _memory_part(p: Params, s: Tensor, scale: float = 1.0) -> Tensor:
    """scale (W_m s + b_m) for (B, D) rows, with one writable (W_m, b_m) or one per row ((B, mem, D), (B, mem))."""
    w, b = p["memory_w"], p["memory_b"]
    if w.dim() == 2:
        return torch.addmm(b, s, w.T, beta=scale, alpha=scale)
    return torch.baddbmm(b.unsqueeze(1), s.unsqueeze(1), w.transpose(1, 2), beta=scale, alpha=scale).squeeze(1)


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

    @property
    def stacks_weights(self) -> bool:
        return True

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x)                                         # (B, D)
        m = _memory_part(p, s)                                 # (B, d_mem), the same at every hop
        h = s.new_zeros(s.shape[0], p["gate_b"].shape[0])      # (B, H)
        for _ in range(self.hops):
            z = torch.cat([s, h], dim=-1)                      # (B, D+H)
            c = torch.tanh(torch.cat([m, lin(p, "static", z)], dim=-1))
            u = torch.sigmoid(lin(p, "gate", z))
            h = u * c + (1 - u) * h
        return self.head(p, h)

    _STATIC = ("static_w", "static_b", "gate_w", "gate_b")

    def _hop_weights(self, p: Params, d: int) -> dict[str, Tensor]:
        """The static weights rearranged for `energy_grad` (see there), the candidate's rows doubled: W's s
        columns A (P - mem, D), A^T, the stacked bias, W's h columns C (P, H) with a zero block for the memory
        rows, and C^T. Built once per set of static weights where p's are this module's own (serving: detached
        views of them), else per read."""
        def build() -> dict[str, Tensor]:
            w_sh = torch.cat([2.0 * p["static_w"], p["gate_w"]])               # (P - mem, D + H)
            hidden = p["gate_b"].shape[0]
            c_h = torch.cat([w_sh.new_zeros(p["memory_w"].shape[-2], hidden), w_sh[:, d:]])
            return {"a_s": w_sh[:, :d].contiguous(), "a_st": w_sh[:, :d].T.contiguous(),
                    "b_sh": torch.cat([2.0 * p["static_b"], p["gate_b"]]), "c_h": c_h.contiguous(),
                    "c_ht": c_h.T.contiguous(), "minus_one": w_sh.new_full((), -1.0)}
        own = tuple(getattr(self, n) for n in self._STATIC)
        if not all(p[n].data_ptr() == t.data_ptr() and p[n].dtype == t.dtype and p[n].shape == t.shape
                   for n, t in zip(self._STATIC, own, strict=True)):
            return build()
        return memo_on(self, "_hop_memo", own, build)

    def _cache(self, p: Params, x: Tensor, cache: dict) -> dict:
        if "a_s" not in cache:
            cache.update(self._hop_weights(p, x.shape[-1]), hidden=p["gate_b"].shape[0],
                         top=p["out_w"][0] * p["log_scale"].exp())
        return cache

    def fill_read_cache(self, p: Params, x: Tensor, cache: dict) -> bool:
        self._cache(p, x, cache)
        return True

    def _hops(self, p: Params, s: Tensor, c: dict, keep: bool) -> tuple[Tensor, list]:
        """The forward hops from the rearranged weights, one sigmoid per hop for both halves: with the
        candidate's rows doubled, sig = sigmoid(pre) = [sc, u] and c = tanh = 2 sc - 1 (torch's sigmoid is
        several times cheaper than its tanh here). Returns the last h and, where keep, each hop's (F, u) with
        F = sig (1 - sig) [2u, c - h]."""
        hidden = c["hidden"]
        base = torch.cat([_memory_part(p, s, 2.0), torch.addmm(c["b_sh"], s, c["a_st"])], dim=-1)  # (B, P)
        saved, h = [], None
        for _ in range(self.hops):
            sig = torch.sigmoid(base if h is None else torch.addmm(base, h, c["c_ht"]))   # [sc, u], (B, P)
            sc, u = sig[:, :hidden], sig[:, hidden:]
            if keep:
                up_gap = torch.empty_like(sig)                                 # [2u, c - h]
                up, gap = up_gap[:, :hidden], up_gap[:, hidden:]
                torch.mul(u, 2.0, out=up)
                torch.add(c["minus_one"], sc, alpha=2.0, out=gap)
                h = torch.mul(u, gap) if h is None else torch.addcmul(h, u, gap.sub_(h))
                saved.append((torch.addcmul(sig, sig, sig, value=-1.0).mul_(up_gap), u))
            else:
                ct = torch.add(c["minus_one"], sc, alpha=2.0)
                h = ct.mul_(u) if h is None else torch.addcmul(h, u, ct.sub_(h))
        return h, saved

    def energy_grad(self, p: Params, x: Tensor, cache: dict) -> Tensor | None:
        """dE/dx by hand-written backpropagation through the hops, for serving reads.

        Written as one layer: the memory part m = W_m s + b_m is the first block of pre-activations that
        never sees h, so with W = [2 W_m; 2 W_static; W_gate] split into its s columns A (P, D) and h columns
        C (P, H) (C's first block zero) a hop is pre = A s + b + C h, [sc, u] = sigmoid(pre), c = 2 sc - 1
        (= tanh of the candidate's own pre-activation), h' = h + u (c - h). Backwards, with e = dE/dh':
        dpre = e F (F saved by the forward hop, see `_hops`) and e <- e (1 - u) + C^T dpre, and dE/ds =
        A^T sum_hops dpre: the s columns are multiplied once per gradient instead of once per hop and
        direction (what autograd does), the h columns carry no product at the first hop (h = 0), and a hop
        costs three ops backwards. dE/dx = 2 dE/ds."""
        c = self._cache(p, x, cache)
        mem_w = p["memory_w"]
        _, saved = self._hops(p, _signed(x), c, keep=True)
        g = self._backward(x.shape[0], c, saved)                             # (B, P)
        mem = mem_w.shape[-2]
        ds = torch.mm(g[:, mem:], c["a_s"])
        ds = (torch.baddbmm(ds.unsqueeze(1), g[:, :mem].unsqueeze(1), mem_w, alpha=2.0).squeeze(1)
              if mem_w.dim() == 3 else torch.addmm(ds, g[:, :mem], mem_w, alpha=2.0))
        return ds.mul_(2.0).view_as(x)

    def _backward(self, n: int, c: dict, saved: list) -> Tensor:
        """dE/dpre summed over the hops (n, P), from the forward hops' `saved` (see `energy_grad`)."""
        hidden = c["hidden"]
        dpre = c["top"].new_empty(self.hops, n, 2 * hidden)                  # (hops, B, P)
        e = c["top"].expand(n, hidden)                                       # dE/dh at the last hop
        for t in range(self.hops - 1, -1, -1):
            f, u = saved[t]
            torch.mul(f.view(n, 2, hidden), e.unsqueeze(1), out=dpre[t].view(n, 2, hidden))
            if t > 0:
                e = torch.addmm(torch.addcmul(e, e, u, value=-1.0), dpre[t], c["c_h"])
        return dpre.sum(0)

    def write_grad(self, p: Params, x: Tensor, assign: Tensor | None, cache: dict) -> tuple[Tensor, Params] | None:
        """E per pattern and the gradient of its sum in the memory part (W_m, b_m), from the same hops as
        `energy_grad`: the memory rows of pre are 2 (W_m s + b_m) (see there), so dE/dW_m = 2 dpre_m^T s and
        dE/db_m = 2 sum dpre_m, with dpre_m their part of dE/dpre summed over the hops."""
        if assign is not None or p["memory_w"].dim() != 2:
            return None
        c = self._cache(p, x, cache)
        if "signed" not in cache:
            cache["signed"] = _signed(x)
        s = cache["signed"]
        h, saved = self._hops(p, s, c, keep=True)
        gm = self._backward(x.shape[0], c, saved)[:, :p["memory_w"].shape[0]]    # (N, mem)
        return self.head(p, h), {"memory_w": 2.0 * (gm.T @ s), "memory_b": 2.0 * gm.sum(0)}

    def energy_cached(self, p: Params, x: Tensor, cache: dict) -> Tensor:
        """E(x) from the rearranged weights (no concatenation per hop)."""
        c = self._cache(p, x, cache)
        h, _ = self._hops(p, _signed(x), c, keep=False)
        return self.head(p, h)

    def append_state(self, x: Tensor) -> Params | None:
        """The patterns themselves (uint8 where they are bits, 1 byte each: 128 bytes a string; float32 otherwise):
        the write is T nonlinear gradient steps from theta_bar, which depend on the patterns through no smaller
        statistic, so an exact append writes every pattern again from theta_bar (further write steps from the
        written weights on the new patterns alone disturb the old: results/append/binary128-rnn.json)."""
        bits = bool(((x == 0) | (x == 1)).all())
        return {"patterns": x.detach().to(torch.uint8) if bits else x.detach().float()}

    @property
    def append_state_grows(self) -> bool:
        return True

    def patterns_from_state(self, state: Params, n: int) -> Tensor:
        x = state["patterns"].float()
        if x.shape[0] != n:
            raise ValueError(f"the append state holds {x.shape[0]} patterns, the session {n}")
        return x


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
        """(D, D), or (B, D, D) for writable triangles stacked one per query."""
        m = symmetric_from_triu(p["memory_triu"], self.iu, self.dim)
        diag = torch.diagonal(m, dim1=-2, dim2=-1)
        return m + torch.diag_embed(diag * (p["diag"] - 1))                # diagonal scaled by the gain

    @property
    def stacks_weights(self) -> bool:
        return True

    def append_state(self, x: Tensor) -> Params | None:
        """Sum s s^T (its upper triangle) and sum s over the patterns: the writing loss of a quadratic energy
        (E and ||grad_x E||^2, summed over patterns) depends on the patterns only through them."""
        s = _signed(x).flatten(1).double()
        m2 = s.T @ s
        return {"second_moment": m2[self.iu[0], self.iu[1]].float(), "first_moment": s.sum(0).float()}

    def patterns_from_state(self, state: Params, n: int) -> Tensor:
        """Y = 1 mu^T + H W^T with mu = sum s / n, W W^T = sum s s^T - n mu mu^T (its top n - 1 eigenpairs: the
        centred sums have rank n - 1 at most, and what float32 storage adds beyond that is rounding) and H an
        orthonormal basis of n - 1 vectors orthogonal to 1 in R^n: Y^T Y and Y^T 1 are the state's sums."""
        m2 = symmetric_from_triu(state["second_moment"].double(), self.iu, self.dim)
        mu = state["first_moment"].double() / n
        ev, vecs = torch.linalg.eigh(m2 - n * torch.outer(mu, mu))          # ascending
        k = min(n - 1, int((ev > 1e-6 * ev.abs().max().clamp_min(1e-30)).sum()))
        ev, vecs = ev[ev.numel() - k:], vecs[:, ev.numel() - k:]
        w = vecs * ev.clamp_min(0).sqrt()                                     # (D, k)
        basis = torch.eye(n, k + 1, dtype=torch.float64, device=mu.device)
        basis[:, 0] = 1.0
        q, _ = torch.linalg.qr(basis)                                         # (n, k + 1); q[:, 0] ~ 1
        y = mu[None, :] + q[:, 1:] @ w.T
        return ((y + 1) / 2).float().view(n, *self.input_shape)

    def _triu_grad(self, g: Tensor, gain: Tensor) -> Tensor:
        """The gradient in the triangle t of a gradient G in the matrix M' (D, D) it builds (`matrix`): M'_ij =
        M'_ji = t_ij off the diagonal and gain t_ii on it, so dL/dt_ij = G_ij + G_ji, dL/dt_ii = gain G_ii."""
        out = (g + g.T)[self.iu[0], self.iu[1]]
        on_diag = self.iu[0] == self.iu[1]              # the diagonal's places in the triangle, in order
        out[on_diag] = gain * torch.diagonal(g)
        return out

    def _write_step(self, p: Params, x: Tensor, cache: dict) -> dict:
        """What both write terms need at this step: the patterns' signs S (once per write) and R = S M' + b
        with M' the current matrix (once per step: `write_grad_norm` takes it from `write_grad`)."""
        if "s" not in cache:
            s = _signed(x).flatten(1)
            cache.update(s=s, scale=p["log_scale"].exp(), sb=s @ p["bias"])
        # a new step's triangle is a new tensor (`write` never updates it in place): its identity marks the step
        if cache.get("step_of") is not p["memory_triu"]:
            cache.update(step_of=p["memory_triu"], r=torch.addmm(p["bias"], cache["s"], self.matrix(p)))
        return cache

    def write_grad(self, p: Params, x: Tensor, assign: Tensor | None, cache: dict) -> tuple[Tensor, Params] | None:
        """E per pattern, scale (-s M' s / 2 - b s) = -scale (s R + s b) / 2 with R = S M' + b, and its sum's
        gradient in the triangle: G = -scale S^T S / 2 in M', the same at every step (E is linear in M')."""
        if assign is not None or p["memory_triu"].dim() != 1:
            return None
        c = self._write_step(p, x, cache)
        if "g_energy" not in c:
            c["g_energy"] = self._triu_grad(-0.5 * c["scale"] * (c["s"].T @ c["s"]), p["diag"])
        e = -0.5 * c["scale"] * ((c["s"] * c["r"]).sum(-1) + c["sb"])
        return e, {"memory_triu": c["g_energy"]}

    def write_grad_norm(self, p: Params, x: Tensor, cache: dict) -> tuple[Tensor, Params] | None:
        """||grad_x E||^2 = 4 scale^2 |R|^2 per pattern (grad_x E = -2 scale R) and its sum's gradient in the
        triangle: G = 8 scale^2 R^T S in M'."""
        if p["memory_triu"].dim() != 1:
            return None
        c = self._write_step(p, x, cache)
        s4 = 4 * c["scale"] ** 2
        return s4 * c["r"].pow(2).sum(-1), {"memory_triu": self._triu_grad(2 * s4 * (c["r"].T @ c["s"]), p["diag"])}

    @staticmethod
    def _times(s: Tensor, m: Tensor) -> Tensor:
        """s M for (B, D) rows and one (D, D) matrix or one matrix per row (B, D, D)."""
        return s @ m if m.dim() == 2 else torch.bmm(s.unsqueeze(1), m).squeeze(1)

    def energy(self, p: Params, x: Tensor) -> Tensor:
        s = _signed(x).flatten(1)                               # (B, D)
        e = -0.5 * (self._times(s, self.matrix(p)) * s).sum(-1) - s @ p["bias"]
        return e * p["log_scale"].exp()

    def fill_read_cache(self, p: Params, x: Tensor, cache: dict) -> bool:
        if "m2" not in cache:
            cache["m2"] = -2 * p["log_scale"].exp() * self.matrix(p)          # (D, D) or (B, D, D)
            cache["b2"] = -2 * p["log_scale"].exp() * p["bias"]
        return True

    def energy_grad(self, p: Params, x: Tensor, cache: dict) -> Tensor | None:
        """dE/dx = 2 scale (-M s - b), M symmetric: one matrix product per step."""
        self.fill_read_cache(p, x, cache)
        s = _signed(x).flatten(1)
        if cache["m2"].dim() == 3:
            return (self._times(s, cache["m2"]) + cache["b2"]).view_as(x)
        return torch.addmm(cache["b2"], s, cache["m2"]).view_as(x)

    def energy_cached(self, p: Params, x: Tensor, cache: dict) -> Tensor:
        """E(x) = scale (-s M s / 2 - b s) = (s m2 s / 2 + b2 s) / 2 from the gradient's cache (m2 = -2 scale M,
        b2 = -2 scale b): the matrix is not rebuilt from its triangle for the diagnostic energy."""
        if "m2" not in cache:
            return self.energy(p, x)
        s = _signed(x).flatten(1)
        return 0.5 * ((0.5 * self._times(s, cache["m2"]) + cache["b2"]) * s).sum(-1)
