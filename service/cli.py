"""The `ebmm` entry point: the model commands plus `serve` (added by the service)."""
from __future__ import annotations

import sys

from model.cli import build_parser, main as model_main


def main(argv: list[str] | None = None) -> int:
    parser, sub = build_parser()
    return model_main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
