"""The loops against their equations, written out by hand here (not through the forward code):
the Hebb rule as one energy-only write step, the three-term writing loss, the projected Nesterov read,
the prior term's sign and the step-size recursion (paper section 3)."""
import math

import pytest
import torch
import torch.nn.functional as F

from model.config import LoopConfig, ModelConfig
from model.memory import EBMM, read, step_sizes, write, writing_terms

D = 6


def quadratic(reduction: str = "sum", **loop) -> EBMM:
    """A quadratic energy E(x) = c (-1/2 s^T M s - b^T s), s = 2x - 1, with random M, b and scale c."""
    cfg = ModelConfig("t-quad", "quadratic", (D,), "binary", {},
                      LoopConfig(write_reduction=reduction, **loop))
    model = EBMM(cfg).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.energy.bias.copy_(torch.randn(D, generator=g, dtype=torch.float64))
        model.energy.log_scale.fill_(math.log(0.7))
    return model


def matrix_of(model: EBMM, triu: torch.Tensor) -> torch.Tensor:
    """M from its upper triangle, with the energy's diagonal gain applied."""
    m = torch.zeros(D, D, dtype=triu.dtype)
    iu = torch.triu_indices(D, D)
    m[iu[0], iu[1]] = triu
    m = m + m.T - torch.diag(torch.diagonal(m))
    return m + torch.diag(torch.diagonal(m) * (model.energy.diag.detach() - 1))


def energy_by_hand(model: EBMM, triu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    s = 2 * x - 1
    c = model.energy.log_scale.detach().exp()
    m = matrix_of(model, triu)
    return c * (-0.5 * ((s @ m) * s).sum(-1) - s @ model.energy.bias.detach())


def grad_x_by_hand(model: EBMM, triu: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dE/dx = 2 dE/ds = -2 c (M s + b), M symmetric."""
    s = 2 * x - 1
    c = model.energy.log_scale.detach().exp()
    return -2 * c * (s @ matrix_of(model, triu) + model.energy.bias.detach())


def patterns(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, D, generator=g, dtype=torch.float64) < 0.5).double()


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_one_energy_only_write_step_from_zero_is_the_hebb_rule(reduction):
    model = quadratic(reduction, write_steps=1, grad_norm_term=False, write_rate_init=0.3, beta_init=5.0)
    x = patterns(4)
    p = model.params(detach=True)
    w = write(model, p, x).weights["energy.memory_triu"]
    s = 2 * x - 1
    rate = F.softplus(p["loop.write_rate"][0, 0])
    c = p["energy.log_scale"].exp()
    hebb = s.T @ s / (1 if reduction == "sum" else len(x))          # sum_i s_i s_i^T (or its mean)
    iu = torch.triu_indices(D, D)
    off = iu[0] != iu[1]
    # dE/dt_ij = -c s_i s_j off the diagonal (t_ij sits at M_ij and M_ji); the prior is 0 at theta_bar
    torch.testing.assert_close(w[off], rate * c * hebb[iu[0], iu[1]][off])
    # the diagonal carries the gain: dE/dt_ii = -c g s_i^2 / 2
    g = p["energy.diag"]
    torch.testing.assert_close(w[~off], rate * c * g * 0.5 * hebb[iu[0], iu[1]][~off])


def test_writing_loss_of_a_tiny_case_equals_its_formula():
    """W = E + alpha ||grad_x E||^2 + beta ||theta - theta_bar||^2, each term by hand, and one write
    step moves theta by -(r_E dE + r_a alpha d||grad E||^2 + r_b beta d||theta - theta_bar||^2)."""
    model = quadratic("sum", write_steps=2, write_rate_init=0.05, alpha_init=0.4, beta_init=0.6)
    x = patterns(3)
    p = model.params(detach=True)
    theta_bar = p["energy.memory_triu"] + 0.1 * torch.randn(p["energy.memory_triu"].shape,
                                                            generator=torch.Generator().manual_seed(2),
                                                            dtype=torch.float64)
    p = {**p, "energy.memory_triu": theta_bar}
    theta = theta_bar + 0.2 * torch.randn(theta_bar.shape, generator=torch.Generator().manual_seed(3),
                                          dtype=torch.float64)
    e, gn = writing_terms(model, {**p, "energy.memory_triu": theta}, x, use_grad_norm=True)
    torch.testing.assert_close(e, energy_by_hand(model, theta, x).sum())
    torch.testing.assert_close(gn, grad_x_by_hand(model, theta, x).pow(2).sum())
    # the update of two steps, with each term's gradient taken by autograd of the hand-written formulas
    alpha, beta = F.softplus(p["loop.alpha"]), F.softplus(p["loop.beta"])
    r = F.softplus(p["loop.write_rate"][0])                          # (3,): energy, grad-norm, prior
    t = theta_bar.clone()
    for _ in range(2):
        t_ = t.detach().requires_grad_(True)
        (d_e,) = torch.autograd.grad(energy_by_hand(model, t_, x).sum(), t_)
        (d_g,) = torch.autograd.grad(grad_x_by_hand(model, t_, x).pow(2).sum(), t_)
        (d_p,) = torch.autograd.grad((t_ - theta_bar).pow(2).sum(), t_)
        t = t - (r[0] * d_e + r[1] * alpha * d_g + r[2] * beta * d_p)
    torch.testing.assert_close(write(model, p, x).weights["energy.memory_triu"], t)


def test_the_prior_term_pulls_the_written_weights_back_to_theta_bar():
    """After the first step moves theta away, the second step's prior part is -r_b beta 2 (theta - theta_bar):
    more beta means written weights closer to theta_bar, never further."""
    x = patterns(3)
    dist = []
    for beta in (1e-6, 0.5, 2.0):
        model = quadratic("sum", write_steps=3, grad_norm_term=False, write_rate_init=0.1, beta_init=beta)
        p = model.params(detach=True)
        w = write(model, p, x).weights["energy.memory_triu"]
        dist.append(float((w - p["energy.memory_triu"]).norm()))
    assert dist[0] > dist[1] > dist[2] > 0


def test_one_read_step_and_a_second_are_the_projected_nesterov_formula():
    model = quadratic("sum", read_steps=2, read_rate_init=0.3, read_decay_init=0.7, momentum_init=0.6)
    x = patterns(5)
    p = model.params(detach=True)
    w = write(model, p, x).weights
    triu = w["energy.memory_triu"]
    q = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)).clamp(0, 1)
    gamma, psi = step_sizes(p, 2)
    clip = lambda t: t.clamp(0, 1)                                   # noqa: E731
    # step 1: v = 0, so the look-ahead is the query
    v1 = -gamma[0] * grad_x_by_hand(model, triu, q)
    x1 = clip(q + v1)
    # step 2: look-ahead x^ = clip(x1 + psi_2 v1); v2 = psi_2 v1 - gamma_2 grad E(x^); x2 = clip(x1 + v2)
    xh = clip(x1 + psi[1] * v1)
    v2 = psi[1] * v1 - gamma[1] * grad_x_by_hand(model, triu, xh)
    x2 = clip(x1 + v2)
    it = read(model, p, w, q).iterates
    torch.testing.assert_close(it[1], x1)
    torch.testing.assert_close(it[2], x2)


def test_step_size_recursion():
    """gamma_1 = softplus(rate), gamma_k = gamma_{k-1} sigmoid(eta_k); psi_1 = sigmoid(m),
    psi_k = psi_{k-1} sigmoid(mu_k); past K the last value repeats."""
    model = quadratic("sum", read_steps=4)
    with torch.no_grad():
        model.loop.read_decay.copy_(torch.tensor([0.3, -1.2, 2.0]))
        model.loop.momentum_decay.copy_(torch.tensor([-0.5, 0.1, 1.5]))
        model.loop.read_rate.fill_(0.8)
        model.loop.momentum.fill_(-0.2)
    p = model.params(detach=True)
    gamma, psi = step_sizes(p, 6)
    g, m = [F.softplus(torch.tensor(0.8))], [torch.sigmoid(torch.tensor(-0.2))]
    for eta, mu in zip([0.3, -1.2, 2.0], [-0.5, 0.1, 1.5], strict=True):
        g.append(g[-1] * torch.sigmoid(torch.tensor(eta)))
        m.append(m[-1] * torch.sigmoid(torch.tensor(mu)))
    g += [g[-1]] * 2
    m += [m[-1]] * 2
    torch.testing.assert_close(gamma.float(), torch.stack(g).float())
    torch.testing.assert_close(psi.float(), torch.stack(m).float())
