"""The EBMM write and read loops (paper section 3) as pure functions of (parameters, inputs).

`write` runs T gradient steps on the mean writing loss
    W(x, theta) = E(x; theta) + alpha ||grad_x E||^2 + beta ||theta - theta_bar||^2
over the writable slice only, with a learned softplus rate per writable tensor and per loss term (E here
is the energy network's `write_energy`: E itself except for the indexed slot memories, whose term says
which slots each pattern goes to).
`read` runs K projected Nesterov steps on the query with learned non-increasing step sizes and
momentum, returning every iterate and its energy. With `create_graph=True` (meta-training) the
graph runs through both loops; without it (serving) none is kept.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig
from .energy import ARCHITECTURES, EnergyNet, Params, inv_softplus
from .energy.base import memo_on

TERMS = ("energy", "grad_norm", "prior")


def _logit(p: float) -> float:
    return float(torch.logit(torch.tensor(float(p))))


class LoopParams(nn.Module):
    """Meta-learned scalars of both loops, stored unconstrained and mapped to their ranges."""

    def __init__(self, n_writable: int, cfg: ModelConfig):
        super().__init__()
        lc = cfg.loop
        k = lc.read_steps
        self.write_rate = nn.Parameter(torch.full((n_writable, len(TERMS)), inv_softplus(lc.write_rate_init)))
        self.alpha = nn.Parameter(torch.tensor(inv_softplus(lc.alpha_init)))
        self.beta = nn.Parameter(torch.tensor(inv_softplus(lc.beta_init)))
        self.read_rate = nn.Parameter(torch.tensor(inv_softplus(lc.read_rate_init)))
        self.read_decay = nn.Parameter(torch.full((max(k - 1, 0),), _logit(lc.read_decay_init)))
        self.momentum = nn.Parameter(torch.tensor(_logit(lc.momentum_init)))
        self.momentum_decay = nn.Parameter(torch.full((max(k - 1, 0),), _logit(0.99)))


def step_sizes(p: Params, steps: int) -> tuple[Tensor, Tensor]:
    """gamma_k = gamma_{k-1} sigmoid(eta_k), psi likewise; past the learned K the last value repeats."""
    gamma = F.softplus(p["loop.read_rate"]) * torch.cat(
        [p["loop.read_rate"].new_ones(1), torch.cumprod(torch.sigmoid(p["loop.read_decay"]), 0)])
    psi = torch.sigmoid(p["loop.momentum"]) * torch.cat(
        [p["loop.momentum"].new_ones(1), torch.cumprod(torch.sigmoid(p["loop.momentum_decay"]), 0)])
    if steps > gamma.shape[0]:
        gamma = torch.cat([gamma, gamma[-1:].expand(steps - gamma.shape[0])])
        psi = torch.cat([psi, psi[-1:].expand(steps - psi.shape[0])])
    return gamma[:steps], psi[:steps]                             # (K,), (K,)


class EBMM(nn.Module):
    """An energy network plus the learned rules of its two loops; `cfg` says which."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.energy: EnergyNet = ARCHITECTURES[cfg.arch](cfg.input_shape, **cfg.arch_kwargs)
        self.loop = LoopParams(len(self.energy.writable), cfg)

    @property
    def writable(self) -> tuple[str, ...]:
        return tuple("energy." + n for n in self.energy.writable)

    @property
    def memory_floats(self) -> int:
        return self.energy.memory_floats

    @property
    def capacity(self) -> int | None:
        return self.energy.capacity

    def params(self, detach: bool = False) -> Params:
        """All parameters by name; detached copies for serving, the live ones for meta-training."""
        return {n: (t.detach() if detach else t) for n, t in self.named_parameters()}

    def energy_fn(self, p: Params, x: Tensor, known: Tensor | None = None) -> Tensor:
        """E(x; p) for x (B, *input_shape) -> (B,), with `p` named as in `params()`. known (B, D): a masked
        read's known pixels, for energies that use them (`EnergyNet.reads_known_pixels`), else ignored."""
        if known is not None and self.energy.reads_known_pixels:
            return self.energy.energy(self._energy_params(p), x, known=known)
        return self.energy.energy(self._energy_params(p), x)

    def write_energy_fn(self, p: Params, x: Tensor, assign: Tensor | None = None) -> Tensor:
        """The energy term of the writing loss for the batch being written (the paper's: E itself).
        assign (N, S): where each pattern goes, for energies that say so (slot memories appending)."""
        ep = self._energy_params(p)
        return self.energy.write_energy(ep, x) if assign is None else self.energy.write_energy(ep, x, assign)

    def exact_weights(self, p: Params, x: Tensor) -> Params | None:
        """The writable slice set from the patterns with no write (see EnergyNet.exact_memory), or None."""
        w = self.energy.exact_memory(self._energy_params(p), x)
        return None if w is None else {"energy." + n: t for n, t in w.items()}

    @staticmethod
    def _energy_params(p: Params) -> Params:
        return {n[7:]: t for n, t in p.items() if n.startswith("energy.")}


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------

@dataclass
class WriteResult:
    weights: Params            # the written writable slice, by parameter name
    losses: list[float]        # writing loss before each step, reduced over patterns (diagnostic, detached)


def _grad_x(model: EBMM, p: Params, x: Tensor, assign: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Energy (B,) and grad_x E at a fresh input leaf, with a graph back to the parameters."""
    x = x.detach().requires_grad_(True)            # fresh leaf: never differentiate the write history
    e = model.write_energy_fn(p, x, assign)
    (g,) = torch.autograd.grad(e.sum(), x, create_graph=True)
    return e, g


def writing_terms(model: EBMM, p: Params, x: Tensor, use_grad_norm: bool,
                  assign: Tensor | None = None, feats: Any = None) -> tuple[Tensor, Tensor | None]:
    """E and ||grad_x E||^2 (or None), reduced over the patterns (E: the network's `write_energy`). The
    third term of the writing loss, beta ||theta - theta_bar||^2, has the gradient 2 beta (theta -
    theta_bar): `write` applies it directly.

    The paper averages over the N patterns. For a quadratic energy the grad-norm term's curvature in
    the weights then scales as D/N, so one learned rate that is stable at N = 96 diverges at N = 16;
    `write_reduction="sum"` makes that curvature independent of N (results/NOTES.md).
    """
    reduce = torch.sum if model.cfg.loop.write_reduction == "sum" else torch.mean
    if use_grad_norm:
        e, g = _grad_x(model, p, x, assign)
        gn = reduce(g.pow(2).flatten(1).sum(1))
    elif feats is not None:               # x's static features, computed once per write (see `write`)
        e, gn = model.energy.energy_from_features(model._energy_params(p), feats), None
    else:
        e, gn = model.write_energy_fn(p, x, assign), None
    return reduce(e), gn


def write(model: EBMM, p: Params, x: Tensor, create_graph: bool = False,
          steps: int | None = None, start: Params | None = None, assign: Tensor | None = None,
          fast: bool = True) -> WriteResult:
    """Store patterns x (N, *input_shape): T steps on the writing loss over the writable slice.

    start: written weights to continue from (appending) instead of theta_bar; the prior term still
    pulls towards theta_bar. assign: see `EBMM.write_energy_fn`. fast: use the family's closed-form gradients
    of the writing loss (`closed_form_write`) when the write needs no graph (equal to autograd, tested)."""
    steps = model.cfg.loop.write_steps if steps is None else steps
    names = model.writable
    theta_bar = {n: p[n] for n in names}
    rates = F.softplus(p["loop.write_rate"])                    # (n_writable, 3)
    alpha, beta = F.softplus(p["loop.alpha"]), F.softplus(p["loop.beta"])
    use_gn = model.cfg.loop.grad_norm_term
    first = theta_bar if start is None else {n: start[n].to(theta_bar[n]) for n in names}
    if fast and not create_graph and closed_form_write(model):
        closed = _closed_form_write(model, p, x, steps, theta_bar, first, rates, alpha, beta, assign)
        if closed is not None:
            return closed
    w = {n: (t if create_graph and t.requires_grad else t.detach().requires_grad_(True))
         for n, t in first.items()}
    losses: list[float] = []
    with torch.enable_grad():
        # the patterns do not change over the write: a static trunk's features are computed once (exact
        # where the energy term is E itself and the gradient-norm term, which needs grad_x E, is off)
        feats = (model.energy.static_features(model._energy_params(p), x)
                 if not use_gn and assign is None and model.energy.write_energy_is_energy else None)
        for _ in range(steps):
            q = {**p, **w}
            e, gn = writing_terms(model, q, x, use_gn, assign, feats)
            ws = list(w.values())
            ge = torch.autograd.grad(e, ws, create_graph=create_graph, retain_graph=use_gn or create_graph)
            gg = (torch.autograd.grad(gn, ws, create_graph=create_graph) if use_gn
                  else [torch.zeros_like(t) for t in ws])
            losses.append(float(((e + alpha * gn) if use_gn else e).detach()))
            new = {}
            for i, n in enumerate(names):
                prior_grad = 2 * (w[n] - theta_bar[n])
                delta = rates[i, 0] * ge[i] + rates[i, 1] * alpha * gg[i] + rates[i, 2] * beta * prior_grad
                new[n] = w[n] - delta
                if not create_graph:
                    new[n] = new[n].detach().requires_grad_(True)
            w = new
    if not create_graph:
        w = {n: t.detach() for n, t in w.items()}
    return WriteResult(w, losses)


def closed_form_write(model: EBMM) -> bool:
    """Whether the model's serving writes run without autograd: its family gives the writing loss's energy term
    in closed form (EnergyNet.write_grad) and, where the loop has it, the gradient-norm term too."""
    return model.energy.writes_in_closed_form and (
        not model.cfg.loop.grad_norm_term or type(model.energy).write_grad_norm is not EnergyNet.write_grad_norm)


@torch.no_grad()
def _closed_form_write(model: EBMM, p: Params, x: Tensor, steps: int, theta_bar: Params, first: Params,
                       rates: Tensor, alpha: Tensor, beta: Tensor, assign: Tensor | None) -> WriteResult | None:
    """`write`'s steps with the writing loss's gradients in closed form (EnergyNet.write_grad, and
    write_grad_norm where the loop has that term): no graph, no autograd pass; None where the family has no
    closed form for this write (autograd then)."""
    names, use_gn = model.writable, model.cfg.loop.grad_norm_term
    per = x.shape[0] if model.cfg.loop.write_reduction != "sum" else 1
    w = {n: t.detach() for n, t in first.items()}
    cache: dict = {}
    losses: list[float] = []
    for _ in range(steps):
        ep = model._energy_params({**p, **w})
        got = model.energy.write_grad(ep, x, assign, cache)
        norm = model.energy.write_grad_norm(ep, x, cache) if use_gn and got is not None else None
        if got is None or (use_gn and norm is None):
            return None
        e, g = got
        gn, gg = norm if norm is not None else (None, None)
        losses.append(float(e.sum() / per + (alpha * gn.sum() / per if gn is not None else 0.0)))
        new = {}
        for i, n in enumerate(names):
            t = n[len("energy."):]
            delta = rates[i, 0] * g[t] / per + rates[i, 2] * beta * 2 * (w[n] - theta_bar[n])
            if gg is not None:
                delta = delta + rates[i, 1] * alpha * gg[t] / per
            new[n] = w[n] - delta
        w = new
    return WriteResult(w, losses)


def append(model: EBMM, p: Params, weights: Params, x: Tensor, n_old: int, state: Params | None = None
           ) -> WriteResult:
    """Store more patterns x (M, *input_shape) in weights that already hold n_old: the energy's own
    rule where it has one (slot memories re-deal their slots as if all n_old + M had been written at
    once; energies with an `append_state`, given the old patterns' state, write from theta_bar patterns
    with the state of all n_old + M, which writes what writing them all at once would), else T further
    write steps from the written weights on the new patterns."""
    if state is not None and model.energy.append_state(x[:1]) is not None:
        total = model.energy.combine_append_states(state, model.energy.append_state(x))
        return write(model, p, model.energy.patterns_from_state(total, n_old + x.shape[0]).to(x))
    ep = model._energy_params({**p, **weights})
    plan = model.energy.append_plan(ep, n_old, x.shape[0])
    if plan is None:
        return write(model, p, x, start=weights)
    start = {"energy." + n: t for n, t in plan["start"].items()}
    res = write(model, p, x, start={**weights, **start}, assign=plan["assign"])
    done = model.energy.finish_append({n[7:]: t for n, t in res.weights.items()}, plan)
    return WriteResult({"energy." + n: t for n, t in done.items()}, res.losses)


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------

@dataclass
class ReadResult:
    iterates: Tensor    # (K+1, B, *input_shape): the query, then every read iterate
    energies: Tensor    # (K+1, B): the energy at each iterate (no graph: a diagnostic)


def _known_pixels(keep: Tensor | None, queries: Tensor) -> Tensor | None:
    """A read's mask as the energy sees it (`EnergyNet.reads_known_pixels`): (B, D) in {0, 1}, one row per
    query (a mask of batch size 1 is every query's), a pixel known where the mask is at least 0.5."""
    return None if keep is None else (keep.expand_as(queries).flatten(1) >= 0.5).to(queries.dtype)


def _bound(model: EBMM, ep: Params, cache: dict) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """The energy's closed-form grad_x (EnergyNet.energy_grad) and its energy, bound to `_fast_parts`."""
    return (lambda x: model.energy.energy_grad(ep, x, cache)), (lambda x: model.energy.energy_cached(ep, x, cache))


def _fast_parts(model: EBMM, q: Params, create_graph: bool, known: Tensor | None = None) -> tuple[Params, dict] | None:
    """The energy's detached parameters and one read's cache, for its closed-form gradient (`_bound`), when the
    read needs no graph to them (serving, evaluation) and the family has one; else None (autograd). known: the
    masked read's known pixels (B, D), in the cache."""
    if create_graph or type(model.energy).energy_grad is EnergyNet.energy_grad:
        return None
    ep = {n: t.detach() for n, t in model._energy_params(q).items()}
    cache: dict = {} if known is None or not model.energy.reads_known_pixels else {"known": known}
    return ep, cache


def _autograd_steps(model: EBMM, q: Params, queries: Tensor, keep: Tensor | None, gamma: Tensor, psi: Tensor,
                    create_graph: bool, temperature: float, generator: torch.Generator | None) -> list[Tensor]:
    steps = gamma.shape[0]
    known = _known_pixels(keep, queries)
    x0 = queries
    x, v = queries, torch.zeros_like(queries)
    iterates = [x]
    with torch.enable_grad():
        for k in range(steps):
            xh = (x + psi[k] * v).clamp(0, 1)                       # Nesterov look-ahead
            if not create_graph:
                xh = xh.detach()
            if not xh.requires_grad:
                xh = xh.requires_grad_(True)
            (g,) = torch.autograd.grad(model.energy_fn(q, xh, known).sum(), xh, create_graph=create_graph)
            v = psi[k] * v - gamma[k] * g
            t_k = temperature * (1 - k / max(steps - 1, 1))             # annealed to 0 at the last step
            if t_k > 0:
                noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
                v = v + (2 * gamma[k] * t_k) ** 0.5 * noise
            x = (x + v).clamp(0, 1)
            if keep is not None:                # known pixels stay put, and so does their velocity,
                x = keep * x0 + (1 - keep) * x  # so that the look-ahead never moves them either
                v = (1 - keep) * v
            if not create_graph:
                x, v = x.detach(), v.detach()
            iterates.append(x)
    return iterates


@torch.no_grad()
def _fast_steps(grad: Callable[[Tensor], Tensor], queries: Tensor, keep: Tensor | None, gamma: list[float],
                psi: list[float], temperature: float, generator: torch.Generator | None) -> list[Tensor]:
    """The same steps as `_autograd_steps` with a closed-form gradient and Python-float step sizes: no
    graph, fewer and in-place element-wise ops (nothing returned is written to in place)."""
    steps = len(gamma)
    x, v = queries, torch.zeros_like(queries)
    drop = None if keep is None else 1 - keep
    iterates = [x]
    for k in range(steps):
        xh = torch.add(x, v, alpha=psi[k]).clamp_(0, 1)
        v = torch.add(v.mul_(psi[k]), grad(xh), alpha=-gamma[k])
        t_k = temperature * (1 - k / max(steps - 1, 1))
        if t_k > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            v.add_(noise, alpha=(2 * gamma[k] * t_k) ** 0.5)
        x = torch.add(x, v).clamp_(0, 1)
        if drop is not None:
            x = torch.addcmul(keep * queries, drop, x)
            v.mul_(drop)
        iterates.append(x)
    return iterates


def fast_read(energy: torch.nn.Module, ep: Params, cache: dict, queries: Tensor, keep: Tensor | None,
              gamma: list[float], psi: list[float], last: bool, temperature: float = 0.0,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """`read` with the closed-form gradient on one written memory for every query (`_fast_parts`' ep and
    cache): the trajectory (K+1, B, *S) and the energies of its iterates ((K+1 or 1), B; `last`: the result's
    only). model/compiled.py compiles this very function."""
    iterates = _fast_steps(lambda x: energy.energy_grad(ep, x, cache), queries, keep, gamma, psi, temperature,
                           generator)
    traj = torch.stack(iterates)
    with torch.no_grad():
        seen = (traj[-1:] if last else traj).detach()
        return traj, energy.energy_cached(ep, seen.flatten(0, 1), cache).view(seen.shape[:2])


_STEP_TENSORS = ("loop.read_rate", "loop.read_decay", "loop.momentum", "loop.momentum_decay")


def _step_floats(model: EBMM, p: Params, steps: int) -> tuple[list[float], list[float]]:
    """`step_sizes` as Python floats for the fast path, remembered on the model per number of steps while the
    loop's tensors in p are the same, unchanged objects (a serving read's are): a dozen small ops per read."""
    memo = memo_on(model, "_step_floats_memo", tuple(p[n] for n in _STEP_TENSORS), dict)
    if steps not in memo:
        gamma, psi = step_sizes(p, steps)
        memo[steps] = (gamma.tolist(), psi.tolist())
    return memo[steps]


def read(model: EBMM, p: Params, weights: Params, queries: Tensor, mask: Tensor | None = None,
         steps: int | None = None, create_graph: bool = False, temperature: float = 0.0,
         generator: torch.Generator | None = None, energies: str = "all", fast: bool = True,
         stacked: bool = False) -> ReadResult:
    """K projected Nesterov steps from queries (B, *input_shape) on E(.; p with weights written).

    mask (same shape, bool or {0,1}): pixels known to be right; they are kept at the query's value
    (inpainting). Iterates stay in [0, 1] by clipping, as in the paper.
    temperature T > 0 makes the read stochastic (annealed Langevin): step k adds sqrt(2 gamma_k T_k) xi,
    xi ~ N(0, I), to the velocity, T_k falling linearly from T to 0 at the last step.
    energies: "all" (the energy of every iterate, (K+1, B)) or "last" (of the result only, (1, B)): a
    diagnostic pass over the iterates, which costs about as much as the read itself for small batches.
    fast: use the family's closed-form grad_x E when the read needs no graph (equal to autograd, tested).
    stacked: the writable tensors carry one written memory per query (see `read_stacked`).
    """
    if energies not in ("all", "last"):
        raise ValueError(f"energies={energies!r}: expected 'all' or 'last'")
    steps = model.cfg.loop.read_steps if steps is None else steps
    q = {**p, **weights}
    keep = None if mask is None else mask.to(queries.dtype)
    known = _known_pixels(keep, queries)
    # one written memory and no mask the energy takes: every iterate's energy is one call on all of them
    one_batch = not stacked and not (known is not None and model.energy.reads_known_pixels)
    parts = _fast_parts(model, q, create_graph, known) if fast else None
    if parts is not None:
        gamma_f, psi_f = _step_floats(model, p, steps)
        if one_batch:
            compiled = model.__dict__.get("compiled_reads")          # model/compiled.py: enabled(model)
            out = (compiled.read(*parts, queries, keep, gamma_f, psi_f, energies)
                   if compiled is not None and temperature == 0 and compiled.applies(queries.shape[0]) else None)
            if out is None:
                out = fast_read(model.energy, *parts, queries, keep, gamma_f, psi_f, energies == "last",
                                temperature, generator)
            return ReadResult(*out)
        grad_fn, energy_fn = _bound(model, *parts)
        iterates = _fast_steps(grad_fn, queries, keep, gamma_f, psi_f, temperature, generator)
    else:
        gamma, psi = step_sizes(p, steps)
        iterates = _autograd_steps(model, q, queries, keep, gamma, psi, create_graph, temperature, generator)
        energy_fn = lambda t: model.energy_fn(q, t, known)  # noqa: E731
    traj = torch.stack(iterates)                                    # (K+1, B, *S)
    with torch.no_grad():                   # diagnostics: the energy of the returned iterates
        seen = (traj if energies == "all" else traj[-1:]).detach()
        if one_batch:
            energies_t = energy_fn(seen.flatten(0, 1)).view(seen.shape[:2])    # (K+1 or 1, B)
        else:               # one memory (or one mask) per query: each iterate is a batch of its own
            energies_t = torch.stack([energy_fn(t) for t in seen])
    return ReadResult(traj, energies_t)


def stack_weights(model: EBMM, weights: list[Params], counts: list[int], device: torch.device) -> Params:
    """Written memories weights[i] for counts[i] queries each -> one memory per query, (sum counts, *shape),
    for energies that take them (`EnergyNet.stacks_weights`)."""
    owner = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts)).to(device)
    return {n: torch.stack([w[n] for w in weights])[owner] for n in model.writable}


def read_stacked(model: EBMM, p: Params, weights: list[Params], queries: list[Tensor], steps: int | None = None,
                 energies: str = "all") -> list[ReadResult]:
    """Reads of several written memories in one batched call: queries[i] (B_i, *input_shape) on weights[i].
    Families whose energy takes one written memory per query (`EnergyNet.stacks_weights`) stack them and
    run one read of all sum B_i queries; others read each in turn. Equal to separate `read` calls (tested)."""
    if len(weights) != len(queries):
        raise ValueError(f"{len(weights)} written memories for {len(queries)} query batches")
    if not model.energy.stacks_weights or len(queries) == 1:
        return [read(model, p, w, q, steps=steps, energies=energies) for w, q in zip(weights, queries, strict=True)]
    _, _, res = read_joint(model, p, weights, queries, steps, energies)
    counts = [q.shape[0] for q in queries]
    its, ens = res.iterates.split(counts, dim=1), res.energies.split(counts, dim=1)
    return [ReadResult(i, e) for i, e in zip(its, ens, strict=True)]


def read_joint(model: EBMM, p: Params, weights: list[Params], queries: list[Tensor], steps: int | None = None,
               energies: str = "all") -> tuple[Params, Tensor, ReadResult]:
    """`read_stacked` as one read, for energies that stack written memories: (the memories stacked one per
    query, all queries, the read of all of them), for callers that go on with the same stacked memories."""
    counts = [q.shape[0] for q in queries]
    stacked = stack_weights(model, weights, counts, queries[0].device)
    x = torch.cat(queries)
    return stacked, x, read(model, p, stacked, x, steps=steps, energies=energies, stacked=True)
