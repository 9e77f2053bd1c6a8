"""Tests for model.distortions: exact corruption counts, block geometry, masks, seeding, spec parsing."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.distortions import (
    Distorted,
    block,
    describe,
    flip_bits,
    gaussian,
    parse,
    replace_bits,
    salt_pepper,
    user_mask,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def bits(*shape: int, seed: int = 1) -> torch.Tensor:
    return (torch.rand(shape, generator=gen(seed)) < 0.5).float()


# ----------------------------------------------------------------------------- bit flips / replacements

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 20), d=st.integers(1, 300), frac=st.floats(0, 1), seed=st.integers(0, 2**31))
def test_flip_bits_flips_exactly_n_distinct_entries_per_pattern(b, d, frac, seed):
    n = int(frac * d)
    x = bits(b, d, seed=seed)
    out = flip_bits(x, n, gen(seed))
    assert ((out.x != x).sum(dim=1) == n).all()
    assert torch.equal(out.mask, out.x != x)
    assert torch.equal(out.x[out.mask], 1 - x[out.mask])


def test_flip_bits_on_images_counts_over_all_entries():
    x = bits(6, 1, 8, 8)
    out = flip_bits(x, 10, gen())
    assert out.x.shape == x.shape and out.mask.shape == x.shape
    assert ((out.x != x).flatten(1).sum(1) == 10).all()


def test_flip_bits_rejects_more_positions_than_entries():
    with pytest.raises(ValueError, match="n: 9 positions"):
        flip_bits(bits(2, 8), 9, gen())


def test_replace_bits_marks_n_positions_and_changes_about_half():
    x = bits(4000, 64)
    out = replace_bits(x, 16, gen())
    assert (out.mask.sum(dim=1) == 16).all()
    changed = out.x != x
    assert not (changed & ~out.mask).any(), "entries outside the mask must be untouched"
    assert set(out.x[out.mask].unique().tolist()) <= {0.0, 1.0}
    assert 7.7 < changed.sum(dim=1).float().mean() < 8.3


# ----------------------------------------------------------------------------- blocks

@pytest.mark.parametrize("size,shape", [(16, (1, 32, 32)), (5, (3, 12, 9)), (32, (1, 32, 32)), (4, (20,))])
def test_block_is_one_square_inside_the_image_on_all_channels(size, shape):
    x = torch.rand(50, *shape, generator=gen(3))
    out = block(x, size, "zero", gen())
    assert out.x.shape == x.shape and out.mask.dtype == torch.bool
    per_entry = size ** len(shape[1:] if len(shape) == 3 else shape)
    assert (out.mask.flatten(1).sum(1) == per_entry * (shape[0] if len(shape) == 3 else 1)).all()
    if len(shape) == 3:
        assert (out.mask == out.mask[:, :1]).all(), "the block must cover every channel"
        rows, cols = out.mask[:, 0].any(dim=2), out.mask[:, 0].any(dim=1)       # (B, H), (B, W)
        assert (rows.sum(1) == size).all() and (cols.sum(1) == size).all()
        for r in rows:                                                            # contiguous rows
            idx = r.nonzero().flatten()
            assert idx[-1] - idx[0] == size - 1
    assert (out.x[out.mask] == 0).all()
    assert torch.equal(out.x[~out.mask], x[~out.mask])


def test_block_positions_cover_every_valid_corner():
    x = torch.zeros(3000, 1, 10, 10)
    out = block(x, 4, "one", gen())
    tops = out.mask[:, 0].any(dim=2).float().argmax(dim=1)
    lefts = out.mask[:, 0].any(dim=1).float().argmax(dim=1)
    assert set(tops.tolist()) == set(range(7)) and set(lefts.tolist()) == set(range(7))


@pytest.mark.parametrize("fill,check", [
    ("one", lambda v: (v == 1).all()),
    ("gray", lambda v: (v == 0.5).all()),
    (0.25, lambda v: (v == 0.25).all()),
    ("bits", lambda v: set(v.unique().tolist()) == {0.0, 1.0}),
    ("uniform", lambda v: (v > 0).all() and (v < 1).all() and v.unique().numel() > 100),
])
def test_block_fill_values(fill, check):
    out = block(torch.zeros(20, 1, 16, 16), 8, fill, gen())
    assert check(out.x[out.mask])


def test_block_larger_than_image_is_refused():
    with pytest.raises(ValueError, match="size: block of 40"):
        block(torch.zeros(2, 1, 32, 32), 40, "zero", gen())


def test_block_bad_fill_names_the_value():
    with pytest.raises(ValueError, match="fill: unknown value 'purple'"):
        block(torch.zeros(2, 1, 8, 8), 4, "purple", gen())


# ----------------------------------------------------------------------------- noise

def test_salt_pepper_rate_and_values():
    x = torch.full((200, 1, 32, 32), 0.3)
    out = salt_pepper(x, 0.1, gen())
    assert 0.09 < out.mask.float().mean() < 0.11
    assert set(out.x[out.mask].unique().tolist()) == {0.0, 1.0}
    assert (out.x[~out.mask] == 0.3).all()


def test_gaussian_stays_in_unit_range_and_marks_everything():
    x = torch.rand(10, 3, 8, 8, generator=gen(5))
    out = gaussian(x, 0.5, gen())
    assert out.x.min() >= 0 and out.x.max() <= 1 and out.mask.all()
    assert torch.equal(gaussian(x, 0.0, gen()).x, x)


def test_user_mask_broadcasts_over_batch_and_channels():
    x = torch.rand(4, 3, 6, 6, generator=gen(2))
    m = torch.zeros(6, 6, dtype=torch.bool)
    m[:3] = True                                                 # top half of every image
    out = user_mask(x, m, fill="one")
    assert out.mask.shape == x.shape and out.mask[:, :, :3].all() and not out.mask[:, :, 3:].any()
    assert (out.x[:, :, :3] == 1).all() and torch.equal(out.x[:, :, 3:], x[:, :, 3:])


def test_user_mask_with_wrong_shape_names_both_shapes():
    with pytest.raises(ValueError, match=r"mask: shape \(5, 5\).*\(4, 3, 6, 6\)"):
        user_mask(torch.zeros(4, 3, 6, 6), torch.ones(5, 5, dtype=torch.bool))


def test_dtype_is_kept():
    x = bits(3, 40).double()
    for spec in ("flip:3", "replace:3", "saltpepper:0.5", "noise:0.1", "block:4:gray"):
        assert parse(spec)(x, gen()).x.dtype == torch.float64


# ----------------------------------------------------------------------------- seeding

SPECS = ["block:8", "block:8:uniform", "saltpepper:0.2", "noise:0.3", "flip:20", "replace:20"]


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_output_other_seed_other_output(spec):
    x = bits(16, 1, 16, 16)
    a, b, c = (parse(spec)(x, gen(s)) for s in (7, 7, 8))
    assert isinstance(a, Distorted)
    assert torch.equal(a.x, b.x) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.x, c.x)


# ----------------------------------------------------------------------------- specs

def test_describe_reads_like_the_paper():
    assert describe("block:16") == "random 16x16 block filled with random bits"
    assert describe("block:16:zero") == "random 16x16 block filled with zeros"
    assert describe("saltpepper:0.1") == "salt-and-pepper noise on 10% of entries"
    assert describe("flip:8") == "8 random bits flipped"


def test_parse_builds_the_documented_distortions():
    x = bits(5, 64)
    assert (parse("flip:8")(x, gen()).mask.sum(1) == 8).all()
    assert (parse("replace:16")(x, gen()).mask.sum(1) == 16).all()
    img = torch.zeros(5, 1, 32, 32)
    out = parse("block:16:one")(img, gen())
    assert (out.x.sum((1, 2, 3)) == 256).all()


@pytest.mark.parametrize("spec", ["", "block", "block:0", "block:a", "block:16:purple", "block:16:1.5",
                                  "saltpepper:1.5", "saltpepper:x", "noise:-1", "noise:nan", "flip:2.5",
                                  "flip:-3", "flip:8:1", "blur:3", "none:1"])
def test_bad_specs_name_the_spec_and_the_valid_forms(spec):
    with pytest.raises(ValueError) as err:
        parse(spec)
    assert repr(spec) in str(err.value) and "valid forms" in str(err.value) and "block:SIZE" in str(err.value)


valid_specs = st.one_of(
    st.builds(lambda s: f"block:{s}", st.integers(1, 8)),
    st.builds(lambda s, f: f"block:{s}:{f}", st.integers(1, 8),
              st.sampled_from(["bits", "uniform", "zero", "one", "gray", "0.3"])),
    st.builds(lambda r: f"saltpepper:{r}", st.floats(0, 1)),
    st.builds(lambda s: f"noise:{s}", st.floats(0, 5)),
    st.builds(lambda n: f"flip:{n}", st.integers(0, 64)),
    st.builds(lambda n: f"replace:{n}", st.integers(0, 64)),
)


@settings(max_examples=60, deadline=None)
@given(spec=valid_specs)
def test_every_valid_spec_parses_describes_and_keeps_shape(spec):
    x = bits(3, 1, 8, 8)
    out = parse(spec)(x, gen())
    assert out.x.shape == x.shape and out.mask.shape == x.shape
    assert out.x.min() >= 0 and out.x.max() <= 1
    assert isinstance(describe(spec), str) and describe(spec)


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=0, max_size=20))
def test_arbitrary_text_either_parses_or_raises_value_error(text):
    try:
        parse(text)
    except ValueError as e:
        assert "valid forms" in str(e)
