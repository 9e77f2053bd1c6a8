"""Familiarity: its formula, the square it forgives, the mask, the ROC AUC helper, calibration."""
import torch

from model.config import PRESETS
from model.familiarity import calibrate, familiarity, roc_auc
from model.memory import EBMM


def test_familiarity_is_one_minus_the_mean_disagreement():
    q = torch.zeros(2, 10)
    r = q.clone()
    r[1, :3] = 1.0                                             # 3 of 10 entries disagree fully
    torch.testing.assert_close(familiarity(q, r), torch.tensor([1.0, 0.7]))


def test_the_most_disagreeing_square_is_forgiven_and_only_it():
    q = torch.zeros(1, 1, 8, 8)
    block = q.clone()
    block[..., 2:5, 3:6] = 1.0                                 # an occluded 3x3 square
    scattered = q.clone()
    scattered.view(-1)[torch.arange(0, 64, 7)] = 1.0          # 10 entries spread out
    assert familiarity(q, block, window=3).item() == 1.0
    assert familiarity(q, block, window=0).item() < 1.0
    assert familiarity(q, scattered, window=3).item() < 1.0


def test_with_a_mask_only_the_known_pixels_count():
    q = torch.zeros(1, 1, 4, 4)
    r = q.clone()
    r[..., :2, :] = 1.0
    known = torch.zeros_like(q, dtype=torch.bool)
    known[..., 2:, :] = True
    assert familiarity(q, r, known=known).item() == 1.0
    assert familiarity(q, r, known=~known).item() == 0.0


def test_roc_auc():
    assert roc_auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert roc_auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert abs(roc_auc(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 0.0])) - 0.75) < 1e-9


def test_calibration_leaves_the_chosen_share_of_never_stored_training_queries_above_the_threshold():
    from model.familiarity import _episodes, scores
    model = EBMM(PRESETS["binary-hopfield"])                   # untrained: a Hebb-like quadratic memory
    cal = calibrate(model, "binary", "flip:8", patterns=16, episodes=10, rate=0.05)
    assert cal["window"] == 0 and cal["calibrated_on"]["split"] == "train" and cal["calibration_quantile"] == 0.95
    g = torch.Generator().manual_seed(0)                       # the same training episodes calibrate() drew
    s = scores(model, *_episodes("binary", "train", 16, 10, (128,), g), "flip:8", 0, g)
    above = float((s["new_clean"] > cal["threshold"]).double().mean())
    assert 0.0 < above <= 0.05 + 1e-9
    assert float((s["stored_clean"] >= cal["threshold"]).double().mean()) > above


def test_the_threshold_lets_at_most_the_chosen_share_match_even_when_scores_tie_at_zero():
    from model.familiarity import threshold_for
    new = torch.cat([torch.zeros(995), torch.linspace(0.2, 0.9, 5)])      # most never-stored queries score 0
    t = threshold_for(new, 0.005)
    assert 0.0 < t <= 0.2 + 1e-6 and float((new >= t).double().mean()) <= 0.005
    assert threshold_for(torch.zeros(1000), 0.005) > 0.0                  # nothing never-stored may match
    spread = torch.linspace(0, 1, 1001)
    t = threshold_for(spread, 0.01)
    assert float((spread >= t).double().mean()) <= 0.01 and float((spread >= t - 2e-3).double().mean()) > 0.01


def test_slot_memories_compare_the_query_projection_with_the_nearest_slot():
    """Slot memories: stored patterns score higher than never-stored ones through their two views."""
    from model.config import LoopConfig, ModelConfig
    from model.familiarity import memory_familiarity
    from model.memory import read, write
    cfg = ModelConfig("t-idx", "subspace_slots", (1, 8, 8), "binary", dict(rank=40, slots=16, assign="indexed"),
                      LoopConfig(write_steps=6, write_rate_init=0.9, grad_norm_term=False, write_reduction="sum"))
    model = EBMM(cfg)
    g = torch.Generator().manual_seed(0)
    model.energy.data_init((torch.rand(512, 1, 8, 8, generator=g) < 0.5).float())
    p = model.params(detach=True)
    stored, never = (torch.rand(2, 16, 1, 8, 8, generator=g) < 0.5).float()
    w = write(model, p, stored).weights
    views = model.energy.familiarity_views(model._energy_params({**p, **w}), stored, stored)
    assert views is not None and views[0].shape == views[1].shape == stored.shape
    fam = {name: memory_familiarity(model, p, w, x, read(model, p, w, x).iterates[-1], window=3)
           for name, x in (("stored", stored), ("never", never))}
    assert fam["stored"].min() > fam["never"].max()


def test_a_square_as_large_as_the_image_falls_back_to_the_plain_mean():
    q, r = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5)
    f = familiarity(q, r, window=16)
    assert torch.isfinite(f).all() and f.item() == 0.5


def test_false_matches_say_how_near_they_lie_to_a_stored_pattern():
    from model.familiarity import _false_matches
    s = {"new_clean": torch.tensor([0.1, 0.95, 0.2, 0.99]), "new_nearest": torch.tensor([50.0, 2.0, 60.0, 4.0])}
    out = _false_matches(s, threshold=0.9)
    assert out["count"] == 2 and out["of"] == 4
    assert out["nearest_stored_error"] == {"median": 3.0, "max": 4.0}
    assert out["every_never_stored_nearest_error"]["median"] == 27.0
    assert _false_matches(s, threshold=1.5)["nearest_stored_error"] is None


def test_crowded_calibration_episodes_come_from_the_chosen_number_of_source_photos():
    """Photos: calibration episodes are drawn from as many source photos as the held-out split has, so that
    never-stored crops lie as near stored ones (crops of the same photo) as they will there."""
    import pytest

    from model.data.common import Dataset
    from model.familiarity import _crowded_indices
    per, photos = 50, 10                                          # crops of photo i: rows [50 i, 50 (i + 1))
    ds = Dataset("photos", "train", torch.zeros(per * photos, 3, 4, 4), None,
                 {"photos": [f"p{i}.png" for i in range(photos)]})
    g = torch.Generator().manual_seed(0)
    episodes = _crowded_indices(ds, 80, 20, 2, g)
    assert len(episodes) == 20
    for idx in episodes:
        assert idx.numel() == 80 and idx.unique().numel() == 80               # distinct images
        assert (idx // per).unique().numel() == 2                              # from two photos only
    assert len({tuple(sorted((idx // per).unique().tolist())) for idx in episodes}) > 1   # not always the same
    with pytest.raises(ValueError, match="fewer than the 120 an episode needs"):
        _crowded_indices(ds, 120, 1, 2, g)
    with pytest.raises(ValueError, match="does not list its source photos"):
        _crowded_indices(Dataset("x", "train", torch.zeros(10, 1), None), 4, 1, 2, g)
