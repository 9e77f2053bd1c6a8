#!/usr/bin/env bash
# Regenerate docker/requirements.lock: the pinned closure of pyproject's runtime dependencies
# (no extras) for the API image, resolved by pip without installing anything.
#   docker/lock.sh
# It resolves twice, because the image has two bases with different Python 3.11 patch releases
# (a dependency may carry a marker such as python_full_version < "3.11.3"):
#   PYTHON      .venv/bin/python   stands for python:3.11-slim (the newest 3.11)
#   OLD_PYTHON  /usr/bin/python3   Debian bookworm's 3.11.2 (the debootstrap base of the smoke test)
# Packages that only the second resolution needs are added with the marker that pulled them in.
# torch stays out of the lock: docker/Dockerfile pins it (TORCH_VERSION) from the index of the
# chosen variant (CPU or CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OLD_PY=${OLD_PYTHON:-/usr/bin/python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

resolve() {  # resolve PYTHON REPORT
  "$1" -m pip install --quiet --dry-run --ignore-installed --report "$2" \
    "torch==${TORCH_VERSION}" . 'setuptools>=68'
}
resolve "$PY" "$tmp/main.json"
if [ -x "$OLD_PY" ]; then
  "$OLD_PY" -m venv "$tmp/old"
  resolve "$tmp/old/bin/python" "$tmp/old.json"
fi

"$PY" - "$tmp/main.json" "$tmp/old.json" > docker/requirements.lock <<'EOF'
import json, os, re, sys
from packaging.requirements import Requirement

def norm(name): return re.sub(r"[-_.]+", "-", name).lower()
def load(path):
    if not os.path.exists(path):
        return {}, []
    items = json.load(open(path))["install"]
    pins = {norm(i["metadata"]["name"]): i["metadata"]["version"] for i in items}
    reqs = [Requirement(r) for i in items for r in i["metadata"].get("requires_dist", [])]
    return pins, reqs

main, _ = load(sys.argv[1])
old, old_reqs = load(sys.argv[2])
skip = {"ebmm", "torch"}
print("# Runtime dependencies of the API image, pinned (the resolved closure of pyproject's [project]")
print("# dependencies, without extras, plus setuptools to build the project without build isolation).")
print("# torch is pinned separately in docker/Dockerfile (TORCH_VERSION) because its index depends on")
print("# the CPU/CUDA variant. Regenerate with: docker/lock.sh")
for name in sorted(set(main) - skip):
    print(f"{name}=={main[name]}")
for name in sorted(set(old) - set(main) - skip):
    markers = sorted({str(r.marker) for r in old_reqs if norm(r.name) == name and r.marker})
    marker = " or ".join(f"({m})" for m in markers) if len(markers) > 1 else (markers[0] if markers else "")
    print(f"{name}=={old[name]}" + (f" ; {marker}" if marker else ""))
for name in sorted(set(old) & set(main) - skip):
    if old[name] != main[name]:
        print(f"lock.sh: {name}: {main[name]} (newest 3.11) vs {old[name]} (3.11.2); kept {main[name]}",
              file=sys.stderr)
EOF
echo "wrote docker/requirements.lock ($(grep -vc '^#' docker/requirements.lock) pins)"
