"""Baseline associative memories: capacity behaviour, memory sizes, batching and output ranges."""
from __future__ import annotations

import pytest
import torch

from model.baselines import (
    Baseline,
    HopfieldHebb,
    HopfieldPinv,
    HopfieldStorkey,
    InpaintPrior,
    ModernHopfield,
    NearestDownscaled,
    NearestFull,
    NearestPaste,
    NearestPCA,
    NetCodec,
    NoMemory,
    PCACodec,
    PixelCodec,
    TunedPinv,
    make_baselines,
)

D = 128


def strings(m: int, n: int, flips: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 128-bit patterns (M, N, D) and queries with exactly `flips` distinct bits flipped."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (m, n, D), generator=g).float()
    pos = torch.rand(m, n, D, generator=g).argsort(-1)[..., :flips]
    q = x.clone()
    q.scatter_(-1, pos, 1 - x.gather(-1, pos))
    return x, q


def error_bits(b: Baseline, x: torch.Tensor, q: torch.Tensor) -> float:
    return (b.retrieve_batch(b.store_batch(x), q) != x).sum(-1).float().mean().item()


def images(n: int, shape: tuple[int, ...] = (1, 8, 8), binary: bool = True, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return (x > 0.5).float() if binary else x


HOPFIELDS = [HopfieldHebb(), HopfieldStorkey(), HopfieldPinv(), HopfieldPinv(zero_diagonal=True),
             HopfieldHebb(update="async"), HopfieldPinv(update="async")]


@pytest.mark.parametrize("b", HOPFIELDS, ids=lambda b: b.name)
def test_hopfield_retrieves_few_patterns_exactly(b: Baseline) -> None:
    x, q = strings(8, 4, flips=8)
    assert error_bits(b, x, q) == 0.0


def test_pinv_holds_32_patterns_where_hebb_fails() -> None:
    x, q = strings(8, 32, flips=8, seed=1)             # 32 patterns = 0.25 D, above Hebb's ~0.14 D
    assert error_bits(HopfieldPinv(), x, q) < 0.05
    assert error_bits(HopfieldPinv(zero_diagonal=True), x, q) < 0.05
    assert error_bits(HopfieldHebb(), x, q) > 5.0


def test_storkey_matches_its_elementwise_definition() -> None:
    d, n = 8, 3
    s = torch.where(torch.rand(1, n, d, generator=torch.Generator().manual_seed(2)) > 0.5, 1.0, -1.0)
    w = [[0.0] * d for _ in range(d)]
    for x in s[0].tolist():
        new = [[0.0] * d for _ in range(d)]
        for i in range(d):
            for j in range(d):
                if i != j:
                    h_ij = sum(w[i][m] * x[m] for m in range(d) if m not in (i, j))
                    h_ji = sum(w[j][m] * x[m] for m in range(d) if m not in (i, j))
                    new[i][j] = w[i][j] + (x[i] * x[j] - x[i] * h_ji - h_ij * x[j]) / d
        w = new
    torch.testing.assert_close(HopfieldStorkey().store_batch((s + 1) / 2)["W"][0], torch.tensor(w))


@pytest.mark.parametrize("zero_diagonal", [False, True])
def test_factored_pinv_equals_dense(zero_diagonal: bool) -> None:
    x, q = strings(2, 48, flips=16, seed=3)
    dense = HopfieldPinv(zero_diagonal=zero_diagonal)
    factored = HopfieldPinv(zero_diagonal=zero_diagonal, dense_max_dim=0)
    assert "P" in factored.store_batch(x)
    for update in ("sync", "async"):
        dense.update = factored.update = update
        out_d = dense.retrieve_batch(dense.store_batch(x), q)
        out_f = factored.retrieve_batch(factored.store_batch(x), q)
        assert (out_d != out_f).float().mean() < 1e-3


def test_memory_floats() -> None:
    for b in HOPFIELDS:
        assert b.memory_floats(64, (D,)) == 8256
    assert HopfieldPinv().memory_floats(64, (1, 32, 32)) == 524_800
    assert ModernHopfield().memory_floats(64, (D,)) == NearestFull().memory_floats(64, (D,)) == 64 * D
    assert NoMemory().memory_floats(64, (D,)) == 0


def test_nearest_full_is_exact_on_stored_and_slightly_distorted_patterns() -> None:
    x, q = strings(3, 64, flips=8)
    b = NearestFull()
    assert torch.equal(b.retrieve_batch(b.store_batch(x), x), x)
    assert torch.equal(b.retrieve_batch(b.store_batch(x), q), x)


def test_modern_hopfield_with_large_beta_is_nearest_neighbour() -> None:
    x, q = strings(4, 96, flips=40, seed=4)
    b = ModernHopfield(beta=10.0, binary=True)
    assert torch.equal(b.retrieve_batch(b.store_batch(x), q), NearestFull().retrieve_batch(x.clone(), q))


@pytest.mark.parametrize("budget", [100, 1000, 4097])
def test_pca_respects_budget(budget: int) -> None:
    b = NearestPCA(budget).fit(images(200))
    for n in (3, 16, 64):
        r = b.store(images(n, seed=1)).shape[-1]
        assert n * r == b.memory_floats(n, (1, 8, 8)) <= budget


@pytest.mark.parametrize("binary", [False, True])
def test_pca_full_rank_retrieves_stored_patterns(binary: bool) -> None:
    b = NearestPCA(budget_floats=64 * 16, binary=binary).fit(images(300, binary=binary))
    x = images(16, binary=binary, seed=5)
    out = b.retrieve(b.store(x), x)
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)
    assert not binary or set(out.unique().tolist()) <= {0.0, 1.0}


def test_downscaled_respects_budget_and_is_exact_at_full_size() -> None:
    b = NearestDownscaled(budget_floats=16_384)
    assert b.size(64, (1, 32, 32)) == (16, 16)
    assert b.size(64, (3, 32, 32)) == (9, 9)
    assert b.memory_floats(63, (3, 32, 32)) <= 16_384
    x = images(16, (3, 8, 8), binary=False)
    full = NearestDownscaled(budget_floats=16 * 3 * 64)
    torch.testing.assert_close(full.retrieve(full.store(x), x), x)
    with pytest.raises(ValueError, match="budget_floats=10"):
        NearestDownscaled(10).size(64, (1, 8, 8))


def _image_set() -> list[Baseline]:
    return make_baselines("grayscale", 2_000, images(100), n_patterns=16)


@pytest.mark.parametrize("b", make_baselines("binary", 8256, None, 16) + [HopfieldPinv(update="async")],
                         ids=lambda b: b.name)
def test_batch_equals_per_episode_and_outputs_in_unit_range_strings(b: Baseline) -> None:
    x, q = strings(3, 16, flips=24, seed=6)
    out = b.retrieve_batch(b.store_batch(x), q)
    assert out.shape == q.shape and out.min() >= 0 and out.max() <= 1
    for i in range(3):
        torch.testing.assert_close(b.retrieve(b.store(x[i]), q[i]), out[i])


@pytest.mark.parametrize("b", _image_set(), ids=lambda b: b.name)
def test_batch_equals_per_episode_and_outputs_in_unit_range_images(b: Baseline) -> None:
    x = images(3 * 16, seed=7).view(3, 16, 1, 8, 8)
    q = x.clone()
    q[..., 2:6, 2:6] = torch.rand(3, 16, 1, 4, 4, generator=torch.Generator().manual_seed(8)).round()
    out = b.retrieve_batch(b.store_batch(x), q)
    assert out.shape == q.shape and out.min() >= 0 and out.max() <= 1
    assert set(out.unique().tolist()) <= {0.0, 1.0}          # binary images stay binary
    for i in range(3):
        torch.testing.assert_close(b.retrieve(b.store(x[i]), q[i]), out[i])


def test_registry_sets() -> None:
    names = [b.name for b in make_baselines("binary", 8256, None, 64)]
    assert names == ["hopfield_hebb", "hopfield_hebb_it1", "hopfield_storkey", "hopfield_storkey_it1",
                     "hopfield_pinv", "hopfield_pinv_it1", "hopfield_pinv_zd",
                     "hopfield_pinv_tuned_gain", "hopfield_pinv_tuned_ridge",
                     "modern_hopfield", "nearest_full", "no_memory"]
    assert [b.name for b in _image_set()] == ["modern_hopfield", "nearest_full", "nearest_robust_full_paste",
                                              "nearest_pca", "nearest_robust_pca_paste", "nearest_robust_pca_bits",
                                              "nearest_downscaled", "hopfield_pinv", "no_memory"]
    colour = make_baselines("colour", 2_000, images(100, (3, 8, 8), binary=False), n_patterns=16)
    assert "hopfield_pinv" not in [b.name for b in colour]
    assert "nearest_pca" not in [b.name for b in make_baselines("grayscale", 2_000, None, 16)]
    with pytest.raises(ValueError, match="'audio'"):
        make_baselines("audio", 2_000, None, 16)


def test_no_memory_returns_the_query() -> None:
    x, q = strings(2, 4, flips=8)
    assert torch.equal(NoMemory().retrieve_batch(NoMemory().store_batch(x), q), q)


# ----------------------------------------------------------------------------- baselines that keep the query

def _decoy_episode(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 binary images: A, and a decoy B that equals A's occluded query except 30 scattered pixels,
    so B is nearer the query by plain L1 (30 < 36) while A differs only inside the 6x6 block."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(1, 16, 16, generator=g) < 0.5).float()
    q = a.clone()
    q[:, 3:9, 5:11] = 1 - q[:, 3:9, 5:11]                            # 36 pixels of a block flipped
    b = q.clone()
    outside = torch.ones(16, 16, dtype=torch.bool)
    outside[3:9, 5:11] = False
    pos = outside.flatten().nonzero().squeeze(1)
    pick = pos[torch.randperm(len(pos), generator=g)[:30]]
    b.view(-1)[pick] = 1 - b.view(-1)[pick]
    return torch.stack([a, b])[None], q[None, None]                    # (1, 2, 1, 16, 16), (1, 1, 1, 16, 16)


def test_robust_distance_ignores_the_occluded_block_where_plain_l1_is_fooled() -> None:
    x, q = _decoy_episode()
    plain = NearestPaste(PixelCodec(256), binary=True, window=0, threshold=0.5, region="image")
    robust = NearestPaste(PixelCodec(256), binary=True, window=6, threshold=0.5, region="window")
    assert torch.equal(plain.retrieve_batch(plain.store_batch(x), q)[0, 0], x[0, 1])     # the decoy
    assert torch.equal(robust.retrieve_batch(robust.store_batch(x), q)[0, 0], x[0, 0])   # the pattern


def test_paste_keeps_the_query_outside_the_square_it_detects() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 8, 3, 16, 16, generator=g)
    q = x.clone()
    q[:, :, :, 4:10, 2:8] = torch.rand(1, 8, 3, 6, 6, generator=g).round()
    pca = PCACodec(torch.full((768,), 0.5), torch.linalg.qr(torch.randn(768, 40, generator=g)).Q)
    b = NearestPaste(pca, window=6, threshold=0.05, region="window")
    out = b.retrieve_batch(b.store_batch(x), q)
    changed = (out != q).any(2)                                        # (1, 8, 16, 16)
    for i in range(8):
        rows, cols = changed[0, i].nonzero(as_tuple=True)
        if len(rows):
            assert rows.max() - rows.min() < 6 and cols.max() - cols.min() < 6   # inside one 6x6 square
    assert b.memory_floats(8, (3, 16, 16)) == 8 * 40


def test_the_bits_baseline_solves_the_square_from_the_stored_code_where_the_paste_blurs() -> None:
    """With more stored code floats than pixels in the square, the bits whose code is the stored one are
    the stored bits; decoding the code (a rank-40 reconstruction of 64 pixels) and pasting it is not."""
    from model.baselines import NearestPCABits
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(1, 6, 1, 8, 8, generator=g) < 0.5).float()
    q = x.clone()
    q[..., 2:6, 3:7] = 1 - x[..., 2:6, 3:7]                           # every pixel of the square wrong
    pca = PCACodec(torch.full((64,), 0.5), torch.linalg.qr(torch.randn(64, 40, generator=g)).Q)
    paste = NearestPaste(pca, binary=True, window=4, threshold=0.3, region="window")
    bits = NearestPCABits(pca, binary=True, window=4, threshold=0.3, region="window")
    wrong = lambda b: int((b.retrieve_batch(b.store_batch(x), q) != x).sum())  # noqa: E731
    assert wrong(bits) == 0 < wrong(paste)
    out = bits.retrieve_batch(bits.store_batch(x), q)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[2:6, 3:7] = False
    assert torch.equal(out[..., outside], q[..., outside])              # the query kept outside the square


def test_paste_knobs_are_fitted_on_the_episodes_given_and_never_worse_there() -> None:
    x, q = _decoy_episode()
    b = NearestPaste(PixelCodec(256), binary=True, window=0, threshold=0.5, region="image")
    err = lambda out, t: (out != t).float().flatten(2).sum(-1).mean()   # noqa: E731
    queries = torch.cat([q, x[:, 1:]], 1)                             # A occluded, the decoy B clean
    before = float(err(b.retrieve_batch(b.store_batch(x), queries), x))
    fitted = b.fit_episodes(x, queries, err, windows=(0, 6))
    assert before > 0 and fitted == {"window": 6, "threshold": 0.05, "region": "window", "train_error": 0.0}
    assert (b.window, b.region) == (6, "window")


def test_pinv_diagonal_gain_interpolates_between_the_classical_and_zero_diagonal_rules() -> None:
    x, q = strings(4, 40, flips=8, seed=2)
    for gain, ref in ((1.0, HopfieldPinv()), (0.0, HopfieldPinv(zero_diagonal=True))):
        b = HopfieldPinv(diag_gain=gain)
        torch.testing.assert_close(b.store_batch(x)["W"], ref.store_batch(x)["W"])
    w = HopfieldPinv(diag_gain=0.3).store_batch(x)["W"]
    full = HopfieldPinv().store_batch(x)["W"]
    torch.testing.assert_close(torch.diagonal(w, dim1=1, dim2=2), 0.3 * torch.diagonal(full, dim1=1, dim2=2))
    # a small ridge barely changes the projection; a large one shrinks it
    small = HopfieldPinv(ridge=1e-6).store_batch(x)["W"]
    torch.testing.assert_close(small, full, atol=1e-4, rtol=1e-4)
    assert HopfieldPinv(ridge=1e3).store_batch(x)["W"].abs().max() < full.abs().max()


def test_tuned_pinv_fits_on_training_episodes_and_beats_the_classical_rule_on_others() -> None:
    err = lambda out, t: (out != t).sum(-1).float().mean()             # noqa: E731
    x_train, q_train = strings(40, 64, flips=8, seed=10)
    x_test, q_test = strings(40, 64, flips=8, seed=11)
    tuned = TunedPinv(search="gain")
    fitted = tuned.fit_episodes(x_train, q_train, err)
    assert fitted["diag_gain"] < 1.0 and tuned.name == "hopfield_pinv_tuned_gain"
    classical = error_bits(HopfieldPinv(), x_test, q_test)
    assert error_bits(tuned, x_test, q_test) < 0.5 * classical


def test_learned_baselines_round_trip_and_keep_their_card(tmp_path) -> None:
    from model.baselines.learned import CodecNet, InpaintNet, load_learned, save_learned
    torch.manual_seed(0)
    for net, kind in ((CodecNet(1, code=32, width=4), "autoencoder"), (InpaintNet(1, width=4), "inpainting")):
        card = {"kind": f"baseline-{kind}", "net": {"channels": 1, **({"code": 32, "width": 4}
                                                                      if kind == "autoencoder" else {"width": 4})}}
        folder = save_learned(net, tmp_path / kind, card)
        back, card2 = load_learned(folder)
        assert card2 == card and not any(t.requires_grad for t in back.parameters())
        x = torch.rand(3, 1, 32, 32)
        if kind == "autoencoder":
            torch.testing.assert_close(back.decode(back.encode(x, 16)), net.decode(net.encode(x, 16)))
            codec = NetCodec(back, 16)
            z = codec.encode(x.view(1, 3, 1, 32, 32))
            assert z.shape == (1, 3, 16) and codec.decode(z, (1, 32, 32)).shape == (1, 3, 1, 32, 32)
        else:
            prior = InpaintPrior(back, binary=True)
            out = prior.retrieve_batch(prior.store_batch(x[None]), x[None])
            assert out.shape == (1, 3, 1, 32, 32) and set(out.unique().tolist()) <= {0.0, 1.0}
            assert prior.memory_floats(64, (1, 32, 32)) == 0
