#!/usr/bin/env bash
# The HTTP benchmarks quoted in the README, on a quiet machine: a local server (in-process store) per
# setting, `ebmm bench-service` against it, results/bench_service_*.{json,md}. About 3 minutes. Every
# batching setting side by side, in rounds: scripts/bench_batching_rounds.py.
#   bash scripts/bench_service_suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${PORT:-8020}
URL=http://127.0.0.1:$PORT
B=.venv/bin/ebmm

serve() {   # serve ENV...: start a server with these settings, wait until it answers
  env "$@" EBMM_POOL_QUEUE=64 $B serve --host 127.0.0.1 --port "$PORT" > /tmp/ebmm-bench-suite.log 2>&1 &
  SERVER=$!
  for _ in $(seq 360); do   # up, and its model processes with it (they start in the background)
    curl -sf "$URL/readyz" 2> /dev/null | python3 -c 'import json, sys; p = json.load(sys.stdin)["model_processes"]
sys.exit(0 if p is None or p["up"] == p["size"] else 1)' && return
    sleep 0.5
  done
  echo "server did not start" >&2; exit 1
}
stop() { kill "$SERVER"; wait "$SERVER" 2> /dev/null || true; }
trap 'kill $SERVER 2> /dev/null || true' EXIT
QUIET="quiet machine: nothing else running; client and server share the 2 cores; EBMM_POOL_QUEUE=64"

serve EBMM_BATCH_READS=true
$B bench-service --url "$URL" --payload npy --client raw --patterns 1 --requests 300 --concurrency 1 --floor \
  --note "$QUIET" --out results/bench_service_npy_1_raw.json --md results/bench_service_npy_1_raw.md
$B bench-service --url "$URL" --payload npy --client raw --patterns 64 --requests 300 --concurrency 1 --floor \
  --note "$QUIET" --out results/bench_service_npy_64_raw.json --md results/bench_service_npy_64_raw.md
$B bench-service --url "$URL" --payload npy --client raw --patterns 1 --sessions 16 --skip-write --floor \
  --requests 3000 --concurrency 1,16 --note "$QUIET; EBMM_BATCH_READS=true, EBMM_MODEL_PROCESS=true, two model processes (defaults)" \
  --out results/bench_service_batching_on.json --md results/bench_service_batching_on.md
stop

serve EBMM_BATCH_READS=false
$B bench-service --url "$URL" --payload npy --client raw --patterns 1 --sessions 16 --skip-write --floor \
  --requests 3000 --concurrency 1,16 --note "$QUIET; EBMM_BATCH_READS=false" \
  --out results/bench_service_batching_off.json --md results/bench_service_batching_off.md
stop

# the same 1-query retrieves with the default model's 1-query reads compiled (checked at start-up)
serve EBMM_BATCH_READS=true EBMM_COMPILE_READS=characters32
$B bench-service --url "$URL" --payload npy --client raw --patterns 1 --requests 300 --concurrency 1 --floor \
  --note "$QUIET; EBMM_COMPILE_READS=characters32" \
  --out results/bench_service_npy_1_raw_compiled.json --md results/bench_service_npy_1_raw_compiled.md
stop
