"""Shared pieces of every energy network: the EnergyNet base class (energy(params, x) is a pure
function of an explicit parameter dict) and the layer helpers the families are written with.

Each network owns its parameters (initial values, names) as an nn.Module, but its energy is
computed by `energy(params, x)` from a dict, so that the write loop can substitute written
weights for the writable slice without touching the module (paper appendix A; MAML style).
Writable slices are separate parameters named `memory.*`; `memory_floats` counts them.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

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
    """The (n, n) symmetric matrix whose upper triangle (diagonal included) is t (n(n+1)/2,); with a
    leading batch dimension, (B, n(n+1)/2) -> (B, n, n)."""
    if t.dim() == 2:
        upper = t.new_zeros(t.shape[0], n, n)
        upper[:, iu[0], iu[1]] = t
        return upper + upper.transpose(1, 2) - torch.diag_embed(torch.diagonal(upper, dim1=1, dim2=2))
    upper = t.new_zeros(n, n).index_put((iu[0], iu[1]), t)
    return upper + upper.T - torch.diag(torch.diagonal(upper))


def window_sums(e: Tensor, w: int) -> Tensor:
    """e (..., H, W) -> (..., H-w+1, W-w+1): the sum over every w x w window (integral image: O(H W) per
    image whatever w, where a pooling kernel costs w^2 per window)."""
    c = F.pad(e.cumsum(-2).cumsum(-1), (1, 0, 1, 0))
    return c[..., w:, w:] - c[..., :-w, w:] - c[..., w:, :-w] + c[..., :-w, :-w]


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


def memo_on(owner: object, name: str, tensor: Tensor | tuple[Tensor, ...], compute: Callable[[], Any]) -> Any:
    """compute(), remembered on owner while `tensor` (or each of several) is the same live object with the same
    version, storage and dtype (a weak reference: a new tensor at a recycled address is never mistaken for the
    old one; a parameter converted in place by `module.to` keeps its object but not its storage)."""
    tensors = tensor if isinstance(tensor, tuple) else (tensor,)
    key = tuple((t._version, t.data_ptr(), t.dtype) for t in tensors)
    entry = getattr(owner, name, None)
    if entry is not None and all(r() is t for r, t in zip(entry[0], tensors, strict=True)) and entry[1] == key:
        return entry[2]
    value = compute()
    setattr(owner, name, (tuple(weakref.ref(t) for t in tensors), key, value))
    return value


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

    def energy_grad(self, p: Params, x: Tensor, cache: dict) -> Tensor | None:
        """grad_x E (B, *input_shape) in closed form, for serving reads (no graph to the parameters), where
        the family has one; None: the read uses autograd. `cache` lives for one read: what depends only on
        the parameters (a matrix built from its triangle, say) is computed at the first step and kept.
        Each family's form is tested equal to autograd (tests/model/test_fast_paths.py)."""
        return None

    def fill_read_cache(self, p: Params, x: Tensor, cache: dict) -> bool:
        """Fill a read's `cache` with what `energy_grad` and `energy_cached` compute once per read, without
        computing a gradient, and say whether they then run as a fixed sequence of tensor ops on x: no branch
        on x's values, no Python value read back from a tensor. Such a read can be compiled (model/compiled.py);
        False (the default): it runs eagerly."""
        return False

    @property
    def reads_known_pixels(self) -> bool:
        """True where `energy` takes `known=` (B, D) {0, 1}, the pixels a masked read keeps (the read's mask),
        and uses it: a read then tells the energy which pixels are unknown instead of leaving it to guess.
        The fast path passes it in the read's cache as "known"."""
        return False

    @property
    def stacks_weights(self) -> bool:
        """True where `energy_grad` and `energy` also take writable tensors with a leading batch dimension,
        one written memory per query (reads of several sessions batched in one call: memory.read_stacked)."""
        return False

    def write_grad(self, p: Params, x: Tensor, assign: Tensor | None, cache: dict) -> tuple[Tensor, Params] | None:
        """The energy term of the writing loss in closed form, for serving writes (no graph, no gradient-norm
        term): (`write_energy(p, x)` per pattern (N,), its sum's gradient in each writable tensor, by name),
        where the family has one; None: the write uses autograd. `cache` lives for one write: what depends on
        the patterns and the static parameters alone is computed at its first step. Tested equal to autograd
        (tests/model/test_fast_paths.py)."""
        return None

    @property
    def writes_in_closed_form(self) -> bool:
        """Whether `write_grad` gives this network's writes (a family whose closed form holds for some of its
        configurations says which)."""
        return type(self).write_grad is not EnergyNet.write_grad

    def write_grad_norm(self, p: Params, x: Tensor, cache: dict) -> tuple[Tensor, Params] | None:
        """The writing loss's gradient-norm term in closed form, beside `write_grad` (the same cache): (||grad_x
        E||^2 per pattern (N,), its sum's gradient in each writable tensor), where the family has one; None:
        a write with that term uses autograd. Tested equal to autograd (tests/model/test_fast_paths.py)."""
        return None

    def energy_cached(self, p: Params, x: Tensor, cache: dict) -> Tensor:
        """E(x) in a serving read that used `energy_grad` with this cache (families whose energy needs what
        the gradient computed once per read take it from there); by default `energy` itself."""
        return self.energy(p, x)

    @property
    def capacity(self) -> int | None:
        """Patterns a write can store apart (each in memory of its own); None where capacity is graded."""
        return None

    def static_features(self, p: Params, x: Tensor) -> Any:
        """What E computes from x with the static (never written) parameters alone, for families whose
        writable slice sits after a static trunk; None otherwise. A write's patterns do not change over
        its T steps, so `write` computes these once and each step runs only `energy_from_features`: the
        same energy and the same gradients (to the trunk too), without T - 1 passes through the trunk."""
        return None

    def energy_from_features(self, p: Params, feats: Any) -> Tensor:
        """E from `static_features` of the same x: energy(p, x) == energy_from_features(p, static_features(p, x))."""
        raise NotImplementedError

    @property
    def scores_familiarity_itself(self) -> bool:
        """Whether the family has its own `familiarity_score` (then a calibrated threshold is on that score's
        scale, not on the query-recall agreement that ranks top-k candidates and samples)."""
        return type(self).familiarity_score is not EnergyNet.familiarity_score

    @property
    def write_energy_is_energy(self) -> bool:
        """Whether `write_energy` is E itself (so that a write may run on `static_features`)."""
        return type(self).write_energy is EnergyNet.write_energy

    def write_energy(self, p: Params, x: Tensor) -> Tensor:
        """The energy term of the writing loss for the batch x being written (N, *input_shape) -> (N,).
        The paper's: E itself. An energy may instead give a term that says where each pattern is stored
        (`SubspaceSlotEnergy` with assign="indexed": its attention part bounds E's from above)."""
        return self.energy(p, x)

    def familiarity_views(self, p: Params, q: Tensor, x: Tensor) -> tuple[Tensor, Tensor] | None:
        """Two images whose agreement says whether query q was stored, given the recall x (model/
        familiarity.py: memory_familiarity); None: compare q and x themselves."""
        return None

    def familiarity_score(self, p: Params, q: Tensor, known: Tensor | None = None,
                          recall: Tensor | None = None) -> Tensor | None:
        """(B,) in [0, 1]: whether the queries q were stored, from the written memory directly, for families
        that can say so better than by comparing a query with its recall; known: the pixels a masked read
        keeps (only they count); recall: what the read restored from q, for families whose score uses it;
        None: compare (familiarity_views, or the known pixels of query and recall)."""
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

    def append_state(self, x: Tensor) -> Params | None:
        """Statistics of the patterns x (N, *input_shape) that, summed over writes, make an append exact
        (kept beside the written weights; see `patterns_from_state`); None where the family has none."""
        return None

    def patterns_from_state(self, state: Params, n: int) -> Tensor:
        """n patterns whose `append_state` is `state`: writing them writes what writing the real ones would."""
        raise NotImplementedError

    @property
    def append_state_grows(self) -> bool:
        """False: the append state is a sum over patterns (fixed shapes; two writes' states add). True: it is
        one row per pattern along its first axis (two writes' states are concatenated), for energies whose
        write depends on the patterns through no smaller statistic."""
        return False

    def combine_append_states(self, old: Params, new: Params) -> Params:
        """The append state of the patterns of two writes, old's first."""
        if self.append_state_grows:
            return {n: _cat_rows(old[n], new[n]) for n in new}
        return {n: old[n].to(new[n]) + new[n] for n in new}

    @property
    def writes_additively(self) -> bool:
        """True where the write's gradient in the writable slice does not depend on that slice (a Hebbian
        write: each step adds a function of the patterns), so further write steps on new patterns write what
        one write of all would, and an append needs no state. Up to the writing loss's pull toward theta_bar
        (beta |theta - theta_bar|^2, zero at the first step from theta_bar; tests/model/test_span_memory.py
        checks the two writes agree)."""
        return False

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


_GAIN = 30.0


def _cat_rows(a: Tensor, b: Tensor) -> Tensor:
    """Rows of two states, in a's dtype when both have it (packed uint8 bits stay packed), else float32."""
    if a.dtype != b.dtype:
        a, b = a.float(), b.float()
    return torch.cat([a, b.to(a.device)])


def inv_softplus(y: float) -> float:
    """x with softplus(x) = y: how positive quantities are stored unconstrained."""
    return float(torch.log(torch.expm1(torch.tensor(float(y)))))
