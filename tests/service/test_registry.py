"""Loading the served models (service/registry.py): EBMM_COMPILE_READS compiles and checks the named models'
1-query reads at start-up, every kind a retrieve makes, and leaves the others eager."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from model import compiled
from service.registry import compile_names, load_models


def test_compile_names_picks_the_loaded_models_named_and_warns_of_others(caplog: pytest.LogCaptureFixture) -> None:
    names = ["binary128", "shapes16", "colour8"]
    assert compile_names("", names) == []
    assert compile_names("all", names) == names
    with caplog.at_level(logging.WARNING, logger="uvicorn.error.ebmm"):
        assert compile_names(" colour8, nope ,binary128", names) == ["binary128", "colour8"]
    assert "'nope', which is not loaded" in caplog.text
    assert compile_names("Colour8,BINARY128", names) == ["binary128", "colour8"]     # any case
    assert compile_names("binary128, ALL", names) == names                          # all among names: all


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile's CPU backend needs a C compiler")
def test_the_models_named_read_compiled_and_as_the_eager_read(checkpoint_dir: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="uvicorn.error.ebmm"):
        models = load_models(checkpoint_dir, torch.device("cpu"), "binary128")
    m = models["binary128"]
    kinds = m.memory.ckpt.model.compiled_reads
    got = {(k["masked"], k["energies"]): k["status"] for k in kinds.summary()}
    assert got == {(False, "all"): "used", (False, "last"): "used", (True, "all"): "used", (True, "last"): "used"}
    assert "model binary128: compiled read of 1 masked query (energies last): used" in caplog.text
    assert all("compiled_reads" not in o.memory.ckpt.model.__dict__ for n, o in models.items() if n != "binary128")
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(6, *m.input_shape, generator=g) < 0.5).float()
    w = m.memory.write(x).weights
    q = x[:1].clone()
    q[:, :20] = 1 - q[:, :20]
    (kind,) = [v for k, v in kinds.kinds.items() if not k[3] and not k[4]]   # unmasked, every energy
    calls = []
    fn = kind.fn
    kind.fn = lambda *a: calls.append(1) or fn(*a)
    served = m.memory.read(w, q)
    assert calls == [1]                                                        # it ran compiled
    assert m.memory.read(w, q, steps=2).iterates.shape[0] == 3                 # other steps: eager, no new kind
    assert len(kinds.summary()) == 4
    compiled.disable(m.memory.ckpt.model)
    eager = m.memory.read(w, q)
    torch.testing.assert_close(served.iterates, eager.iterates, atol=1e-5, rtol=0)
    torch.testing.assert_close(served.energies, eager.energies, atol=1e-5, rtol=1e-5)
