"""Closed-form grad_x E (EnergyNet.energy_grad) equals autograd's for every family that has one, and a
serving read with it equals the autograd read, on random parameters and on the shipped checkpoints."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.energy import GatedRNNEnergy, QuadraticEnergy, SubspaceSlotEnergy, SubspaceSpanEnergy
from model.memory import read, write

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["binary128", "binary128-rnn", "characters32", "characters32-4k", "photos32", "photos32-span8k",
           "photos32-span16k"]


def randomised(net: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The net's parameters, each moved off its initial value (zero matrices and biases make the test weak)."""
    g = torch.Generator().manual_seed(seed)
    p = {}
    for n, t in net.named_parameters():
        p[n] = (t.detach() + 0.3 * torch.randn(t.shape, generator=g) * (t.detach().abs().mean() + 0.1)).double()
    return p


def autograd_grad(net: torch.nn.Module, p: dict, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net.energy(p, x).sum(), x)
    return g


FAMILIES = {
    "gated-rnn": lambda: GatedRNNEnergy((40,), hidden=24, memory=7, hops=3),
    "quadratic": lambda: QuadraticEnergy((40,)),
    "slots-indexed": lambda: SubspaceSlotEnergy((1, 8, 8), rank=12, slots=10, assign="indexed"),
    "slots-shared": lambda: SubspaceSlotEnergy((1, 8, 8), rank=12, slots=10, assign="shared"),
    "slots-skewed": lambda: SubspaceSlotEnergy((1, 8, 8), rank=12, slots=10, assign="indexed"),
    "span": lambda: SubspaceSpanEnergy((1, 8, 8), rank=12, window=4),
}


@pytest.mark.parametrize("rows", [1, 7])      # one query multiplies by a view of the basis, more by a copy
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_closed_form_gradient_equals_autograd(family: str, rows: int) -> None:
    torch.manual_seed(0)
    net = FAMILIES[family]().double()
    if hasattr(net, "data_init"):
        net.data_init(torch.rand(64, *net.input_shape))
        net.double()
    if family.startswith("slots"):      # orthonormal rows to float64 precision (the shortcut's case), or not
        with torch.no_grad():
            u = torch.linalg.qr(net.basis.T)[0].T
            net.basis.copy_(u + 0.05 * torch.randn_like(u) if family == "slots-skewed" else u)
    p = randomised(net, 1)
    if family.startswith("slots"):      # a large beta makes attention one-hot and hides the kbar terms
        p["log_beta"] = torch.tensor(-1.0 / 30, dtype=torch.float64)
        p["quart_raw"] = torch.tensor(0.5 / 30, dtype=torch.float64)
    if family == "span":                # a written memory: M the correlation of a few codes
        p["memory_triu"] = net.exact_memory(p, torch.rand(5, *net.input_shape, dtype=torch.float64))["memory_triu"]
    x = torch.rand(rows, *net.input_shape, dtype=torch.float64)
    cache: dict = {}
    fast = net.energy_grad(p, x, cache)
    slow = autograd_grad(net, p, x)
    assert fast.shape == x.shape
    assert torch.allclose(fast, slow, rtol=1e-9, atol=1e-9 * slow.abs().max()), (fast - slow).abs().max()
    # the diagnostic energy from the gradient's cache is the energy itself
    e = net.energy(p, x)
    assert torch.allclose(net.energy_cached(p, x, cache), e, rtol=1e-9, atol=1e-9 * e.abs().max())


@pytest.mark.parametrize("family", ["gated-rnn", "quadratic"])
def test_closed_form_gradient_with_one_written_memory_per_query_equals_autograd(family: str) -> None:
    """Stacked memories (a batched read of several sessions): each query's gradient is its own memory's."""
    torch.manual_seed(3)
    net = FAMILIES[family]().double()
    x = torch.rand(4, *net.input_shape, dtype=torch.float64)
    per_query = [randomised(net, seed) for seed in range(4)]
    p = {**per_query[0], **{n: torch.stack([q[n] for q in per_query]) for n in net.writable}}
    cache: dict = {}
    fast = net.energy_grad(p, x, cache)
    cached = net.energy_cached(p, x, cache)
    for i, q in enumerate(per_query):
        own = {**p, **{n: q[n] for n in net.writable}}
        slow = autograd_grad(net, own, x[i:i + 1])
        assert torch.allclose(fast[i:i + 1], slow, rtol=1e-9, atol=1e-9 * slow.abs().max())
        assert torch.allclose(cached[i:i + 1], net.energy(own, x[i:i + 1]), rtol=1e-9, atol=1e-9)


def test_families_without_a_closed_form_fall_back_to_autograd() -> None:
    from model.energy import ResNetFCEnergy
    net = ResNetFCEnergy((1, 8, 8), memory=4, channels=(4,), embed=8, hidden=8, head=8, hops=1)
    assert net.energy_grad(dict(net.named_parameters()), torch.rand(2, 1, 8, 8), {}) is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", SHIPPED)
def test_fast_read_equals_the_autograd_read_on_shipped_checkpoints(name: str, dtype: torch.dtype) -> None:
    """In float64 the two reads agree to 1e-5 (in practice ~1e-12: the same maths); in float32, as served,
    to 2e-4 (the sums run in another order, and five steps with clipping carry the rounding on), and their
    energies, taken at iterates that differ by that much, to 5e-4 of their size (the closed-form write, whose
    weights differ from autograd's by rounding, moved one of characters32-4k's past 2e-4)."""
    tol = 1e-5 if dtype == torch.float64 else 2e-4
    etol = 1e-5 if dtype == torch.float64 else 5e-4
    ckpt = load_checkpoint(REPO / "checkpoints" / name)
    model = ckpt.model.to(dtype)
    p = model.params(detach=True)
    torch.manual_seed(0)
    shape = model.cfg.input_shape
    patterns = (torch.rand(16, *shape) > 0.5) if len(shape) == 1 else torch.rand(16, *shape)
    patterns = patterns.to(dtype)
    w = write(model, p, patterns).weights
    queries = patterns.clone()
    if len(shape) == 1:
        queries[:, :20] = 1 - queries[:, :20]
    else:
        queries[..., 8:24, 8:24] = 0.0
    fast = read(model, p, w, queries, fast=True)
    slow = read(model, p, w, queries, fast=False)
    assert torch.allclose(fast.iterates, slow.iterates, atol=tol), (fast.iterates - slow.iterates).abs().max()
    assert torch.allclose(fast.energies, slow.energies, rtol=etol, atol=tol)
    mask = torch.ones_like(queries, dtype=torch.bool)
    mask[..., :4] = False
    fm, sm = read(model, p, w, queries, mask, fast=True), read(model, p, w, queries, mask, fast=False)
    assert torch.allclose(fm.iterates, sm.iterates, atol=tol)
    one_fast, one_slow = read(model, p, w, queries[:1], fast=True), read(model, p, w, queries[:1], fast=False)
    assert torch.allclose(one_fast.iterates, one_slow.iterates, atol=tol)     # a one-query read's own path
    assert torch.allclose(one_fast.iterates[-1], fast.iterates[-1, :1], atol=tol)
    last = read(model, p, w, queries, energies="last")
    assert last.energies.shape == (1, 16)
    assert torch.allclose(last.energies[0], fast.energies[-1], rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["binary128", "characters32", "photos32", "binary128-rnn"])
def test_reads_of_several_sessions_in_one_call_equal_separate_reads(name: str) -> None:
    from model.memory import read_stacked
    ckpt = load_checkpoint(REPO / "checkpoints" / name)
    model, p = ckpt.model, ckpt.model.params(detach=True)
    torch.manual_seed(1)
    shape = model.cfg.input_shape
    sessions, queries = [], []
    for n, b in ((16, 1), (5, 3), (64, 2)):                     # different loads, different query counts
        x = (torch.rand(n, *shape) > 0.5).float() if len(shape) == 1 else torch.rand(n, *shape)
        sessions.append(write(model, p, x).weights)
        q = x[:b].clone()
        q.view(b, -1)[:, :40] = 1 - q.view(b, -1)[:, :40]
        queries.append(q)
    together = read_stacked(model, p, sessions, queries)
    for w, q, r in zip(sessions, queries, together, strict=True):
        alone = read(model, p, w, q)
        assert r.iterates.shape == alone.iterates.shape
        assert torch.allclose(r.iterates, alone.iterates, atol=2e-4), (r.iterates - alone.iterates).abs().max()
        assert torch.allclose(r.energies, alone.energies, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["binary128", "binary128-rnn", "characters32", "photos32-span8k"])
def test_reads_and_familiarities_of_several_sessions_in_one_call_equal_separate_calls(name: str) -> None:
    """A batched read (service/batching.py) reads every session's queries and scores them in one call, with
    the sessions' memories stacked once; each query's answer must be what its own session alone gives."""
    from model.serving import Memory
    m = Memory(load_checkpoint(REPO / "checkpoints" / name))
    torch.manual_seed(2)
    shape = m.input_shape
    weights, queries = [], []
    for n, b in ((16, 1), (5, 3), (64, 2)):
        x = (torch.rand(n, *shape) > 0.5).float() if len(shape) == 1 else torch.rand(n, *shape)
        weights.append(m.write(x).weights)
        q = x[:b].clone()
        q.view(b, -1)[:, :40] = 1 - q.view(b, -1)[:, :40]
        queries.append(q)
    together = m.read_many(weights, queries, energies="last")
    for w, q, (r, fam) in zip(weights, queries, together, strict=True):
        alone = m.read(w, q, energies="last")
        torch.testing.assert_close(r.iterates, alone.iterates, atol=2e-4, rtol=1e-4)
        torch.testing.assert_close(fam, m.familiarity(w, q, alone.iterates[-1]), atol=1e-4, rtol=1e-4)
    # the slot memory's familiarity looks at each session's own slots: another session's give another answer
    if name == "characters32":
        r, fam = together[1]
        assert not torch.allclose(fam, m.familiarity(weights[0], queries[1], r.iterates[-1]), atol=1e-3)


def test_gated_rnn_rearranged_weights_follow_changes_to_the_static_weights() -> None:
    """The fast path keeps the static weights rearranged between reads; changing them in place (a meta-training
    step) must make the next read use the new ones."""
    ckpt = load_checkpoint(REPO / "checkpoints" / "binary128-rnn")
    model = ckpt.model
    torch.manual_seed(4)
    x = (torch.rand(8, 128) > 0.5).float()
    w = write(model, model.params(detach=True), x).weights
    q = x.clone()
    q[:, :30] = 1 - q[:, :30]
    before = read(model, model.params(detach=True), w, q, fast=True).iterates
    with torch.no_grad():
        model.energy.gate_w.mul_(1.5)
        model.energy.static_b.add_(0.2)
    p = model.params(detach=True)
    fast, slow = read(model, p, w, q, fast=True), read(model, p, w, q, fast=False)
    assert torch.allclose(fast.iterates, slow.iterates, atol=2e-4)
    assert not torch.allclose(fast.iterates, before, atol=1e-3)
    model.double()                      # converted in place: the same parameter objects, new storage
    p, w64 = model.params(detach=True), {n: t.double() for n, t in w.items()}
    fast, slow = read(model, p, w64, q.double(), fast=True), read(model, p, w64, q.double(), fast=False)
    assert fast.iterates.dtype == torch.float64
    assert torch.allclose(fast.iterates, slow.iterates, atol=1e-5)


@pytest.mark.parametrize(("family", "assigned"), [("gated-rnn", False), ("slots-indexed", False),
                                                   ("slots-indexed", True), ("slots-skewed", False), ("span", False),
                                                   ("quadratic", False)])
def test_closed_form_write_gradient_equals_autograd(family: str, assigned: bool) -> None:
    """EnergyNet.write_grad: the write energy per pattern and its sum's gradient in every writable tensor, as
    autograd gives them, at the first step (from theta_bar) and at a later one (the cache kept); assigned: an
    append's plan, some slots shared and the weights not 0 or 1."""
    torch.manual_seed(0)
    net = FAMILIES[family]().double()
    if hasattr(net, "data_init"):
        net.data_init(torch.rand(64, *net.input_shape))
        net.double()
    if family.startswith("slots"):
        with torch.no_grad():
            u = torch.linalg.qr(net.basis.T)[0].T
            net.basis.copy_(u + 0.05 * torch.randn_like(u) if family == "slots-skewed" else u)
    p = randomised(net, 1)
    if family.startswith("slots"):
        p["quart_raw"] = torch.tensor(0.5 / 30, dtype=torch.float64)
    x = torch.rand(6, *net.input_shape, dtype=torch.float64)
    assign = None
    if assigned:
        assign = torch.rand(6, net.slots, dtype=torch.float64)
        assign = assign / assign.sum(0, keepdim=True)
    cache: dict = {}
    for _ in range(2):
        e, g = net.write_grad(p, x, assign, cache)
        leaves = {n: p[n].clone().requires_grad_(True) for n in net.writable}
        q = {**p, **leaves}
        want = net.write_energy(q, x) if assign is None else net.write_energy(q, x, assign)
        grads = torch.autograd.grad(want.sum(), list(leaves.values()))
        want = want.detach()
        assert torch.allclose(e, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
        for n, slow in zip(leaves, grads, strict=True):
            assert torch.allclose(g[n], slow, rtol=1e-9, atol=1e-9 * slow.abs().max()), (n, (g[n] - slow).abs().max())
        if family == "quadratic":                    # and the gradient-norm term, ||grad_x E||^2
            gn, gg = net.write_grad_norm(p, x, cache)
            xl = x.clone().requires_grad_(True)
            (gx,) = torch.autograd.grad(net.write_energy({**p, **leaves}, xl).sum(), xl, create_graph=True)
            want_gn = gx.pow(2).flatten(1).sum(1)
            (slow,) = torch.autograd.grad(want_gn.sum(), [leaves["memory_triu"]])
            want_gn = want_gn.detach()
            assert torch.allclose(gn, want_gn, rtol=1e-9, atol=1e-9 * float(want_gn.abs().max()))
            assert torch.allclose(gg["memory_triu"], slow, rtol=1e-9, atol=1e-9 * float(slow.abs().max()))
        p = {**p, **{n: p[n] - 0.1 * g[n] for n in net.writable}}       # a second step from moved weights


def test_networks_without_a_closed_form_write_say_so() -> None:
    """The shared-slot memory (an occupancy penalty) writes through autograd, and says so before a write."""
    from model.config import ModelConfig, get_preset
    from model.memory import EBMM, closed_form_write
    torch.manual_seed(0)
    shared = FAMILIES["slots-shared"]()
    assert not shared.writes_in_closed_form and FAMILIES["slots-indexed"]().writes_in_closed_form
    assert shared.write_grad(dict(shared.named_parameters()), torch.rand(4, 1, 8, 8), None, {}) is None
    loop = get_preset("characters-indexed").loop
    model = EBMM(ModelConfig("t", "subspace_slots", (1, 8, 8), "binary", dict(rank=12, slots=10, assign="shared"),
                             loop))
    assert not closed_form_write(model)
    x = (torch.rand(4, 1, 8, 8) > 0.5).float()
    p = model.params(detach=True)
    assert torch.equal(write(model, p, x).weights["energy.memory_slots"],
                       write(model, p, x, fast=False).weights["energy.memory_slots"])


@pytest.mark.parametrize("name", ["binary128", "binary128-rnn", "characters32", "photos32", "photos32-span8k"])
def test_a_closed_form_write_equals_the_autograd_write(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt = load_checkpoint(REPO / "checkpoints" / name)
    model, p = ckpt.model, ckpt.model.params(detach=True)
    torch.manual_seed(3)
    shape = model.cfg.input_shape
    x = (torch.rand(64, *shape) > 0.5).float() if len(shape) == 1 else torch.rand(64, *shape)
    from model.memory import closed_form_write
    assert closed_form_write(model)                     # every shipped family's serving write skips autograd

    def no_autograd(*args, **kwargs):
        raise AssertionError("the closed-form write called autograd")
    with monkeypatch.context() as mp:                   # ... and does: autograd is not there to fall back on
        mp.setattr(torch.autograd, "grad", no_autograd)
        fast = write(model, p, x)
    slow = write(model, p, x, fast=False)
    assert len(fast.losses) == len(slow.losses) == model.cfg.loop.write_steps
    for a, b in zip(fast.losses, slow.losses, strict=True):
        assert abs(a - b) <= 1e-5 * max(1.0, abs(b))
    for n, t in slow.weights.items():
        assert not fast.weights[n].requires_grad
        gap = (fast.weights[n] - t).abs().max()
        assert torch.allclose(fast.weights[n], t, rtol=1e-5, atol=1e-5 * t.abs().max()), (n, gap)
