"""The autoencoder warm start trains the deep energy's trunk, and nothing else, to reconstruct images."""
from __future__ import annotations

import pytest
import torch

from model.config import get_preset
from model.memory import EBMM
from model.warm_start import autoencode_trunk


def _images(m: int) -> torch.Tensor:
    """Blocky binary images with structure an encoder can learn: random 4x4 grids blown up to 32x32."""
    g = torch.Generator().manual_seed(0)
    small = (torch.rand(m, 1, 4, 4, generator=g) > 0.5).float()
    return small.repeat_interleave(8, 2).repeat_interleave(8, 3)


@pytest.mark.parametrize("preset", ["paper-fc-d36-gray", "paper-conv-d8-gray"])
def test_the_trunk_learns_to_reconstruct_and_nothing_else_moves(preset: str) -> None:
    torch.manual_seed(0)
    model = EBMM(get_preset(preset))
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    log = autoencode_trunk(model, _images(256), steps=40, batch=32, lr=3e-3)
    assert log.steps == 40 and len(log.losses) == 40
    assert sum(log.losses[-5:]) / 5 < 0.8 * sum(log.losses[:5]) / 5, log.losses   # it learns
    moved = {n for n, t in model.named_parameters() if not torch.equal(t, before[n])}
    assert moved == set(log.changed) and moved                       # exactly the trunk's parameters
    assert not any(n.startswith("loop.") for n in moved)
    assert not any(n.startswith("energy.memory") for n in moved)     # the writable slice keeps its init
    assert all(t.requires_grad for t in model.parameters())          # ready for meta-training


def test_it_needs_a_budget() -> None:
    with pytest.raises(ValueError, match="steps > 0 or seconds > 0"):
        autoencode_trunk(EBMM(get_preset("paper-fc-d36-gray")), _images(8))
