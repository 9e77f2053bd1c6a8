"""`ebmm` model commands (presets, demo, train, evaluate, bench, report, data); thin wrappers.

The service adds `serve` and `bench-service` on top of this parser (service/cli.py), so that
model/ never imports service/.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


def _presets(args: argparse.Namespace) -> int:
    from .config import PRESETS
    from .memory import EBMM
    rows = []
    for name, cfg in PRESETS.items():
        m = EBMM(cfg)
        rows.append({"name": name, "arch": cfg.arch, "kind": cfg.kind, "input_shape": list(cfg.input_shape),
                     "parameters": sum(t.numel() for t in m.parameters()),
                     "memory_floats": m.memory_floats, "note": cfg.note})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['name']:24s} {r['arch']:12s} {str(tuple(r['input_shape'])):14s} "
                  f"params {r['parameters']:>9,d}  memory {r['memory_floats']:>7,d} floats")
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction]:
    parser = argparse.ArgumentParser(prog="ebmm", description="Energy-Based Memory Models")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("presets", help="list model presets with their sizes")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_presets)
    return parser, sub


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    if parser is None:
        parser, _ = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
