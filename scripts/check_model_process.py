"""What a batched read costs in a model process (service/model_process.py) against the server's own process,
on a quiet machine and one torch thread: `Memory.read_many` of 1, 2, 4 and 16 one-query reads of
`characters32` sessions here, the same call through the pipe (with each read's whole trajectory sent back,
as a retrieve with `trajectory` asks), the same with only each read's result sent back and the sessions'
weights kept in the process (`WeightsCache`: what the service's defaults do for a plain retrieve), and an
empty round trip (a message the process answers at once), alternating so that drift hits all alike.
Medians, with the CPU they ran on.

    .venv/bin/python scripts/check_model_process.py results/explore/model-process-roundtrip.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from model.bench import cpu_info, median_ms
from service.model_process import ModelProcess, session_key
from service.registry import load_models

MODEL = "characters32"


def main(out: str) -> None:
    torch.set_num_threads(1)
    folder = Path("checkpoints")
    models = load_models(folder, torch.device("cpu"))
    m = models[MODEL]
    p = ModelProcess(folder, torch.device("cpu"), 1)
    kept = ModelProcess(folder, torch.device("cpu"), 1, cache_bytes=64 << 20)
    try:
        p.wait_ready({n: x.sha256 for n, x in models.items()})
        kept.wait_ready({n: x.sha256 for n, x in models.items()})
        g = torch.Generator().manual_seed(0)
        shape = m.input_shape
        ws = [m.memory.write((torch.rand(64, *shape, generator=g) > 0.5).float()).weights for _ in range(16)]
        qs = [(torch.rand(1, *shape, generator=g) > 0.5).float() for _ in range(16)]
        keys = [session_key(MODEL, f"token-{i}") for i in range(16)]

        def ping() -> None:
            p.send(b"?")                              # malformed: answered at once with an error
            p.recv()
        rows = []
        for b in (1, 2, 4, 16):
            times: dict[str, list[float]] = {"server": [], "model_process": [], "model_process_kept": []}
            for _ in range(3):
                times["server"].append(median_ms(lambda b=b: m.memory.read_many(ws[:b], qs[:b], None, "last"), 100))
                times["model_process"].append(
                    median_ms(lambda b=b: p.read_many(MODEL, ws[:b], qs[:b], m.default_read_steps, "last"), 100))
                times["model_process_kept"].append(
                    median_ms(lambda b=b: kept.read_many(MODEL, ws[:b], qs[:b], m.default_read_steps, "last",
                                                         trajectory=False, keys=keys[:b]), 100))
            rows.append({"reads": b, **{k: round(sorted(v)[1], 3) for k, v in times.items()}})
        empty = round(median_ms(ping, 500), 3)
        assert kept.weights_sent == 16, kept.weights_sent          # each session's weights crossed once
    finally:
        p.close()
        kept.close()
    res = {"command": f".venv/bin/python scripts/check_model_process.py {out}", "model": MODEL,
           "machine": cpu_info(), "torch_threads": 1,
           "what": "ms per Memory.read_many call of `reads` one-query reads of different sessions (energies of the "
                   "last iterate only, as a .npy answer asks), in this process and through a model process "
                   "(model_process: every iterate sent back and the weights sent with every call; "
                   "model_process_kept: each read's result alone sent back, the weights kept in the process "
                   "after their first call); the median of three medians of 100 calls",
           "rows": rows, "empty_round_trip_ms": empty}
    Path(out).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "results/explore/model-process-roundtrip.json")
