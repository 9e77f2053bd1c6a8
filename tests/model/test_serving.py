"""model/serving.py: serving reads run in inference mode and answer what plain reads answer."""
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.familiarity import query_familiarity
from model.memory import read, write
from model.serving import Memory

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["binary128-rnn", "characters32"])
def test_serving_reads_equal_plain_reads_and_leave_the_model_trainable(name):
    ck = load_checkpoint(REPO / "checkpoints" / name)
    m = Memory(ck)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, *m.input_shape, generator=g) < 0.5).float()
    q = x.clone()
    q.view(8, -1)[:, :40] = 0.5
    p = ck.model.params(detach=True)
    w = write(ck.model, p, x, fast=False).weights     # autograd: no memo of the fast paths is made before ...
    served = m.read(w, q)                             # ... the served read, which makes them in inference mode
    plain = read(ck.model, p, w, q)
    assert torch.equal(served.iterates, plain.iterates) and torch.equal(served.energies, plain.energies)
    assert served.iterates.is_inference() and not plain.iterates.is_inference()
    (many, fam), = m.read_many([w], [q])
    assert torch.equal(many.iterates, plain.iterates)
    assert torch.equal(fam, query_familiarity(ck.model, p, w, q, plain.iterates[-1], m.familiarity_window))
    # what the fast path remembered inside inference mode serves the next plain read, and a read with a
    # graph to the parameters (meta-training) still runs on the same model afterwards
    assert torch.equal(read(ck.model, p, w, q).iterates, plain.iterates)
    live = ck.model.params()
    for t in live.values():
        t.requires_grad_(True)
    ws = write(ck.model, live, x, create_graph=True).weights
    loss = read(ck.model, live, ws, q, create_graph=True).iterates[-1].sub(x).pow(2).mean()
    loss.backward()
    assert all(t.grad is not None for n, t in live.items() if n.startswith("loop.read"))
