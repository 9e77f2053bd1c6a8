"""The write and read loops and the meta-gradient through both (float64 finite differences)."""
import pytest
import torch

from model.config import PRESETS, LoopConfig, ModelConfig
from model.memory import EBMM, read, step_sizes, write
from model.meta import episode_loss

LOOP = LoopConfig(write_steps=2, read_steps=2, write_rate_init=0.05, alpha_init=0.5, beta_init=0.1,
                  read_rate_init=0.05, read_decay_init=0.8, momentum_init=0.3)

TINY = {
    "gated_rnn": ModelConfig("t-rnn", "gated_rnn", (5,), "binary", dict(hidden=6, memory=2, hops=2), LOOP),
    "quadratic": ModelConfig("t-quad", "quadratic", (5,), "binary", {}, LOOP),
    "subspace_quadratic": ModelConfig("t-subq", "subspace_quadratic", (1, 3, 3), "binary", dict(rank=3), LOOP),
    "subspace_slots": ModelConfig("t-slots", "subspace_slots", (1, 3, 3), "binary", dict(rank=3, slots=4), LOOP),
    "subspace_slots_indexed": ModelConfig("t-slots-idx", "subspace_slots", (1, 3, 3), "binary",
                                          dict(rank=3, slots=4, assign="indexed"), LOOP),
    "resnet_fc": ModelConfig("t-fc", "resnet_fc", (1, 8, 8), "grayscale",
                             dict(memory=2, channels=(2, 3), embed=5, hidden=6, head=4, hops=2), LOOP),
    "gated_rnn_no_alpha": ModelConfig("t-rnn-a0", "gated_rnn", (5,), "binary", dict(hidden=6, memory=2, hops=2),
                                      LoopConfig(**{**LOOP.__dict__, "grad_norm_term": False})),
    "resnet_conv": ModelConfig("t-conv", "resnet_conv", (1, 8, 8), "grayscale",
                               dict(memory=1, channels=(2, 2), width=3, bottleneck=2, hidden=4, hops=1), LOOP),
    # alpha off: the write runs on the trunk's static features, computed once (EnergyNet.static_features)
    "resnet_fc_no_alpha": ModelConfig("t-fc-a0", "resnet_fc", (1, 8, 8), "grayscale",
                                      dict(memory=2, channels=(2, 3), embed=5, hidden=6, head=4, hops=2),
                                      LoopConfig(**{**LOOP.__dict__, "grad_norm_term": False})),
    "resnet_conv_no_alpha": ModelConfig("t-conv-a0", "resnet_conv", (1, 8, 8), "grayscale",
                                        dict(memory=1, channels=(2, 2), width=3, bottleneck=2, hidden=4, hops=1),
                                        LoopConfig(**{**LOOP.__dict__, "grad_norm_term": False})),
    "quadratic_sum": ModelConfig("t-quad-sum", "quadratic", (5,), "binary", {},
                                 LoopConfig(**{**LOOP.__dict__, "write_reduction": "sum"})),
    "subspace_slots_indexed_over_capacity": ModelConfig(
        "t-slots-idx-over", "subspace_slots", (1, 3, 3), "binary", dict(rank=3, slots=4, assign="indexed"),
        LoopConfig(**{**LOOP.__dict__, "write_reduction": "sum"})),
}
PATTERNS = {"subspace_slots_indexed_over_capacity": 6}     # N > S: patterns share slots
# a constant offset of the energy moves neither loop: its meta-gradient is exactly zero (so is alpha's
# where the write has no grad-norm term)
ZERO_GRADIENT = {"energy.out_b"}


def _episode(cfg: ModelConfig, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # patterns and queries inside (0.3, 0.7) with small steps: the [0, 1] clip stays inactive, so the
    # loss is smooth and finite differences are meaningful
    x = 0.3 + 0.4 * torch.rand(n, *cfg.input_shape, generator=g, dtype=torch.float64)
    q = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0.3, 0.7)
    return x, q


@pytest.mark.parametrize("arch", sorted(TINY))
def test_meta_gradient_matches_finite_differences(arch):
    torch.manual_seed(0)
    model = EBMM(TINY[arch]).double()
    with torch.no_grad():   # make the energy large enough that both loops move noticeably
        model.energy.log_scale.fill_(0.0)
    x, q = _episode(model.cfg, n=PATTERNS.get(arch, 3))
    flat0 = torch.cat([t.detach().flatten() for t in model.parameters()])

    def loss_of(flat: torch.Tensor) -> torch.Tensor:
        params, i = {}, 0
        for n, t in model.named_parameters():
            params[n] = flat[i:i + t.numel()].view_as(t)
            i += t.numel()
        orig = model.params
        model.params = lambda detach=False: params          # substitute the flat vector's views
        try:
            return episode_loss(model, x, q).loss
        finally:
            model.params = orig

    flat = flat0.clone().requires_grad_(True)
    (analytic,) = torch.autograd.grad(loss_of(flat), flat)
    # per parameter tensor (writable, static and loop ones), its 3 largest-gradient coordinates; every
    # checked coordinate must hold a gradient far above the float64 central difference's error
    # (eps^2 times the third derivative plus ulps of |L| / eps), and agree to 1e-4 relative beyond that
    idx, i = [], 0
    for n, t in model.named_parameters():
        g = analytic[i:i + t.numel()].abs()
        if n in ZERO_GRADIENT or (n == "loop.alpha" and not model.cfg.loop.grad_norm_term):
            assert g.max() == 0, f"{arch}: {n} should get no meta-gradient"
        else:
            assert g.max() > 1e-9, f"{arch}: {n} gets a meta-gradient of {g.max():.1e}: too small to check"
            idx += (i + g.topk(min(3, t.numel())).indices).tolist()
        i += t.numel()
    eps = 1e-6
    # the central difference's rounding error: a few ulps of the loss over eps (measured: 7e-12 at
    # |L| = 0.12 on a 3e-8 coordinate of resnet_fc, where eps = 1e-4 agrees to 2e-6 relative)
    roundoff = 4 * 2.2e-16 * abs(float(loss_of(flat0).detach())) / eps
    for j in idx:
        e = torch.zeros_like(flat0)
        e[j] = eps
        numeric = (loss_of(flat0 + e) - loss_of(flat0 - e)) / (2 * eps)
        assert abs(analytic[j] - numeric) <= 1e-4 * abs(analytic[j]) + roundoff + 1e-12, \
            f"{arch}: d loss / d flat[{j}] analytic {analytic[j]:.6e} vs numeric {numeric:.6e}"


def test_meta_gradient_reaches_every_learned_quantity():
    model = EBMM(TINY["gated_rnn"]).double()
    x, q = _episode(model.cfg)
    episode_loss(model, x, q).loss.backward()
    for name, t in model.named_parameters():
        if name == "energy.out_b":     # a constant offset of the energy moves neither loop
            assert t.grad is None or t.grad.abs().sum() == 0
            continue
        assert t.grad is not None and t.grad.abs().sum() > 0, f"no meta-gradient reaches {name}"


def test_write_changes_only_the_writable_slice_and_keeps_theta_bar():
    model = EBMM(TINY["resnet_conv"])
    p = model.params(detach=True)
    before = {n: t.clone() for n, t in p.items()}
    x, _ = _episode(model.cfg)
    res = write(model, p, x.float())
    assert set(res.weights) == set(model.writable) == {"energy.memory0_w", "energy.memory0_b",
                                                       "energy.memory1_w", "energy.memory1_b"}
    assert any(not torch.equal(res.weights[n], p[n]) for n in model.writable)
    for n, t in p.items():
        assert torch.equal(t, before[n]), f"write mutated parameter {n}"


def test_serving_mode_builds_no_graph():
    model = EBMM(TINY["gated_rnn"])
    p = model.params(detach=True)
    x, q = _episode(model.cfg)
    w = write(model, p, x.float()).weights
    r = read(model, p, w, q.float())
    assert all(not t.requires_grad and t.grad_fn is None for t in w.values())
    assert r.iterates.grad_fn is None and not r.iterates.requires_grad
    assert r.energies.grad_fn is None


def test_read_returns_every_iterate_in_range_and_keeps_known_pixels():
    model = EBMM(PRESETS["binary-hopfield"])
    p = model.params(detach=True)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 128, generator=g) < 0.5).float()
    w = write(model, p, x).weights
    q = x.clone()
    q[:, :20] = 1 - q[:, :20]
    known = torch.zeros_like(q, dtype=torch.bool)
    known[:, 100:] = True
    r = read(model, p, w, q, mask=known, steps=7)
    assert r.iterates.shape == (8, 8, 128) and r.energies.shape == (8, 8)
    assert r.iterates.min() >= 0 and r.iterates.max() <= 1
    assert torch.equal(r.iterates[-1][known], q[known])
    assert (r.iterates[-1].round() != x).sum() < (q != x).sum()


def test_step_sizes_are_positive_and_non_increasing_beyond_k():
    model = EBMM(PRESETS["binary-hopfield"])
    with torch.no_grad():
        model.loop.read_decay.normal_()
        model.loop.momentum_decay.normal_()
    gamma, psi = step_sizes(model.params(), 9)
    assert gamma.shape == psi.shape == (9,)
    assert (gamma > 0).all() and (gamma[1:] <= gamma[:-1]).all()
    assert (psi > 0).all() and (psi < 1).all() and (psi[1:] <= psi[:-1]).all()


def test_a_fast_read_follows_step_sizes_changed_in_place_and_other_step_counts():
    """The fast path remembers its step sizes as floats between reads; a loop tensor changed in place (an
    optimiser step), or another number of steps, must reach the next read as it reaches the autograd one."""
    torch.manual_seed(0)
    model = EBMM(PRESETS["binary-hopfield"])
    p = model.params(detach=True)
    x = (torch.rand(6, *model.cfg.input_shape) < 0.5).float()
    w = write(model, p, x).weights
    q = x.clone()
    q[:, :16] = 1 - q[:, :16]
    read(model, p, w, q)                                     # fills the memo
    with torch.no_grad():
        model.loop.read_rate.add_(1.0)
        model.loop.momentum_decay.sub_(2.0)
    for steps in (None, 3):
        fast = read(model, p, w, q, steps=steps).iterates
        slow = read(model, p, w, q, steps=steps, fast=False).iterates
        assert fast.shape == slow.shape
        assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize("name,floats", [("paper-binary-rnn", 8127), ("paper-fc-d36-gray", 257 * 36),
                                         ("paper-conv-d8-colour", 1154 * 8), ("binary-hopfield", 8256)])
def test_paper_memory_sizes(name, floats):
    assert EBMM(PRESETS[name]).memory_floats == floats


def test_read_energies_are_the_energies_of_the_returned_iterates():
    model = EBMM(TINY["gated_rnn"])
    p = model.params(detach=True)
    x, q = _episode(model.cfg)
    w = write(model, p, x.float()).weights
    r = read(model, p, w, q.float(), steps=4)
    for k in range(r.iterates.shape[0]):
        assert torch.allclose(r.energies[k], model.energy_fn({**p, **w}, r.iterates[k]), atol=1e-5), k


def _distinct_patterns(n: int, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *shape, generator=g) < 0.5).float()


@pytest.mark.parametrize("n", [5, 8, 13])
def test_indexed_write_stores_each_pattern_in_its_own_slots(n):
    """8 slots: 5 patterns fill them (3 twice), 8 one each, 13 share (slot k holds the mean of k, k+8)."""
    cfg = ModelConfig("t-idx", "subspace_slots", (1, 4, 4), "binary", dict(rank=10, slots=8, assign="indexed"),
                      LoopConfig(write_steps=6, write_rate_init=0.9, beta_init=1e-6, grad_norm_term=False,
                                 write_reduction="sum"))
    model = EBMM(cfg)
    x = _distinct_patterns(n, cfg.input_shape)
    model.energy.data_init(_distinct_patterns(64, cfg.input_shape, seed=1))
    with torch.no_grad():             # the quartic pixel term also nudges slots; off, they must be codes
        model.energy.quart_raw.fill_(-1e3)
    p = model.params(detach=True)
    slots = write(model, p, x).weights["energy.memory_slots"]           # (8, 10)
    codes = (2 * x.flatten(1) - 1 - model.energy.centre) @ model.energy.basis.T     # (n, 10)
    for k in range(8):
        owners = [i for i in range(n) if (i % 8 == k if n > 8 else k % n == i)]
        assert torch.allclose(slots[k], codes[owners].mean(0), atol=1e-3), (k, owners)


@pytest.mark.parametrize("n", [1, 5, 8])
def test_indexed_write_term_bounds_the_attention_energy_of_what_it_stores(n):
    """Up to S patterns, each pattern's distance to its own slots is at least the softmin over all slots:
    with the quartic term (which recalls differently in the two) off, the write term bounds E."""
    cfg = ModelConfig("t-idx", "subspace_slots", (1, 4, 4), "binary", dict(rank=10, slots=8, assign="indexed"),
                      LoopConfig(write_steps=2, write_rate_init=0.5, grad_norm_term=False, write_reduction="sum"))
    model = EBMM(cfg)
    model.energy.data_init(_distinct_patterns(64, cfg.input_shape, seed=1))
    with torch.no_grad():
        model.energy.quart_raw.fill_(-1e3)
    x = _distinct_patterns(n, cfg.input_shape, seed=2)
    p = model.params(detach=True)
    for weights in ({}, write(model, p, x).weights):                  # before and after writing
        q = {**p, **weights}
        assert (model.write_energy_fn(q, x) >= model.energy_fn(q, x) - 1e-4).all()


def test_indexed_assignment_needs_a_pattern():
    model = EBMM(PRESETS["characters-indexed-r63"])
    with pytest.raises(ValueError, match="at least one pattern"):
        model.energy.assignment(0)


def test_indexed_slot_memory_recalls_every_stored_pattern_from_a_corrupted_query():
    cfg = PRESETS["characters-indexed-r63"].replace(input_shape=(1, 8, 8), rank=40, slots=16)
    model = EBMM(cfg)
    model.energy.data_init(_distinct_patterns(512, cfg.input_shape, seed=1))
    p = model.params(detach=True)
    x = _distinct_patterns(16, cfg.input_shape)
    w = write(model, p, x).weights
    q = x.clone()
    q[:, :, :2, :] = 1 - q[:, :, :2, :]            # two of eight rows flipped
    out = read(model, p, w, q, steps=10).iterates[-1]
    assert ((out > 0.5).float() != x).sum() < 0.25 * (q != x).sum()


@pytest.mark.parametrize("n", [5, 13])
def test_exact_weights_store_the_codes_without_a_write(n):
    """The exact-codes baseline: slot k holds the code of its pattern (the mean of its patterns past S)."""
    cfg = ModelConfig("t-idx", "subspace_slots", (1, 4, 4), "binary", dict(rank=10, slots=8, assign="indexed"))
    model = EBMM(cfg)
    model.energy.data_init(_distinct_patterns(64, cfg.input_shape, seed=1))
    x = _distinct_patterns(n, cfg.input_shape)
    slots = model.exact_weights(model.params(detach=True), x)["energy.memory_slots"]
    codes = (2 * x.flatten(1) - 1 - model.energy.centre) @ model.energy.basis.T
    for k in range(8):
        owners = [i for i in range(n) if (i % 8 == k if n > 8 else k % n == i)]
        torch.testing.assert_close(slots[k], codes[owners].mean(0))
    assert EBMM(TINY["quadratic"]).exact_weights(EBMM(TINY["quadratic"]).params(), torch.rand(2, 5)) is None


@pytest.mark.parametrize("n_old,n_new", [(5, 3), (3, 3), (6, 7)])
def test_appending_to_a_slot_memory_deals_slots_as_one_write_of_all(n_old, n_new):
    """8 slots: 5 + 3 and 3 + 3 fit; 6 + 7 share slots, each the mean of its patterns' codes."""
    from model.memory import append
    cfg = ModelConfig("t-idx", "subspace_slots", (1, 4, 4), "binary", dict(rank=10, slots=8, assign="indexed"),
                      LoopConfig(write_steps=6, write_rate_init=0.9, beta_init=1e-6, grad_norm_term=False,
                                 write_reduction="sum"))
    model = EBMM(cfg)
    model.energy.data_init(_distinct_patterns(64, cfg.input_shape, seed=1))
    with torch.no_grad():
        model.energy.quart_raw.fill_(-1e3)
    p = model.params(detach=True)
    x = _distinct_patterns(n_old + n_new, cfg.input_shape)
    at_once = write(model, p, x).weights["energy.memory_slots"]
    first = write(model, p, x[:n_old]).weights
    appended = append(model, p, first, x[n_old:], n_old).weights["energy.memory_slots"]
    torch.testing.assert_close(appended, at_once, atol=2e-3, rtol=0)


@pytest.mark.parametrize("n_old, n_new", [(2, 3), (5, 1), (3, 6)])
def test_appending_to_a_quadratic_memory_from_its_state_writes_what_one_write_of_all_does(n_old, n_new):
    """The writing loss of a quadratic energy depends on the patterns only through sum s s^T and sum s: an
    append from the old patterns' state writes patterns with the summed state, which is the write of all."""
    from model.memory import append
    model = EBMM(TINY["quadratic"])
    p = model.params(detach=True)
    x = _distinct_patterns(n_old + n_new, (5,))
    if n_old == 5:                       # values anywhere in [0, 1] (JSON arrays), not only bits
        x = torch.rand(n_old + n_new, 5, generator=torch.Generator().manual_seed(3))
    state = model.energy.append_state(x[:n_old])
    appended = append(model, p, write(model, p, x[:n_old]).weights, x[n_old:], n_old, state).weights
    at_once = write(model, p, x).weights
    torch.testing.assert_close(appended["energy.memory_triu"], at_once["energy.memory_triu"], atol=1e-5, rtol=1e-4)
    virtual = model.energy.patterns_from_state(model.energy.append_state(x), x.shape[0])
    for name, t in model.energy.append_state(virtual).items():              # the same sums, other patterns
        torch.testing.assert_close(t, model.energy.append_state(x)[name], atol=1e-4, rtol=1e-5)


def test_appending_to_a_gated_rnn_from_its_stored_patterns_writes_what_one_write_of_all_does():
    """The gated RNN's append state is the patterns themselves (bits as uint8; other values as float32, and
    float32 once the two mix): an append writes old and new patterns from theta_bar, as one write of all."""
    from model.memory import append
    model = EBMM(TINY["gated_rnn"])
    p = model.params(detach=True)
    x = _distinct_patterns(7, (5,))
    state = model.energy.append_state(x[:4])
    assert state["patterns"].dtype == torch.uint8 and state["patterns"].shape == (4, 5)
    appended = append(model, p, write(model, p, x[:4]).weights, x[4:], 4, state).weights
    at_once = write(model, p, x).weights
    for name, t in at_once.items():
        torch.testing.assert_close(appended[name], t, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(append(model, p, write(model, p, x[:4]).weights, x[4:], 4).weights["energy.memory_w"],
                              at_once["energy.memory_w"], atol=1e-4)     # without the state: further steps, not equal
    soft = torch.rand(3, 5, generator=torch.Generator().manual_seed(5))
    both = model.energy.combine_append_states(state, model.energy.append_state(soft))
    assert both["patterns"].dtype == torch.float32
    torch.testing.assert_close(both["patterns"], torch.cat([x[:4], soft]))


def test_appending_to_other_energies_continues_the_write_from_the_written_weights():
    from model.memory import append
    model = EBMM(TINY["quadratic"])
    p = model.params(detach=True)
    x = _distinct_patterns(4, (5,))
    first = write(model, p, x[:2]).weights
    assert torch.equal(append(model, p, first, x[2:], 2).weights["energy.memory_triu"],
                       write(model, p, x[2:], start=first).weights["energy.memory_triu"])
    assert not torch.equal(first["energy.memory_triu"], append(model, p, first, x[2:], 2).weights["energy.memory_triu"])


def test_a_quadratic_append_state_richer_than_its_pattern_count_still_appends():
    """An imported session may claim fewer patterns than its sums hold: the append keeps the n - 1 strongest
    directions instead of failing."""
    from model.memory import append
    model = EBMM(TINY["quadratic"])
    p = model.params(detach=True)
    x = torch.rand(6, 5, generator=torch.Generator().manual_seed(4))
    state = model.energy.append_state(x)                    # six patterns' sums, said to be two
    out = append(model, p, write(model, p, x[:2]).weights, x[:1], 2, state).weights["energy.memory_triu"]
    assert out.shape == p["energy.memory_triu"].shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("arch", ["resnet_fc_no_alpha", "resnet_conv_no_alpha"])
def test_a_write_on_the_trunks_static_features_equals_one_that_runs_the_whole_net_at_every_step(arch, monkeypatch):
    from model.energy.base import EnergyNet
    torch.manual_seed(1)
    model = EBMM(TINY[arch]).double()
    with torch.no_grad():
        model.energy.log_scale.fill_(0.0)
    x, q = _episode(model.cfg, n=4)

    def run():
        model.zero_grad()
        ml = episode_loss(model, x, q)
        ml.loss.backward()
        written = write(model, model.params(detach=True), x).weights
        return written, {n: t.grad.clone() for n, t in model.named_parameters() if t.grad is not None}

    calls = []
    real = type(model.energy).static_features
    monkeypatch.setattr(type(model.energy), "static_features",
                        lambda self, p, xx: calls.append(1) or real(self, p, xx))
    def trunk_passes_in_a_write():
        calls.clear()
        write(model, model.params(detach=True), x)
        return len(calls)

    w_cached, g_cached = run()
    assert trunk_passes_in_a_write() == 1                   # once for the write, not once per step
    monkeypatch.setattr(EnergyNet, "write_energy_is_energy", property(lambda self: False))   # the whole net
    w_full, g_full = run()
    assert trunk_passes_in_a_write() == model.cfg.loop.write_steps == 2
    for n in w_full:
        torch.testing.assert_close(w_cached[n], w_full[n], rtol=1e-10, atol=1e-12)
    assert g_cached.keys() == g_full.keys()
    for n in g_full:
        torch.testing.assert_close(g_cached[n], g_full[n], rtol=1e-8, atol=1e-10, msg=n)
