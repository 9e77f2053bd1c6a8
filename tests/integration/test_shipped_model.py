"""The shipped default characters model over HTTP: a real uvicorn process, the real Redis, 64 held-out
characters."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import io

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.integration
SHIPPED = Path(__file__).resolve().parents[2] / "checkpoints"


def files(images: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    out = []
    for i, im in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray((im * 255).astype(np.uint8)).save(buf, "PNG")
        out.append(("files", (f"{i}.png", buf.getvalue(), "image/png")))
    return out


@pytest.fixture(scope="module")
def characters() -> np.ndarray:
    if not (SHIPPED / "characters32" / "card.json").exists():
        pytest.skip("no shipped characters32 checkpoint")
    from model import data
    try:
        test = data.load("characters", "test")                    # classes never seen in training
    except data.MissingDataError:
        pytest.skip("characters data not fetched: `make test` fetches it, or run `ebmm data fetch characters`")
    x = data.sample_episodes(test, 64, 1, torch.Generator().manual_seed(11))[0]   # 64 different classes
    return x[:, 0].numpy()                                          # (64, 32, 32) in {0, 1}


def test_64_held_out_characters_restored_from_occluded_queries(
        server_factory: Callable, redis_url: str, module_prefix: str, characters: np.ndarray) -> None:
    server: Any = server_factory(store_url=redis_url, store_prefix=module_prefix, checkpoint_dir=SHIPPED)
    rng = np.random.default_rng(5)
    q = characters.copy()
    for i in range(len(q)):                                         # a random 16x16 block of random bits
        r, c = rng.integers(0, 17, size=2)
        q[i, r:r + 16, c:c + 16] = rng.integers(0, 2, size=(16, 16))
    with httpx.Client(base_url=server.url, timeout=120) as client:
        w = client.post("/v1/sessions", files=files(characters))
        assert w.status_code == 201, w.text
        assert w.json()["model"] == "characters32" and w.json()["patterns"] == 64
        r = client.post(f"/v1/sessions/{w.json()['session_id']}/retrieve", data={"output": "array"},
                        files=files(q))
    assert r.status_code == 200, r.text
    out = np.array([res["pattern"] for res in r.json()["results"]])[:, 0]      # (64, 32, 32)
    restored = ((out > 0.5) != characters).sum((1, 2)).mean()
    query = (q != characters).sum((1, 2)).mean()
    # the evaluation harness measures 2.9 Hamming against 128 for the query (results/eval/characters32.json)
    assert restored < 0.1 * query, (restored, query)
