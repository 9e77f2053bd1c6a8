"""The Python client and `ebmm client` against a real `ebmm serve` process and the real Redis: write,
retrieve, export to a second server and import there, delete, and errors raised with their fields."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.client import Client, EBMMError

pytestmark = pytest.mark.integration
KEY = "client-key-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def servers(server_factory: Callable, redis_url: str, module_prefix: str, checkpoint_dir: Path) -> Any:
    common = {"store_url": redis_url, "checkpoint_dir": checkpoint_dir, "api_keys": KEY}
    # two servers with separate key prefixes: an exported session has to travel between them
    return (server_factory(store_prefix=module_prefix + "a:", **common),
            server_factory(store_prefix=module_prefix + "b:", **common))


def images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 16, 16)) >= 0.5).astype(np.float32)


def test_client_round_trip_with_numpy_and_pil(servers: Any) -> None:
    a, b = servers
    x = images(8)
    q = x.copy()
    q[:, :3] = 1 - q[:, :3]
    with Client(a.url, KEY) as c:
        s = c.write(x, model="shapes16")
        assert s.patterns == 8 and s.model == "shapes16" and len(s.id) >= 43
        r = s.retrieve(q)
        assert r.patterns.shape == (8, 1, 16, 16) and r.energies.shape == (8,)
        never = s.retrieve(images(8, seed=77), match_threshold=0.9).results
        assert min(x["familiarity"] for x in r.results) > max(x["familiarity"] for x in never)
        assert not any(x["match"] for x in never)
        assert ((r.patterns > 0.5) != x[:, None]).sum() < (q != x).sum()
        pil = [Image.fromarray((im * 255).astype(np.uint8)) for im in q]
        assert np.array_equal(s.retrieve(pil).patterns, r.patterns)        # PNG files decode to the same
        tk = s.retrieve(q[:2], top_k=2, samples=3)
        assert len(s.candidates(tk, 0)) >= 1 and len(tk.results[1]["samples"]) == 3
        assert all(0 <= f <= 1 for _, f in s.candidates(tk, 0))
        s.append(images(4, seed=9))
        assert s.patterns == 12 and s.info["version"] == 1
        after_append = s.retrieve(q).patterns
        blob = s.export()
    with Client(b.url, KEY) as c2:
        s2 = c2.import_session(blob)
        assert s2.id != s.id and s2.patterns == 12
        assert np.array_equal(s2.retrieve(q).patterns, after_append)
        s2.delete()
        with pytest.raises(EBMMError) as e:
            s2.refresh()
        assert e.value.status == 404 and e.value.field == "session_id"


def test_client_errors_carry_the_problem_fields(servers: Any) -> None:
    a, _ = servers
    with Client(a.url, KEY) as c:
        with pytest.raises(EBMMError) as e:
            c.write(images(2), model="nope")
        assert e.value.status == 422 and e.value.field == "model" and e.value.value == "nope"
    with Client(a.url, "wrong-key-0123456789") as c, pytest.raises(EBMMError) as e:
        c.models()
    assert e.value.status == 401
    with Client("http://127.0.0.1:9", KEY, timeout=2) as c, pytest.raises(EBMMError) as e:
        c.models()
    assert e.value.status == 0


def test_command_line_writes_retrieves_exports_and_imports(servers: Any, tmp_path: Path) -> None:
    a, b = servers
    x = images(4, seed=5)
    paths = []
    for i, im in enumerate(x):
        p = tmp_path / f"p{i}.png"
        Image.fromarray((im * 255).astype(np.uint8)).save(p)
        paths.append(str(p))

    def ebmm(*args: str, url: str = a.url) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "service.cli", "client", "--url", url, "--api-key", KEY, *args],
                              cwd=REPO, capture_output=True, text=True, timeout=60)

    w = ebmm("write", "--model", "shapes16", *paths)
    assert w.returncode == 0, w.stderr
    import json
    sid = json.loads(w.stdout)["session_id"]
    r = ebmm("retrieve", sid, *paths, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    back = np.asarray(Image.open(tmp_path / "out" / "p0.png"), dtype=np.float32) / 255
    assert back.shape == (16, 16)
    assert ebmm("export", sid, "--out", str(tmp_path / "s.safetensors")).returncode == 0
    imp = ebmm("import", str(tmp_path / "s.safetensors"), url=b.url)
    assert imp.returncode == 0, imp.stderr
    assert json.loads(imp.stdout)["patterns"] == 4
    bad = ebmm("info", "x" * 43)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "404" in bad.stderr and "session_id" in bad.stderr


def test_appends_racing_on_one_session_through_redis_never_lose_either(servers: Any) -> None:
    """Six clients appending to one session at once through a real server and Redis: the compare-and-set
    on the session's version keeps every append (or answers 409, and then nothing of it is stored)."""
    from concurrent.futures import ThreadPoolExecutor
    a, _ = servers
    with Client(a.url, KEY) as c:
        s = c.write(images(8, seed=11), model="shapes16")

    def add(i: int) -> int:
        with Client(a.url, KEY) as ci:
            try:
                ci.session(s.id).append(images(2, seed=100 + i))
                return 1
            except EBMMError as e:
                assert e.status == 409, e
                return 0

    with ThreadPoolExecutor(6) as pool:
        ok = sum(pool.map(add, range(6)))
    with Client(a.url, KEY) as c:
        final = c.session(s.id).info
    assert ok >= 1 and final["patterns"] == 8 + 2 * ok and final["version"] == ok
