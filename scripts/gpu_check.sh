#!/usr/bin/env bash
# The GPU path, end to end, on a machine with CUDA (and a CUDA build of torch in .venv):
#   1. model: every shipped checkpoint on cuda agrees with the cpu (scripts/gpu_check.py), a short
#      meta-training run on cuda;
#   2. service: `ebmm serve` with EBMM_DEVICE=cuda answers a write and an occluded retrieve over HTTP.
# Output goes to results/gpu_check.md. CPU-only machines skip it (make test never calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/gpu_check.md}
$PY scripts/gpu_check.py | tee "$OUT"
PORT=${PORT:-8765}
EBMM_DEVICE=cuda EBMM_LOG_LEVEL=warning $PY -m service.cli serve --host 127.0.0.1 --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 1; done
$PY - "$PORT" <<'PY' | tee -a "$OUT"
import json, sys, time
import httpx, numpy as np
from service.client import Client
samples = json.load(open("service/web/static/samples.json"))["characters"]["images"]
import base64, io
from PIL import Image
x = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s.split(",")[1]))), np.float32) / 255 for s in samples])
with Client(f"http://127.0.0.1:{sys.argv[1]}") as c:
    t0 = time.perf_counter()
    s = c.write(x, model="characters32")
    q = x.copy(); q[:, 8:24, 8:24] = 0
    r = s.retrieve(q)
    wrong = ((r.patterns[:, 0] > 0.5) != x).sum((1, 2))
    print(f"\nservice on cuda: write + retrieve of {len(x)} characters in {time.perf_counter() - t0:.2f} s; "
          f"pixels wrong after retrieval {wrong.tolist()} (query: {(q != x).sum((1, 2)).tolist()})")
PY
