"""Export and import of sessions: a round trip to a second server gives identical retrievals; a file
for other weights is refused with 409; a malformed file with 422 naming what is wrong."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from test_api import appended_answers_as_written_at_once, as_strings, bits, problem, running

pytestmark = pytest.mark.anyio
FILE = "application/vnd.ebmm.session+safetensors"


def _metadata(blob: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n])["__metadata__"]


async def _written(c, n: int = 12) -> tuple[str, list[str]]:
    x = as_strings(bits(n, seed=3))
    w = await c.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": x}})
    assert w.status_code == 201, w.text
    return w.json()["session_id"], x


async def test_round_trip_to_a_second_server_gives_identical_retrievals(checkpoint_dir: Path) -> None:
    queries = bits(12, seed=3)
    queries[:, :10] ^= 1
    body = {"queries": {"bits": as_strings(queries)}, "output": "array"}
    async with running(checkpoint_dir) as (a, _):
        sid, _ = await _written(a)
        e = await a.get(f"/v1/sessions/{sid}/export")
        assert e.status_code == 200 and e.headers["content-type"] == FILE
        assert f'{sid}.safetensors' in e.headers["content-disposition"]
        before = (await a.post(f"/v1/sessions/{sid}/retrieve", json=body)).json()["results"]
    meta = _metadata(e.content)
    assert meta["model"] == "binary128" and meta["patterns"] == "12" and json.loads(meta["input_shape"]) == [128]
    async with running(checkpoint_dir) as (b, _):                  # a fresh server, its own store
        i = await b.post("/v1/sessions/import", content=e.content, headers={"content-type": FILE})
        assert i.status_code == 201, i.text
        new = i.json()
        assert new["session_id"] != sid and new["patterns"] == 12 and new["model"] == "binary128"
        assert i.headers["location"].endswith(new["session_id"])
        after = (await b.post(f"/v1/sessions/{new['session_id']}/retrieve", json=body)).json()["results"]
    assert [r["pattern"] for r in after] == [r["pattern"] for r in before]
    assert [r["energies"] for r in after] == [r["energies"] for r in before]


async def test_a_file_for_other_weights_is_refused_with_409(checkpoint_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(checkpoint_dir, other)
    from model.checkpoint import load_checkpoint, save_checkpoint
    ck = load_checkpoint(other / "binary128")
    with torch.no_grad():
        ck.model.energy.bias.add_(0.01)                            # the same architecture, other weights
    save_checkpoint(ck.model, other / "binary128")
    async with running(checkpoint_dir) as (a, _):
        sid, _ = await _written(a)
        blob = (await a.get(f"/v1/sessions/{sid}/export")).content
    async with running(other) as (b, _):
        r = await b.post("/v1/sessions/import", content=blob, headers={"content-type": FILE})
        problem(r, 409, "checkpoint_sha256")
        assert (await b.get("/v1/models")).status_code == 200
    weights = st_load(blob)
    wrong_model = st_save(weights, metadata={**_metadata(blob), "model": "nope"})
    async with running(checkpoint_dir) as (a, _):
        problem(await a.post("/v1/sessions/import", content=wrong_model), 409, "model")


@pytest.mark.parametrize("case,field", [
    ("garbage", "body"), ("empty", "body"), ("no_format", "metadata.format"),
    ("shape", "tensors"), ("nan", "tensors.energy.memory_triu"), ("patterns", "metadata.patterns"),
])
async def test_malformed_files_get_422_naming_the_field(checkpoint_dir: Path, case: str, field: str) -> None:
    async with running(checkpoint_dir) as (a, _):
        sid, _ = await _written(a)
        blob = (await a.get(f"/v1/sessions/{sid}/export")).content
        meta, weights = _metadata(blob), st_load(blob)
        t = weights["energy.memory_triu"]
        bad = {
            "garbage": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!",
            "empty": b"",
            "no_format": st_save(weights, metadata={k: v for k, v in meta.items() if k != "format"}),
            "shape": st_save({"energy.memory_triu": t[:-1].contiguous()}, metadata=meta),
            "nan": st_save({"energy.memory_triu": torch.full_like(t, float("nan"))}, metadata=meta),
            "patterns": st_save(weights, metadata={**meta, "patterns": "0"}),
        }[case]
        problem(await a.post("/v1/sessions/import", content=bad), 422, field)
        # nothing already stored is lost
        assert (await a.get(f"/v1/sessions/{sid}")).status_code == 200


async def test_export_of_an_unknown_or_foreign_session_is_404(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir, api_keys="key-a-0123456789abcdef,key-b-0123456789abcdef") as (a, _):
        w = await a.post("/v1/sessions", json={"model": "binary128", "patterns": {"bits": as_strings(bits(4))}},
                         headers={"X-API-Key": "key-a-0123456789abcdef"})
        sid = w.json()["session_id"]
        r = await a.get(f"/v1/sessions/{sid}/export", headers={"X-API-Key": "key-b-0123456789abcdef"})
        problem(r, 404, "session_id")
        problem(await a.get("/v1/sessions/" + "x" * 43 + "/export",
                            headers={"X-API-Key": "key-a-0123456789abcdef"}), 404, "session_id")


def _raw_file(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("metadata", [["x"], "text", {"format": "ebmm-session", "model": ["m"]},
                                      {"format": "ebmm-session", "format_version": "1", "model": "binary128",
                                       "checkpoint_sha256": 5}])
async def test_metadata_of_odd_types_gets_422_not_500(checkpoint_dir: Path, metadata) -> None:
    async with running(checkpoint_dir) as (a, _):
        problem(await a.post("/v1/sessions/import", content=_raw_file({"__metadata__": metadata})), 422, "metadata")


async def test_a_session_grown_past_the_write_limit_by_appends_imports_back(checkpoint_dir: Path) -> None:
    async with running(checkpoint_dir, max_patterns=8) as (a, _):
        sid, _ = await _written(a, n=8)
        app = await a.post(f"/v1/sessions/{sid}/patterns", json={"patterns": {"bits": as_strings(bits(8, seed=9))}})
        assert app.status_code == 200 and app.json()["patterns"] == 16
        blob = (await a.get(f"/v1/sessions/{sid}/export")).content
        i = await a.post("/v1/sessions/import", content=blob)
        assert i.status_code == 201 and i.json()["patterns"] == 16, i.text


def test_session_ids_never_start_with_a_dash() -> None:
    """An id starting with "-" would read as an option on the command line (`ebmm client retrieve ID`)."""
    from service.transfer import new_session_id
    ids = [new_session_id(32) for _ in range(2000)]       # about 60 would start with - or _ otherwise
    assert all(i[0].isalnum() for i in ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 43 for i in ids)


@pytest.fixture(scope="module")
def rnn_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small untrained gated RNN on 128-bit strings: an energy whose append state is its patterns."""
    from conftest import QUADRATIC_LOOP

    from model.checkpoint import save_checkpoint
    from model.config import LoopConfig, ModelConfig
    from model.memory import EBMM
    root = tmp_path_factory.mktemp("rnn")
    torch.manual_seed(0)
    cfg = ModelConfig("test-rnn", "gated_rnn", (128,), "binary", dict(hidden=24, memory=4, hops=2),
                      LoopConfig(**QUADRATIC_LOOP))
    save_checkpoint(EBMM(cfg), root / "rnn128", name="rnn128")
    return root


async def test_a_gated_rnn_session_keeps_its_patterns_and_appends_as_one_write(rnn_checkpoints: Path) -> None:
    """8 written then 4 appended answer what 12 written at once do; the kept patterns (bits, a byte each) travel
    in an export, and an import whose kept patterns disagree with its pattern count is refused (422)."""
    async with running(rnn_checkpoints) as (c, _):
        part = await appended_answers_as_written_at_once(c, "rnn128", bits(12, seed=41), flips=10, rtol=1e-5)
        assert part["stored_bytes"] >= part["memory_bytes"] + 8 * 128          # the patterns, a byte per bit
        blob = (await c.get(f"/v1/sessions/{part['session_id']}/export")).content
        tensors = st_load(blob)
        assert tensors["append.patterns"].dtype == torch.uint8 and tensors["append.patterns"].shape == (12, 128)
        imp = await c.post("/v1/sessions/import", content=blob, headers={"content-type": FILE})
        assert imp.status_code == 201, imp.text
        short = st_save({**tensors, "append.patterns": tensors["append.patterns"][:5]}, metadata=_metadata(blob))
        problem(await c.post("/v1/sessions/import", content=short, headers={"content-type": FILE}), 422,
                "tensors.append.patterns")
        wide = st_save({**tensors, "append.patterns": tensors["append.patterns"] * 3}, metadata=_metadata(blob))
        problem(await c.post("/v1/sessions/import", content=wide, headers={"content-type": FILE}), 422,
                "tensors.append.patterns")
