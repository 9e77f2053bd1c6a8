"""Write service/web/static/samples.json: a few held-out test images per image task, as base64 PNG,
for the web page's "built-in samples" (run once after `ebmm data fetch characters photos`).

    .venv/bin/python scripts/make_web_samples.py
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from model import data

OUT = Path(__file__).resolve().parents[1] / "service" / "web" / "static" / "samples.json"
COUNT = 16


def png(x: torch.Tensor) -> str:
    a = (x.clamp(0, 1).numpy() * 255).round().astype(np.uint8)          # (C, H, W)
    img = Image.fromarray(a[0]) if a.shape[0] == 1 else Image.fromarray(a.transpose(1, 2, 0))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def main() -> None:
    out = {}
    for task in ("characters", "photos"):
        ds = data.load(task, "test")
        g = torch.Generator().manual_seed(7)
        idx = torch.randperm(len(ds.images), generator=g)[:COUNT]
        manifest = json.loads((data.cache_dir() / task / "manifest.json").read_text())
        out[task] = {"licence": manifest.get("licence", ""), "source": manifest.get("source", ""),
                     "split": "test", "images": [png(ds.images[int(i)]) for i in idx]}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
