"""`ebmm serve` and `ebmm bench-service` are added to the model's parser; serve refuses bad setups."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.bench import _server_timing, _summary, workload
from service.cli import main


@pytest.fixture(autouse=True)
def private_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve exports its flags as EBMM_* for the worker processes: keep them out of other tests."""
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if not k.startswith("EBMM_")})


def test_help_lists_service_and_model_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "serve" in out and "bench-service" in out and "presets" in out


def test_serve_without_checkpoints_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--checkpoint-dir", str(tmp_path)]) == 2
    assert f"no checkpoints in {tmp_path}" in capsys.readouterr().err


def test_serve_refuses_unsafe_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", "4"]) == 2                  # with the in-process store
    assert "workers=4" in capsys.readouterr().err


def test_bench_workload_and_summary() -> None:
    write, read = workload({"name": "shapes16", "input_shape": [1, 16, 16], "kind": "binary"}, 3)
    assert len(write["files"]) == 3 and len(read["files"]) == 4     # 3 queries and one mask
    write, read = workload({"name": "binary128", "input_shape": [128], "kind": "binary"}, 2)
    assert len(read["json"]["queries"]["bits"][0]) == 128
    timing = _server_timing("parse;dur=1.00, model;dur=90.00, total;dur=95.5")
    assert timing == {"parse": 1.0, "model": 90.0, "total": 95.5}
    s = _summary([100.0], [{**timing, "client": 100.0}], {201: 1}, 1.0, 1)
    assert s["outside_model_share_median"] == 0.1 and s["requests_per_s"] == 1.0


def test_bench_raw_client_needs_npy_bodies(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench-service", "--client", "raw", "--payload", "png"]) == 2
    assert "--client raw sends .npy bodies only" in capsys.readouterr().err
