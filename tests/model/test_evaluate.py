"""The evaluation harness: per-pattern metrics, percentile summaries, protocol bookkeeping."""
import pytest
import torch

from model.config import PRESETS
from model.evaluate import Protocol, evaluate, per_pattern_error, summarise
from model.memory import EBMM


def test_squared_error_sums_every_channel_of_an_image_whatever_the_leading_dims():
    ones, zeros = torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 8, 8)
    assert per_pattern_error(ones, zeros, "squared_error", 3).tolist() == [192.0, 192.0]
    assert per_pattern_error(ones[None], zeros[None], "squared_error", 3).shape == (1, 2)


def test_hamming_thresholds_the_output_at_one_half():
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    out = torch.tensor([[0.49, 0.51, 0.2, 0.9]])
    assert per_pattern_error(out, target, "error_bits", 1).tolist() == [2.0]


def test_summary_is_over_per_episode_means():
    s = summarise(torch.arange(101, dtype=torch.float))           # episodes' mean errors 0..100
    assert (s["error_mean"], s["error_p5"], s["error_p95"]) == (50.0, 5.0, 95.0)


def test_zero_read_steps_returns_the_query_and_says_so():
    model = EBMM(PRESETS["binary-hopfield"])
    r = evaluate(model, Protocol("binary", 8, "flip:4", episodes=5, seed=1), read_steps=0)
    assert r["read_steps"] == 0 and r["error_mean"] == r["query_error_mean"] == 4.0


def test_baseline_knobs_come_from_training_episodes_not_the_test_ones():
    """Baselines fit their knobs on episodes of the training split (characters: class-disjoint)."""
    from model import data
    from model.evaluate import FIT_SEED, make_episodes
    try:
        test = data.load("characters", "test").images
    except data.MissingDataError:
        pytest.skip("characters data not fetched: `make test` fetches it, or run `ebmm data fetch characters`")
    fit_x, _, _ = make_episodes(Protocol("characters", 16, "block:16", 2, FIT_SEED), (1, 32, 32), split="train")
    seen = {bytes(t.to(torch.uint8).flatten().tolist()) for t in test}
    assert not any(bytes(t.to(torch.uint8).flatten().tolist()) in seen for t in fit_x.flatten(0, 1))
