"""`ebmm bench-compare` measures EBMM, faiss nearest neighbour and a modern Hopfield read on the same episodes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("faiss")


def test_bench_compare_reports_every_method_on_the_same_episodes(checkpoint_dir: Path, tmp_path: Path) -> None:
    from model.compare import run
    text = run([str(checkpoint_dir / "binary128")], episodes=2, patterns=16, out_json=str(tmp_path / "b.json"),
               out_md=str(tmp_path / "b.md"), command="ebmm bench-compare (test)")
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    methods = rows[0]["methods"]
    assert set(methods) == {"ebmm", "nearest_faiss_flat", "modern_hopfield_one_step"}
    assert methods["nearest_faiss_flat"]["error_mean"] == 0.0             # exact lookup of a stored pattern
    assert all(m["read_ms_per_query"] > 0 for m in methods.values())
    assert methods["ebmm"]["memory_floats"] == 8256 and methods["nearest_faiss_flat"]["memory_floats"] == 16 * 128
    assert "nearest_faiss_flat" in text and "(test)" in text
