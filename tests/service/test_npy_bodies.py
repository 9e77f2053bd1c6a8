"""Binary array payloads: .npy bodies for write and retrieve, and .npy answers (Accept: application/x-npy)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from test_api import problem, running

pytestmark = pytest.mark.anyio
NPY = {"content-type": "application/x-npy"}


def npy(a: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=allow_pickle)
    return buf.getvalue()


def shapes(n: int, seed: int = 0) -> np.ndarray:
    return ((np.random.default_rng(seed).random((n, 16, 16)) > 0.5) * 255).astype(np.uint8)


async def test_npy_write_and_retrieve_match_the_json_answer(checkpoint_dir: Path) -> None:
    x = shapes(6)
    async with running(checkpoint_dir) as (c, _):
        w = await c.post("/v1/sessions?model=shapes16", content=npy(x), headers=NPY)
        assert w.status_code == 201, w.text
        assert w.json()["patterns"] == 6 and w.json()["model"] == "shapes16"
        sid = w.json()["session_id"]
        q = x.copy()
        q[:, :4] = 0                                                     # a damaged band
        r = await c.post(f"/v1/sessions/{sid}/retrieve?steps=5", content=npy(q),
                         headers={**NPY, "accept": "application/x-npy"})
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-npy", r.text
        out = np.load(io.BytesIO(r.content), allow_pickle=False)
        assert out.dtype == np.float32 and out.shape == (6, 1, 16, 16)
        assert r.headers["x-ebmm-shape"] == "6,1,16,16" and r.headers["x-ebmm-steps"] == "5"
        energies = [float(v) for v in r.headers["x-ebmm-energies"].split(",")]
        j = await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"arrays": (q / 255.0).tolist()},
                                                              "steps": 5, "output": "array"})
        js = j.json()["results"]
        assert np.allclose(out, np.array([res["pattern"] for res in js]), atol=1e-4)
        assert np.allclose(energies, [res["energy"] for res in js], rtol=1e-4, atol=1e-3)
        t = await c.post(f"/v1/sessions/{sid}/retrieve?trajectory=true&steps=3", content=npy(q),
                         headers={**NPY, "accept": "application/x-npy"})
        assert np.load(io.BytesIO(t.content)).shape == (4, 6, 1, 16, 16)
        small = await c.post(f"/v1/sessions/{sid}/retrieve?steps=5", content=npy(q),
                             headers={**NPY, "accept": "application/x-npy; DType = UINT8"})
        u8 = np.load(io.BytesIO(small.content), allow_pickle=False)      # a quarter of the bytes
        assert u8.dtype == np.uint8 and u8.shape == out.shape and len(small.content) < len(r.content) / 3
        assert np.array_equal(u8, np.clip(np.rint(out * 255), 0, 255).astype(np.uint8))
        assert small.headers["x-ebmm-energies"] == r.headers["x-ebmm-energies"]
        refused = await c.post(f"/v1/sessions/{sid}/retrieve", content=npy(q),
                               headers={**NPY, "accept": "application/x-npy;q=0, application/json"})
        assert refused.headers["content-type"].startswith("application/json")
        plain = await c.post(f"/v1/sessions/{sid}/retrieve", content=npy(q), headers=NPY)   # JSON answer
        assert plain.status_code == 200 and len(plain.json()["results"]) == 6


async def test_a_uint8_array_of_zeros_and_ones_is_read_as_bits_and_said_so(checkpoint_dir: Path) -> None:
    """(img > 0).astype(np.uint8) is how bits often arrive: read as 0/1, not as near-black pixels 0 and 1 of 255;
    a uint8 array with other values stays pixel values / 255."""
    x = shapes(4)
    bits = (x > 0).astype(np.uint8)
    async with running(checkpoint_dir) as (c, _):
        w = await c.post("/v1/sessions?model=shapes16", content=npy(bits), headers=NPY)
        assert w.status_code == 201, w.text
        assert any("uint8 values all 0 or 1, read as 0/1" in n for n in w.json()["conversions"]), w.json()
        sid = w.json()["session_id"]
        as_pixels = await c.post("/v1/sessions?model=shapes16", content=npy(x), headers=NPY)
        assert not any("uint8" in n for n in as_pixels.json()["conversions"])
        r = await c.post(f"/v1/sessions/{sid}/retrieve?steps=5", content=npy(bits),
                         headers={**NPY, "accept": "application/x-npy"})
        j = await c.post(f"/v1/sessions/{sid}/retrieve", json={"queries": {"arrays": (x / 255.0).tolist()},
                                                              "steps": 5, "output": "array"})
    out = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert np.allclose(out, np.array([res["pattern"] for res in j.json()["results"]]), atol=1e-4)
    assert out.max() > 0.5                                              # not the near-black reading


async def test_bad_npy_bodies_are_named_422s(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir) as (c, _):
        problem(await c.post("/v1/sessions?model=shapes16", content=b"not an array", headers=NPY), 422, "body")
        pickled = npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
        problem(await c.post("/v1/sessions?model=shapes16", content=pickled, headers=NPY), 422, "body")
        problem(await c.post("/v1/sessions?model=shapes16", content=npy(np.zeros(5)), headers=NPY), 422, "body")
        problem(await c.post("/v1/sessions?model=shapes16", content=npy(np.zeros((2, 9, 9), np.float32)),
                             headers=NPY), 422, "body[0]")
        problem(await c.post("/v1/sessions?modle=shapes16", content=npy(shapes(2)), headers=NPY), 422, "modle")
        sid = (await c.post("/v1/sessions?model=shapes16", content=npy(shapes(2)), headers=NPY)).json()["session_id"]
        r = await c.post(f"/v1/sessions/{sid}/retrieve?top_k=2", content=npy(shapes(1)),
                         headers={**NPY, "accept": "application/x-npy"})
        problem(r, 422, "accept")
        for bad in ("application/x-npy; dtype=float16", "application/json, application/x-npy;dtype=int8"):
            r = await c.post(f"/v1/sessions/{sid}/retrieve", content=npy(shapes(1)), headers={**NPY, "accept": bad})
            assert "dtype" in problem(r, 422, "accept")["detail"]
        problem(await c.post(f"/v1/sessions/{sid}/retrieve?steps=0", content=npy(shapes(1)), headers=NPY), 422)


async def test_a_bad_row_of_an_npy_batch_is_named_and_nothing_is_stored(checkpoint_dir: Path) -> None:
    """The batch is checked at once; the error still names the first row at fault and its values."""
    async with running(checkpoint_dir) as (c, state):
        x = shapes(4).astype(np.float32) / 255
        before = await state.store.count()
        high = x.copy()
        high[2, 3, 3] = 1.5
        r = problem(await c.post("/v1/sessions?model=shapes16", content=npy(high), headers=NPY), 422, "body[2]")
        assert "1.5" in r["detail"]
        nan = x.copy()
        nan[1, 0, 0] = np.nan
        nan[3, 0, 0] = -1
        problem(await c.post("/v1/sessions?model=shapes16", content=npy(nan), headers=NPY), 422, "body[1]")
        assert await state.store.count() == before
        ok = await c.post("/v1/sessions?model=shapes16", content=npy(x[:, None]), headers=NPY)   # (N, 1, H, W)
        assert ok.status_code == 201, ok.text
