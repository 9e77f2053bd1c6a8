"""Meta-training learns: a tiny model, trained inside the test, stores and retrieves random patterns."""
import pytest
import torch

from model.evaluate import Protocol, evaluate
from model.train import TrainConfig, train


@pytest.mark.slow
def test_meta_training_turns_a_non_memory_into_a_memory(tmp_path):
    # write rates and read step start so small that writing stores nothing and reading barely moves:
    # everything the model does at the end, it learned in this test
    cfg = TrainConfig(preset="binary-hopfield", task="binary", distortion="flip:16", patterns=(16,),
                      meta_batch=2, steps=150, lr=1e-3, loop_lr=3e-2, clip=1.0, seed=0, threads=1,
                      checkpoint_every=150, out=str(tmp_path / "ck"), state_dir=str(tmp_path / "state"),
                      overrides={"write_rate_init": 1e-6, "read_rate_init": 0.02})
    proto = Protocol("binary", patterns=16, distortion="flip:16", episodes=50, seed=123)
    untrained = train(TrainConfig(**{**cfg.__dict__, "steps": 0, "out": str(tmp_path / "u"),
                                     "state_dir": str(tmp_path / "u_state")}), progress=False)
    before = evaluate(untrained, proto)
    model = train(cfg, progress=False)
    after = evaluate(model, proto)
    assert before["query_error_mean"] == pytest.approx(16.0)
    assert before["error_mean"] > 12.0, before            # no memory to start with
    assert after["error_mean"] < 0.25 * after["query_error_mean"], after
    assert after["error_mean"] < 0.25 * before["error_mean"]


def test_training_resumes_exactly(tmp_path):
    base = dict(preset="binary-hopfield", task="binary", distortion="flip:8", patterns=(8, 16),
                meta_batch=2, lr=1e-3, loop_lr=1e-2, clip=1.0, seed=3, threads=1, checkpoint_every=3)
    straight = train(TrainConfig(**base, steps=6, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")),
                     progress=False)
    train(TrainConfig(**base, steps=3, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")), progress=False)
    resumed = train(TrainConfig(**base, steps=6, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")),
                    progress=False)
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=False):
        assert torch.equal(a, b), f"{n} differs after resume"
    log = (tmp_path / "sb" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 6


def test_a_run_cut_into_wall_clock_segments_resumes_exactly(tmp_path):
    import json
    base = dict(preset="binary-hopfield", task="binary", distortion="flip:8", patterns=(8, 16), meta_batch=2,
                lr=1e-3, loop_lr=1e-2, clip=1.0, seed=4, threads=1, checkpoint_every=100, steps=3)
    straight = train(TrainConfig(**base, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")), progress=False)
    # a segment of ~0 s stops (and checkpoints) after its first step; each rerun of the same command resumes
    for done in (1, 2, 3):
        seg = train(TrainConfig(**base, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb"),
                                segment_seconds=1e-9), progress=False)
        card = json.loads((tmp_path / "b" / "card.json").read_text())
        assert card["training"]["steps"] == done
    for (n, a), (_, b) in zip(straight.named_parameters(), seg.named_parameters(), strict=True):
        assert torch.equal(a, b), f"{n} differs after three segments"
    assert len((tmp_path / "sb" / "metrics.jsonl").read_text().splitlines()) == 3


def test_training_is_deterministic_given_a_seed(tmp_path):
    base = dict(preset="binary-hopfield", task="binary", distortion="flip:8", patterns=(8,), meta_batch=2,
                steps=3, lr=1e-3, loop_lr=1e-2, clip=1.0, seed=5, threads=1, checkpoint_every=100)
    a = train(TrainConfig(**base, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")), progress=False)
    b = train(TrainConfig(**base, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=False))


def test_resuming_with_other_settings_is_refused_and_a_finished_run_still_writes_its_checkpoint(tmp_path):
    base = dict(preset="binary-hopfield", task="binary", distortion="flip:8", patterns=(8,), meta_batch=2,
                lr=1e-3, loop_lr=1e-2, clip=1.0, seed=3, threads=1, checkpoint_every=2,
                state_dir=str(tmp_path / "s"))
    train(TrainConfig(**base, steps=2, out=str(tmp_path / "a")), progress=False)
    with pytest.raises(ValueError, match="lr"):
        train(TrainConfig(**{**base, "lr": 1e-2}, steps=4, out=str(tmp_path / "a")), progress=False)
    train(TrainConfig(**base, steps=2, out=str(tmp_path / "b")), progress=False)   # done: just writes it
    assert (tmp_path / "b" / "card.json").exists()
    assert len((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_curriculum_with_cheap_meta_steps_resumes_exactly_and_follows_its_stages(tmp_path):
    import json
    base = dict(preset="binary-hopfield", task="binary", meta_batch=1, lr=1e-3, loop_lr=1e-2, clip=1.0, seed=5,
                threads=1, checkpoint_every=2, stages="0:8:flip:4;2:16:flip:8;4:24:flip:12", read_queries=4,
                train_read_steps=2)
    straight = train(TrainConfig(**base, steps=5, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")),
                     progress=False)
    train(TrainConfig(**base, steps=2, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")), progress=False)
    resumed = train(TrainConfig(**base, steps=5, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")),
                    progress=False)
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=False):
        assert torch.equal(a, b), f"{n} differs after resume"
    rows = [json.loads(r) for r in (tmp_path / "sb" / "metrics.jsonl").read_text().splitlines()]
    assert [r["n"] for r in rows] == [8, 8, 16, 16, 24]
    assert [round(r["query_error"]) for r in rows] == [4, 4, 8, 8, 12]     # the stage's distortion
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["training"]["stages"] == base["stages"] and card["training"]["read_queries"] == 4


def test_the_cheap_meta_loss_reads_only_the_queries_it_is_told_to():
    from model.config import get_preset
    from model.memory import EBMM
    from model.meta import episode_loss
    torch.manual_seed(0)
    m = EBMM(get_preset("binary-hopfield"))
    x = (torch.rand(16, 128) < 0.5).float()
    q = x.clone()
    q[:4, :8] = 1 - q[:4, :8]                      # only the first four queries are distorted
    assert episode_loss(m, x, q, read_queries=4, read_steps=1).query_error == pytest.approx(8.0)
    assert episode_loss(m, x, q).query_error == pytest.approx(2.0)


def test_an_autoencoder_warm_start_runs_once_before_the_first_meta_step_and_not_on_resume(tmp_path, monkeypatch):
    """`--autoencoder-seconds`: a fresh run trains the trunk first (recorded in the resume state); resuming
    keeps that trunk and does not train it again."""
    import json

    import model.warm_start as warm_start
    calls = []
    real = warm_start.autoencode_trunk
    monkeypatch.setattr(warm_start, "autoencode_trunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    base = dict(preset="paper-fc-d36-gray", task="characters", distortion="block:16", patterns=(8,),
                meta_batch=1, lr=1e-4, seed=6, threads=1, checkpoint_every=100, read_queries=4,
                train_read_steps=1, overrides={"grad_norm_term": False})
    cold = train(TrainConfig(**base, steps=1, out=str(tmp_path / "u"), state_dir=str(tmp_path / "su")),
                 progress=False)
    warm = train(TrainConfig(**base, steps=1, autoencoder_seconds=1.0, out=str(tmp_path / "w"),
                             state_dir=str(tmp_path / "sw")), progress=False)
    info = json.loads((tmp_path / "sw" / "state.json").read_text())["warm_start"]
    assert info["kind"] == "autoencoder" and info["steps"] >= 1 and info["parameters"] > 0
    # the same meta-step from the same seed, with and without the warm start: only the trunk differs by it
    trunk = [n for n, _ in warm.named_parameters() if n.startswith("energy.res")]
    w, c = dict(warm.named_parameters()), dict(cold.named_parameters())
    assert trunk and all(not torch.allclose(w[n], c[n]) for n in trunk)
    train(TrainConfig(**base, steps=2, autoencoder_seconds=1.0, out=str(tmp_path / "w"),
                      state_dir=str(tmp_path / "sw")), progress=False)
    assert calls == [1]                                           # the resumed run did not warm-start again
    assert json.loads((tmp_path / "sw" / "state.json").read_text())["warm_start"] == info
    assert json.loads((tmp_path / "sw" / "state.json").read_text())["step"] == 2


def test_a_warm_start_from_a_checkpoint_refuses_the_autoencoder_too(tmp_path):
    from pathlib import Path
    ckpt = Path(__file__).resolve().parents[2] / "checkpoints" / "characters32"
    with pytest.raises(ValueError, match="autoencoder_seconds=1.0 with init="):
        train(TrainConfig(preset="paper-fc-d36-gray", task="characters", steps=1, init=str(ckpt),
                          autoencoder_seconds=1.0, out=str(tmp_path / "w"), state_dir=str(tmp_path / "s")),
              progress=False)


def _characters(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    from model import data, distortions
    g = torch.Generator().manual_seed(seed)
    x = data.sample_episodes(data.load("characters", "train"), n, 1, g)[0]
    return x, distortions.parse("block:8")(x, g).x


def test_distillation_pulls_a_read_step_towards_the_teachers_recall_and_leaves_the_teacher_alone():
    """`--distill`: from the teacher's read states, one read step of the model should land on the teacher's
    recall; the term carries gradients to the model's weights (it falls when trained alone) and none to
    the teacher, which stays fixed."""
    from pathlib import Path

    from model.checkpoint import load_checkpoint
    from model.config import get_preset
    from model.memory import EBMM, write
    from model.meta import Distill, distill_term
    teacher = load_checkpoint(Path(__file__).resolve().parents[2] / "checkpoints" / "characters32-8k").model
    before = {n: t.clone() for n, t in teacher.state_dict().items()}
    d = Distill(teacher, weight=1.0, states=2)
    x, q = _characters(8)
    states, recall = d.trajectory(x, q)
    assert states.shape == (2, *q.shape) and torch.equal(states[0], q)          # from the query on
    assert (recall - x).pow(2).sum() < 0.5 * (q - x).pow(2).sum()               # the teacher recalls
    torch.manual_seed(0)
    model = EBMM(get_preset("paper-fc-d36-gray").replace(grad_norm_term=False)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    terms = []
    for _ in range(15):
        p = model.params()
        term = distill_term(model, p, write(model, p, x, create_graph=True).weights, d, x, q)
        opt.zero_grad()
        term.backward()
        opt.step()
        terms.append(float(term.detach()))
    assert terms[-1] < 0.7 * terms[0], terms
    assert all(torch.equal(t, before[n]) for n, t in teacher.state_dict().items())
    with pytest.raises(ValueError, match="both must be positive"):
        Distill(teacher, weight=0.0)


def test_the_distillation_term_is_on_for_its_steps_only_and_a_run_with_it_resumes_exactly(tmp_path):
    import json
    from pathlib import Path
    teacher = str(Path(__file__).resolve().parents[2] / "checkpoints" / "characters32-8k")
    base = dict(preset="paper-fc-d36-gray", task="characters", distortion="block:8", patterns=(8,),
                meta_batch=1, lr=1e-4, seed=7, threads=1, checkpoint_every=100, read_queries=4,
                train_read_steps=1, overrides={"grad_norm_term": False}, distill=teacher, distill_steps=2,
                distill_states=2)
    straight = train(TrainConfig(**base, steps=3, out=str(tmp_path / "a"), state_dir=str(tmp_path / "sa")),
                     progress=False)
    rows = [json.loads(r) for r in (tmp_path / "sa" / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("distill_error", 0) > 0 for r in rows] == [True, True, False]
    card = json.loads((tmp_path / "a" / "card.json").read_text())
    sha = json.loads((Path(teacher) / "card.json").read_text())["weights_sha256"]
    assert card["training"]["distill"] == {"teacher": teacher, "teacher_sha256": sha, "weight": 1.0, "steps": 2,
                                           "states": 2}
    train(TrainConfig(**base, steps=2, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")), progress=False)
    resumed = train(TrainConfig(**base, steps=3, out=str(tmp_path / "b"), state_dir=str(tmp_path / "sb")),
                    progress=False)
    for (n, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), f"{n} differs after resume"
    one = {}
    for name, distill in (("with", teacher), ("without", "")):     # the same first step, with and without
        one[name] = train(TrainConfig(**{**base, "distill": distill}, steps=1, out=str(tmp_path / name),
                                      state_dir=str(tmp_path / ("s" + name))), progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(one["with"].parameters(), one["without"].parameters(),
                                                      strict=True))
    # the logged loss is the meta-loss of the same first episode plus the term at its weight (1)
    plain = json.loads((tmp_path / "swithout" / "metrics.jsonl").read_text().splitlines()[0])
    assert rows[0]["loss"] == pytest.approx(plain["loss"] + rows[0]["distill_error"], rel=1e-5)


def test_a_teacher_of_another_shape_is_refused(tmp_path):
    from pathlib import Path
    teacher = str(Path(__file__).resolve().parents[2] / "checkpoints" / "binary128")
    with pytest.raises(ValueError, match="the teacher reads"):
        train(TrainConfig(preset="paper-fc-d36-gray", task="characters", steps=1, distill=teacher,
                          out=str(tmp_path / "w"), state_dir=str(tmp_path / "s")), progress=False)
