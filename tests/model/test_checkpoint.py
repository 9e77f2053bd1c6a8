"""Checkpoints: safetensors + card round trip; a card that does not match its weights is refused."""
import json

import pytest
import torch

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.config import PRESETS
from model.memory import EBMM


def _saved(tmp_path, name="binary-rnn-small", **fields):
    torch.manual_seed(0)
    model = EBMM(PRESETS[name])
    save_checkpoint(model, tmp_path / "ck", name="ck", **fields)
    return model, tmp_path / "ck"


def _edit_card(folder, fn):
    card = json.loads((folder / "card.json").read_text())
    fn(card)
    (folder / "card.json").write_text(json.dumps(card))


def test_round_trip_restores_every_tensor_and_the_config(tmp_path):
    model, folder = _saved(tmp_path, training={"steps": 3})
    ck = load_checkpoint(folder)
    assert ck.model.cfg == model.cfg and ck.card["training"] == {"steps": 3}
    for (n, a), (_, b) in zip(model.state_dict().items(), ck.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    assert not any(t.requires_grad for t in ck.model.parameters())
    assert oct((folder / "model.safetensors").stat().st_mode)[-3:] == "644"


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["config"]["arch_kwargs"].update(hops=1), "config differs"),         # same shapes
    (lambda c: c["config"]["loop"].update(write_steps=50), "config differs"),
    (lambda c: c.update(kind="colour"), "kind"),
    (lambda c: c.update(input_shape=[3, 32, 32]), "input_shape"),
    (lambda c: c.update(memory_floats=1), "memory_floats"),
    (lambda c: c.update(weights_sha256="0" * 64), "sha256"),
    (lambda c: c.update(card_version=99), "card_version"),
])
def test_a_card_that_does_not_match_is_refused(tmp_path, edit, match):
    _, folder = _saved(tmp_path)
    _edit_card(folder, edit)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(folder)


def test_weights_of_another_architecture_are_refused(tmp_path):
    _, folder = _saved(tmp_path)
    other = EBMM(PRESETS["binary-hopfield"])
    save_checkpoint(other, tmp_path / "other")
    (folder / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    _edit_card(folder, lambda c: c.update(weights_sha256=json.loads(
        (tmp_path / "other" / "card.json").read_text())["weights_sha256"]))
    with pytest.raises(CheckpointError):
        load_checkpoint(folder)


def test_evaluation_results_do_not_survive_new_weights(tmp_path):
    model, folder = _saved(tmp_path, evaluation=[{"error_mean": 0.5}])
    save_checkpoint(model, folder)                       # same weights: the results still hold
    assert json.loads((folder / "card.json").read_text())["evaluation"] == [{"error_mean": 0.5}]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(model, folder)                       # new weights: they are dropped
    assert "evaluation" not in json.loads((folder / "card.json").read_text())


def test_updating_the_card_keeps_the_weights_byte_for_byte(tmp_path):
    from model.checkpoint import update_card
    folder = save_checkpoint(EBMM(PRESETS["binary-hopfield"]), tmp_path / "m", evaluation=[{"error_mean": 1.0}])
    before = (folder / "model.safetensors").read_bytes()
    update_card(folder, familiarity={"threshold": 0.9})
    card = json.loads((folder / "card.json").read_text())
    assert (folder / "model.safetensors").read_bytes() == before
    assert card["familiarity"] == {"threshold": 0.9} and card["evaluation"] == [{"error_mean": 1.0}]
    load_checkpoint(folder)                                        # still a valid checkpoint
    (folder / "model.safetensors").write_bytes(before[:-1] + bytes([before[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="does not describe these weights"):
        update_card(folder, familiarity={})
