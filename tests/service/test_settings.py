"""Settings from EBMM_* variables; unsafe values are refused with the name of the setting."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.config import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    for k in list(os.environ):
        if k.startswith("EBMM_"):
            monkeypatch.delenv(k)


def test_defaults_are_the_embedded_run() -> None:
    s = Settings()
    assert s.store_url == "memory://" and s.api_keys == [] and not s.auth_enabled
    assert s.checkpoint_dir.name == "checkpoints" and s.default_model == "characters32"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBMM_API_KEYS", " key-aaaaaaaaaaaaaaaa , key-bbbbbbbbbbbbbbbb,")
    monkeypatch.setenv("EBMM_STORE_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("EBMM_MAX_PATTERNS", "64")
    s = Settings()
    assert s.api_keys == ["key-aaaaaaaaaaaaaaaa", "key-bbbbbbbbbbbbbbbb"] and s.auth_enabled
    assert s.store_url.endswith("/3") and s.max_patterns == 64


@pytest.mark.parametrize("name, value", [
    ("EBMM_API_KEYS", "short"),
    ("EBMM_STORE_URL", "http://example.com"),
    ("EBMM_DEVICE", "tpu"),
    ("EBMM_PORT", "0"),
    ("EBMM_MAX_PATTERNS", "0"),
    ("EBMM_MAX_BODY_BYTES", "10"),
    ("EBMM_SESSION_TTL_SECONDS", "0"),
    ("EBMM_POOL_SIZE", "0"),
    ("EBMM_MAX_READ_STEPS", "100000"),
    ("EBMM_LOG_LEVEL", "loud"),
    ("EBMM_STORE_PREFIX", "ebmm:{a}:"),          # braces would change a cluster key's hash tag
    ("EBMM_STORE_MIN_REPLICAS", "-1"),
    ("EBMM_COMPILE_READS", "binary128;rm"),
])
def test_unsafe_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("EBMM_").lower()):
        Settings()


def test_several_workers_need_a_shared_store() -> None:
    with pytest.raises(ValidationError, match="workers=2"):
        Settings(workers=2)
    assert Settings(workers=2, store_url="redis://127.0.0.1:6379/0").workers == 2


def test_store_label_hides_credentials() -> None:
    assert Settings(store_url="redis://user:secret@host:6379/0").store_label == "redis://***@host:6379/0"
    assert (Settings(store_url="rediss+cluster://u:secret@h1:7000,h2:7000").store_label
            == "rediss+cluster://***@h1:7000,h2:7000")


def test_a_cluster_url_opens_a_cluster_store() -> None:
    from service.redis_store import RedisClusterStore
    from service.store import open_store
    store = open_store(Settings(store_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001", store_min_replicas=1))
    assert isinstance(store, RedisClusterStore) and store.min_replicas == 1
