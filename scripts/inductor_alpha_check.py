"""Does this torch's inductor drop the alpha of torch.add(x, a @ b, alpha=c)? (Why model/compiled.py compiles with
the pattern matcher off.) Writes results/explore/inductor-alpha.json.

    .venv/bin/python scripts/inductor_alpha_check.py
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parents[1] / "results" / "explore" / "inductor-alpha.json"


def f(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.add(x, a @ b, alpha=-2.0)


def main() -> None:
    g = torch.Generator().manual_seed(0)
    x, a, b = torch.randn(1, 8, generator=g), torch.randn(1, 4, generator=g), torch.randn(4, 8, generator=g)
    want, without_alpha = f(x, a, b), x + a @ b
    rows = []
    for options in ({}, {"pattern_matcher": False}):
        torch._dynamo.reset()
        got = torch.compile(f, options=options)(x, a, b)
        rows.append({"inductor_options": options, "max_diff_from_eager": (got - want).abs().max().item(),
                     "max_diff_from_x_plus_a_b": (got - without_alpha).abs().max().item()})
    out = {"command": "python scripts/inductor_alpha_check.py", "torch": torch.__version__,
           "machine": platform.processor() or platform.machine(), "function": "torch.add(x, a @ b, alpha=-2.0)",
           "rows": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
