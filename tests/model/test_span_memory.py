"""The span memory (`subspace_span`): one Hebbian matrix shared by every pattern, whose write adds f f^T,
and whose read restores a damaged window from the span of what was stored."""
from __future__ import annotations

import torch

from model.config import ModelConfig, get_preset
from model.familiarity import familiarity as familiarity_of
from model.memory import EBMM, read, write

SHAPE = (1, 16, 16)


def _model(rank: int = 24) -> EBMM:
    base = get_preset("photos-span-r126").loop
    cfg = ModelConfig("t-span", "subspace_span", SHAPE, "colour", dict(rank=rank, window=6), base)
    return EBMM(cfg)


def _images(n: int, seed: int, dims: int = 12) -> torch.Tensor:
    """Smooth random images drawn from a `dims`-dimensional family (what PCA of the training data holds)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(dims, 1, 4, 4, generator=torch.Generator().manual_seed(99))
    big = torch.nn.functional.interpolate(basis, size=(16, 16), mode="bilinear", align_corners=False)
    coef = torch.randn(n, dims, generator=g)
    x = torch.einsum("nd,dchw->nchw", coef, big)
    return torch.sigmoid(x)


def _occlude(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = x.clone()
    q[:, :, 3:9, 7:13] = torch.rand(x.shape[0], 1, 6, 6, generator=g)
    return q


def test_a_write_adds_a_multiple_of_the_stored_codes_correlation_matrix():
    m = _model()
    m.energy.data_init(_images(512, 1))
    p = m.params(detach=True)
    x = _images(6, 2)
    written = m.energy.matrix({"memory_triu": write(m, p, x).weights["energy.memory_triu"]})
    exact = m.energy.matrix({"memory_triu": m.exact_weights(p, x)["energy.memory_triu"]})
    ratio = written / exact
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), rtol=1e-3), "not a multiple of sum f f^T"
    assert int(torch.linalg.matrix_rank(written.double(), rtol=1e-6)) == 6   # the span of the six codes
    assert m.capacity is None                                                # graded, no slots


def test_the_read_restores_a_damaged_window_of_a_stored_pattern_and_not_of_a_new_one():
    torch.manual_seed(0)
    m = _model()
    m.energy.data_init(_images(512, 1))
    p = m.params(detach=True)
    x, new = _images(6, 3), _images(6, 4)
    w = write(m, p, x).weights
    q, q_new = _occlude(x, 5), _occlude(new, 6)
    out = read(m, p, w, q).iterates[-1]
    err = (out - x).pow(2).flatten(1).sum(1)
    assert (err < 0.1 * (q - x).pow(2).flatten(1).sum(1)).all(), err
    out_new = read(m, p, w, q_new).iterates[-1]
    assert (out_new - new).pow(2).flatten(1).sum(1).mean() > 5 * err.mean()  # only the stored are recalled
    ep = m._energy_params({**p, **w})
    fam_stored = familiarity_of(*m.energy.familiarity_views(ep, q, q), window=6)
    fam_new = familiarity_of(*m.energy.familiarity_views(ep, q_new, q_new), window=6)
    assert fam_stored.min() > fam_new.max(), (fam_stored, fam_new)


def test_recall_degrades_gradually_with_the_load():
    m = _model(rank=24)
    m.energy.data_init(_images(512, 1, dims=40))
    p = m.params(detach=True)
    errors = []
    x_all = _images(30, 7, dims=40)
    for n in (2, 6, 12, 30):                            # the first 2 patterns, read back, at every load
        x = x_all[:n]
        out = read(m, p, write(m, p, x).weights, _occlude(x_all[:2], 8)).iterates[-1]
        errors.append(float((out - x_all[:2]).pow(2).flatten(1).sum(1).mean()))
    query = float((_occlude(x_all[:2], 8) - x_all[:2]).pow(2).flatten(1).sum(1).mean())
    assert errors == sorted(errors), errors
    assert errors[-1] < query, (errors, query)          # past the rank it is still better than the query


def test_appending_is_writing_more():
    from model.memory import append
    m = _model()
    m.energy.data_init(_images(512, 1))
    p = m.params(detach=True)
    x = _images(10, 9)
    at_once = write(m, p, x).weights["energy.memory_triu"]
    halves = append(m, p, write(m, p, x[:4]).weights, x[4:], 4).weights["energy.memory_triu"]
    assert torch.allclose(halves, at_once, rtol=1e-4, atol=1e-12)
    # so the service calls it an exact rule ("add"), and does not warn that an append disturbs the old patterns
    from model.checkpoint import Checkpoint
    from model.serving import Memory
    assert Memory(Checkpoint("span", m, {}, "")).append_rule == "add"


def test_the_write_term_leaves_out_only_what_has_no_gradient_in_the_weights():
    m = _model()
    m.energy.data_init(_images(512, 1))
    p = m.params(detach=True)
    x = _images(5, 11)
    w = write(m, p, x).weights                                   # some written weights to take gradients at
    ep = {k: v.clone().requires_grad_(k == "memory_triu") for k, v in m._energy_params({**p, **w}).items()}
    (g_full,) = torch.autograd.grad(m.energy.energy(ep, x).sum(), [ep["memory_triu"]])
    (g_write,) = torch.autograd.grad(m.energy.write_energy(ep, x).sum(), [ep["memory_triu"]])
    assert torch.allclose(g_full, g_write, rtol=1e-5, atol=1e-12)


def _written_span() -> tuple[EBMM, dict, torch.Tensor, torch.Tensor, dict]:
    """A span memory over a 40-dim image family with six patterns written, and six never stored."""
    torch.manual_seed(0)
    m = _model()
    m.energy.data_init(_images(512, 1, dims=40))
    p = m.params(detach=True)
    x, new = _images(6, 3, dims=40), _images(6, 4, dims=40)
    return m, p, x, new, write(m, p, x).weights


def test_familiarity_score_tells_stored_from_new_queries_clean_and_occluded():
    """The memory's own score (known pixels fitted by the span against the whole subspace): stored queries,
    clean or with a window overwritten, score near 1 and above every never-stored one."""
    from model.familiarity import query_familiarity
    m, p, x, new, w = _written_span()
    for stored_q, new_q in ((x, new), (_occlude(x, 5), _occlude(new, 6))):
        fam_stored = query_familiarity(m, p, w, stored_q, stored_q, window=6)
        fam_new = query_familiarity(m, p, w, new_q, new_q, window=6)
        assert fam_stored.shape == (6,) and ((fam_stored >= 0) & (fam_stored <= 1)).all()
        assert fam_stored.min() > 0.7 and fam_new.max() < 0.1, (fam_stored, fam_new)
    assert torch.allclose(query_familiarity(m, p, w, x, x, window=6), torch.ones(6), atol=1e-3)  # clean: exact


def test_masked_familiarity_counts_the_known_pixels_only():
    """With a mask the score uses the known pixels alone: leaving the overwritten square out keeps stored
    queries familiar, while calling it known (its noise counted) makes them much less so."""
    from model.familiarity import query_familiarity
    m, p, x, new, w = _written_span()
    known = torch.ones_like(x, dtype=torch.bool)
    known[:, :, 3:9, 7:13] = False                      # where _occlude writes noise
    q = _occlude(x, 5)
    fam_stored = query_familiarity(m, p, w, q, x, window=6, known=known)
    fam_new = query_familiarity(m, p, w, _occlude(new, 6), new, window=6, known=known)
    assert fam_stored.min() > 0.7 and fam_new.max() < 0.1, (fam_stored, fam_new)
    fam_all_known = query_familiarity(m, p, w, q, x, window=6, known=torch.ones_like(known))
    assert (fam_all_known < fam_stored - 0.05).all() and (fam_stored - fam_all_known).mean() > 0.15, (
        fam_all_known, fam_stored)


def test_the_span_gram_matrix_is_b_t_b_for_any_basis():
    m = _model()
    m.energy.data_init(_images(512, 1, dims=40))
    p = m.params(detach=True)
    ep = m._energy_params({**p, **write(m, p, _images(6, 3, dims=40)).weights})
    gram, _, mat, _ = m.energy.span(ep)
    b = m.energy.basis.T @ mat                                          # the span in pixels (D, r)
    torch.testing.assert_close(gram, b.T @ b, rtol=1e-4, atol=1e-4 * float(gram.abs().max()))  # orthonormal: M^2
    with torch.no_grad():
        m.energy.basis.add_(0.05 * torch.randn_like(m.energy.basis))       # no longer orthonormal
    gram, _, mat, _ = m.energy.span(ep)
    b = m.energy.basis.T @ mat
    torch.testing.assert_close(gram, b.T @ b)


def test_the_recall_is_the_ridge_fit_in_the_span_formed_explicitly():
    """The recall multiplies by the span b = U^T M as U^T, then M, without forming it: its fits equal the
    textbook ridge least squares with b formed, for an orthonormal basis and a perturbed one: the first fit,
    the second (the first fit's worst window left out) and the masked fit."""
    m = _model().double()
    m.energy.data_init(_images(512, 1, dims=40).double())
    m.double()
    e = m.energy
    p = m.params(detach=True)
    ep = m._energy_params({**p, **write(m, p, _images(6, 3, dims=40).double()).weights})
    s = 2 * _occlude(_images(4, 5, dims=40).double(), 6).flatten(1) - 1
    known = torch.ones_like(s)
    known[:, 40:90] = 0
    for perturb in (False, True):
        if perturb:
            with torch.no_grad():
                m.energy.basis.add_(0.05 * torch.randn_like(m.energy.basis))
        gram, ridge, mat, _ = m.energy.span(ep)
        u, centre = m.energy.basis, m.energy.centre
        b = u.T @ mat                                                   # (D, r), formed
        eye = torch.eye(b.shape[1], dtype=b.dtype)
        qt = s - centre
        first = torch.linalg.solve(b.T @ b + ridge * eye, b.T @ qt.T).T @ b.T
        e.fits = 1
        got, _ = e.recall(ep, s)
        torch.testing.assert_close(got, first + centre, rtol=1e-6, atol=1e-6)   # the fit is ill-conditioned
        keep = torch.ones_like(qt).scatter(1, e._window_pixels(e._window_position(qt - first)), 0.0)
        a = torch.stack([b.T @ (k[:, None] * b) for k in keep]) + ridge * eye
        second = torch.linalg.solve(a, (b.T @ (keep * qt).T).T.unsqueeze(-1)).squeeze(-1) @ b.T + centre
        e.fits = 2
        got, _ = e.recall(ep, s)
        torch.testing.assert_close(got, second, rtol=1e-6, atol=1e-6)
        # a read factors the first fit's system once and solves with that factor at every recall: the factor
        # given is the one used (another system's factor gives another recall), and it is the system's own
        span = e.span(ep)
        assert torch.equal(e.recall(ep, s, span, first=e.first_fit(span))[0], e.recall(ep, s, span)[0])
        e.fits = 1                                      # (with one fit its solution is the recall itself)
        other = e.first_fit((span[0], span[1] * 50, *span[2:]))
        assert not torch.allclose(e.recall(ep, s, span, first=other)[0], e.recall(ep, s, span)[0], atol=1e-6)
        e.fits = 2
        a = torch.stack([b.T @ (k[:, None] * b) for k in known]) + ridge * eye
        want = torch.linalg.solve(a, (b.T @ (known * qt).T).T.unsqueeze(-1)).squeeze(-1) @ b.T + centre
        got, _ = e.recall(ep, s, known=known)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_window_grams_are_the_gram_matrices_of_each_windows_rows():
    m = _model()
    m.energy.data_init(_images(512, 1, dims=40))
    grams = m.energy.window_grams()
    pos = torch.tensor([0, 7, grams.shape[0] - 1])
    uw = m.energy.basis.T[m.energy._window_pixels(pos)]                    # (3, P, r)
    torch.testing.assert_close(grams[pos], uw.transpose(1, 2) @ uw)
    assert grams.shape[0] == (16 - 6 + 1) ** 2                             # every position of a 6x6 window


def test_the_shipped_rank_179_span_memory_reads_with_two_threads():
    """MKL's batched LU failed on the span recall's 179 x 179 systems with 2 torch threads ("pivots given to
    lu_solve must all be >= 1"); the recall and the familiarity score solve them by Cholesky, and answer as
    with one thread."""
    from pathlib import Path

    from model.checkpoint import load_checkpoint
    from model.familiarity import query_familiarity
    ck = load_checkpoint(Path(__file__).resolve().parents[2] / "checkpoints" / "photos32-span16k")
    m, p = ck.model, ck.model.params(detach=True)
    x = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    w = write(m, p, x).weights
    q = x.clone()
    q[..., :16, :16] = 0.5
    before = torch.get_num_threads()
    out = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            r = read(m, p, w, q).iterates[-1]
            out[threads] = (r, query_familiarity(m, p, w, q, r, 16))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out[2][0], out[1][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[2][1], out[1][1], atol=1e-5, rtol=1e-5)


def _bit_model(rank: int, steps: int) -> EBMM:
    base = get_preset("characters-span-r126").loop
    cfg = ModelConfig("t-span-bits", "subspace_span", SHAPE, "binary",
                      dict(rank=rank, window=6, bit_fit_steps=steps, bit_fit_well=0.002), base)
    return EBMM(cfg)


def _bit_images(n: int, seed: int) -> torch.Tensor:
    """Binary images with structure (thresholded smooth images), so that PCA of them means something."""
    return (_images(n, seed, dims=40) > 0.5).float()


def _bit_read(rank: int, steps: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n binary images written and read back from occluded queries: (stored, read)."""
    m = _bit_model(rank=rank, steps=steps)
    m.energy.data_init(_bit_images(2048, 1))
    p = m.params(detach=True)
    x = _bit_images(n, 9)
    q = _occlude(x, 3).round()
    return x, read(m, p, write(m, p, x).weights, q).iterates[-1]


def test_the_bit_fit_solves_an_occluded_windows_bits_from_the_span_where_least_squares_blurs():
    """Binary images: a stored image's code lies in the span of M, which gives r - N equations in the window's
    bits; their box-constrained solution pushed to the corners recovers the stored bits, where the
    least-squares fit within the span (no bit fit) leaves many wrong."""
    errors = {}
    for steps in (0, 500):
        x, y = _bit_read(rank=60, steps=steps, n=12)
        errors[steps] = float(((y > 0.5).float() != x).flatten(1).float().sum(1).mean())
    assert errors[500] < 0.25 * errors[0] and errors[500] < 2.0, errors


def test_the_bit_fit_is_skipped_when_the_span_leaves_no_equation():
    """With as many stored patterns as the rank, the span is the whole subspace: no equation is left and the
    read is the least-squares recall, with or without the bit fit."""
    torch.testing.assert_close(_bit_read(rank=10, steps=500, n=14)[1], _bit_read(rank=10, steps=0, n=14)[1])


def test_the_bit_fit_residual_is_near_zero_for_stored_bits_and_lowers_the_familiarity_of_new_queries(monkeypatch):
    """A stored image's bits solve the span's equations; a never-stored query's recall, forced into bits,
    mostly cannot: the familiarity score with a recall subtracts that residual (weighted)."""
    from model.energy.subspace import SubspaceSpanEnergy
    from model.familiarity import query_familiarity
    m = _bit_model(rank=60, steps=500)
    m.energy.data_init(_bit_images(2048, 1))
    p = m.params(detach=True)
    x, new = _bit_images(45, 9), _bit_images(12, 21)      # a load at which new queries' plain scores are > 0
    w = write(m, p, x).weights
    ep = m._energy_params({**p, **w})
    recalls = {k: read(m, p, w, _occlude(v, 3).round()).iterates[-1] for k, v in (("stored", x), ("new", new))}
    rho = {k: m.energy.bit_fit_residual(ep, r) for k, r in recalls.items()}
    assert float(rho["stored"].median()) < 1e-4 < float(rho["new"].median()), rho
    queries = {"stored": _occlude(x, 3).round(), "new": _occlude(new, 3).round()}

    def fam() -> dict[str, torch.Tensor]:
        return {k: query_familiarity(m, p, w, queries[k], recalls[k], window=6) for k in queries}
    monkeypatch.setattr(SubspaceSpanEnergy, "familiarity_residual_weight", 0.0)
    plain = fam()
    monkeypatch.setattr(SubspaceSpanEnergy, "familiarity_residual_weight", 60.0)
    weighted = fam()
    lower = weighted["new"] < plain["new"] - 1e-3
    assert bool((weighted["new"] <= plain["new"]).all()) and int(lower.sum()) >= 4, (plain, weighted)
    # a stored query recalled right keeps its score (residual ~0); one whose recall failed may lose some
    assert float(((weighted["stored"] - plain["stored"]).abs() <= 60 * 1e-4).float().mean()) >= 0.9
    # a masked read is scored the same way: its recall's residual counts too
    known = torch.ones_like(new)
    known[:, :, 3:9, 7:13] = 0
    masked = query_familiarity(m, p, w, queries["new"], recalls["new"], window=6, known=known)
    monkeypatch.setattr(SubspaceSpanEnergy, "familiarity_residual_weight", 0.0)
    masked_plain = query_familiarity(m, p, w, queries["new"], recalls["new"], window=6, known=known)
    assert bool((masked <= masked_plain).all()) and float(masked.mean()) < float(masked_plain.mean())
    torch.testing.assert_close(query_familiarity(m, p, w, x, x, window=6), torch.ones(45), atol=1e-3, rtol=0)


def _fill_constant(x: torch.Tensor, regions: list[tuple[slice, slice]],
                   value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x with one region per image set to `value` (a block of one colour), and the known-pixel mask."""
    q, known = x.clone(), torch.ones_like(x, dtype=torch.bool)
    for i, (rows, cols) in enumerate(regions):
        q[i, :, rows, cols] = value
        known[i, :, rows, cols] = False
    return q, known


def test_a_masked_read_fills_exactly_the_unknown_pixels_even_where_they_hide_from_the_residual():
    """With a mask the span memory is told which pixels are unknown: the fit leaves out those, whatever their
    shape or count per query (queries with as many unknown pixels are bit-fitted together), instead of the
    window of largest residual, which a block of one colour can hide from. Known pixels stay as sent."""
    m = _bit_model(rank=60, steps=500)
    m.energy.data_init(_bit_images(2048, 1))
    p = m.params(detach=True)
    x = _bit_images(12, 9)
    w = write(m, p, x).weights
    shapes = [(slice(3, 9), slice(7, 13)), (slice(0, 6), slice(0, 6)), (slice(8, 16), slice(10, 14))] * 4
    q, known = _fill_constant(x, shapes, 0.0)                    # 36 or 32 unknown pixels: two groups
    masked = read(m, p, w, q, mask=known).iterates[-1]
    unmasked = read(m, p, w, q).iterates[-1]
    err = lambda y: ((y > 0.5).float() != x).flatten(1).float().sum(1)      # noqa: E731
    assert float(err(masked).mean()) < 1.0, err(masked)
    assert float(err(masked).mean()) < 0.25 * float(err(unmasked).mean()), (err(masked), err(unmasked))
    assert torch.equal(masked[known], q[known])
    # one query alone reads as it does among the others (the groups are solved independently)
    torch.testing.assert_close(read(m, p, w, q[4:5], mask=known[4:5]).iterates[-1], masked[4:5],
                               atol=1e-5, rtol=1e-5)


def test_a_masked_read_of_grey_images_fits_the_known_pixels_only():
    """Without the bit fit (photos) the masked recall is the ridge least-squares fit on the known pixels: a
    stored image with an arbitrary region painted white comes back close, closer than without the mask."""
    torch.manual_seed(0)
    m = _model()
    m.energy.data_init(_images(512, 1))
    p = m.params(detach=True)
    x = _images(6, 3)
    w = write(m, p, x).weights
    q, known = _fill_constant(x, [(slice(2, 10), slice(1, 5)), (slice(5, 8), slice(0, 16))] * 3, 1.0)
    sq = lambda y: (y - x).pow(2).flatten(1).sum(1)                         # noqa: E731
    masked = read(m, p, w, q, mask=known).iterates[-1]
    assert (sq(masked) < 0.1 * sq(q)).all(), (sq(masked), sq(q))
    # the same mask only kept fixed (the energy not told which pixels are unknown) restores less
    import model.energy.subspace as sub
    told = type(m.energy).reads_known_pixels
    try:
        type(m.energy).reads_known_pixels = property(lambda self: False)
        kept_only = read(m, p, w, q, mask=known).iterates[-1]
    finally:
        type(m.energy).reads_known_pixels = told
    assert isinstance(m.energy, sub.SubspaceSpanEnergy)
    assert float(sq(masked).mean()) < 0.5 * float(sq(kept_only).mean()), (sq(masked), sq(kept_only))


def test_the_known_pixel_recall_is_the_window_recall_when_the_unknown_pixels_are_that_window():
    """Told that exactly the window its own search would leave out is unknown, the masked recall is the
    window recall (least squares and bit fit), so a mask adds information and changes nothing else."""
    m = _bit_model(rank=60, steps=500)
    m.energy.data_init(_bit_images(2048, 1))
    p = m.params(detach=True)
    x = _bit_images(10, 9)
    ep = m._energy_params({**p, **write(m, p, x).weights})
    s = _occlude(x, 3).round().flatten(1) * 2 - 1
    plain, keep = m.energy.recall(ep, s)
    told, keep_told = m.energy.recall(ep, s, known=keep)
    torch.testing.assert_close(told, plain, atol=1e-4, rtol=1e-4)
    assert torch.equal(keep_told, keep)


def test_one_mask_for_every_query_is_each_querys_mask():
    """A mask of batch size 1 (one for all queries) reads as that mask repeated for each query."""
    m = _bit_model(rank=60, steps=500)
    m.energy.data_init(_bit_images(2048, 1))
    p = m.params(detach=True)
    x = _bit_images(6, 9)
    w = write(m, p, x).weights
    q, known = _fill_constant(x, [(slice(3, 9), slice(7, 13))] * 6, 0.0)
    one = read(m, p, w, q, mask=known[:1]).iterates[-1]
    each = read(m, p, w, q, mask=known).iterates[-1]
    torch.testing.assert_close(one, each)


def test_a_masked_top_k_of_a_span_memory_has_one_distinct_candidate():
    """With a mask the span memory's recall depends on the known pixels alone: every start of a top-k reaches
    the same recall, so the distinct candidates collapse to one (as the README says); unmasked there are more."""
    from model.checkpoint import Checkpoint
    from model.serving import Memory
    m = _bit_model(rank=60, steps=500)
    m.energy.data_init(_bit_images(2048, 1))
    x = _bit_images(6, 9)
    mem = Memory(Checkpoint("t", m, {"familiarity": {}}, "0" * 64))
    w = mem.write(x).weights
    q, known = _fill_constant(x, [(slice(3, 9), slice(7, 13))] * 6, 0.0)
    assert mem.top_k(w, q, 3, known.float()).count.tolist() == [1] * 6
    assert max(mem.top_k(w, q, 3).count.tolist()) > 1


def test_the_damaged_window_is_the_one_of_largest_residual_energy():
    """`_window_position` (integral images) against every window's energy summed pixel by pixel."""
    e = _model().energy                                                # 16 x 16 images, 6 x 6 windows
    g = torch.Generator().manual_seed(4)
    r = torch.randn(50, 256, generator=g) * torch.rand(50, 1, generator=g)
    r.view(50, 16, 16)[:, 3:9, 7:13] *= 3                              # a damaged block, as a read sees one
    pos = e._window_position(r)
    k, n = 6, 16 - 6 + 1
    sq = r.double().pow(2).view(50, 16, 16)
    brute = torch.stack([sq[:, i:i + k, j:j + k].sum((1, 2)) for i in range(n) for j in range(n)], 1)   # (50, 121)
    assert torch.equal(pos, brute.argmax(1))
    assert (pos == 3 * n + 7).float().mean() > 0.5                    # mostly the damaged block itself
