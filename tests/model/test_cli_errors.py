"""`ebmm` model commands fail with one line that says what is wrong and how to fix it, exit status 2."""
from __future__ import annotations

import pytest

from model.cli import main


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    with pytest.raises(SystemExit) as exc:   # argparse exits; our handlers return 2
        raise SystemExit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_a_missing_checkpoint_says_where_and_what_a_checkpoint_is(tmp_path, capsys):
    _fails(["evaluate", "--checkpoint", str(tmp_path / "nowhere")], capsys,
           "ebmm evaluate: error:", "does not exist", "card.json")


def test_a_missing_dataset_says_how_to_fetch_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path))
    _fails(["evaluate", "--checkpoint", "checkpoints/characters32", "--episodes", "1"], capsys,
           "'characters'", "ebmm data fetch characters")


def test_a_bad_flag_is_one_line_with_the_help_command(capsys):
    _fails(["evaluate", "--checkpoint", "x", "--no-such-flag"], capsys, "--no-such-flag", "ebmm --help")
    _fails(["evaluate"], capsys, "--checkpoint", "ebmm evaluate --help")


def test_bad_values_name_the_value(capsys):
    _fails(["train", "--preset", "nope", "--steps", "1"], capsys, "'nope'")
    _fails(["evaluate", "--checkpoint", "checkpoints/characters32", "--distortion", "blok:3"], capsys, "'blok:3'")
    _fails(["train", "--set", "novalue"], capsys, "KEY=VALUE")
