"""The README's first example, run as written against a real `ebmm serve` with the shipped checkpoints:
a newcomer's first contact must work and show what it says it shows."""
from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def first_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### A first example", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_first_example_restores_the_occluded_characters(server_factory: Callable, monkeypatch: Any) -> None:
    if not (REPO / "checkpoints" / "characters32" / "card.json").exists():
        pytest.skip("no shipped characters32 checkpoint")
    server = server_factory(checkpoint_dir=REPO / "checkpoints")
    code = first_example().replace("http://127.0.0.1:8000", server.url)
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    before = np.array(re.findall(r"\d+", lines[0].split(":", 1)[1]), int)
    after = np.array(re.findall(r"\d+", lines[1].split(":", 1)[1]), int)
    assert len(before) == len(after) == 4
    assert (before > 90).all() and (before < 170).all(), lines           # "about 128 wrong pixels"
    assert (after <= 20).all(), lines                                     # "a handful after"
    assert "match: [True, True, True, True]" in lines[2], lines
