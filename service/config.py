"""Service settings: pydantic-settings with the EBMM_ prefix; validators refuse unsafe values."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]
STORE_SCHEMES = ("memory://", "redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
MIN_KEY_CHARS = 16


class Settings(BaseSettings):
    """Every knob of the service; each can be set as EBMM_<NAME> in the environment."""
    model_config = SettingsConfigDict(env_prefix="EBMM_", extra="ignore")

    host: str = "127.0.0.1"                        # loopback by default: exposing it is a choice
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1, le=32)           # uvicorn processes; >1 needs a shared (Redis) store
    store_url: str = "memory://"                   # memory:// (in-process), redis://host:port/db, or
    #                                                a cluster: redis+cluster://host:port[,host:port...]
    store_prefix: str = Field("ebmm:", min_length=1, max_length=64, pattern=r"^[^{}]+$")
    store_min_replicas: int = Field(0, ge=0, le=16)  # acknowledge a write once this many replicas hold it
    store_timeout_seconds: float = Field(1.0, gt=0, le=30)   # per Redis socket operation
    checkpoint_dir: Path = REPO_ROOT / "checkpoints"
    device: str = "auto"                           # auto = cuda if available, else cpu
    # the slot memory: the span memories err less on random-bit blocks but fail on blocks of one colour
    # (results/explore/characters32{,-span16k}-fill-blocks.json); falls back to the first loaded model
    default_model: str = "characters32"
    api_keys: Annotated[list[str], NoDecode] = []  # comma-separated; empty = no authentication
    session_ttl_seconds: int = Field(3600, ge=1, le=7 * 24 * 3600)
    max_patterns: int = Field(256, ge=1, le=4096)  # per write, and queries per retrieve
    max_body_bytes: int = Field(32 * 2**20, ge=1024, le=2**30)
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600)  # a whole request body must arrive within this
    max_output_values: int = Field(16 * 2**20, ge=1024, le=2**34)  # per retrieve: queries x iterates x pattern
    max_pixels: int = Field(4_000_000, ge=1, le=100_000_000)  # per decoded image (decompression bombs)
    max_read_steps: int = Field(100, ge=1, le=1000)
    pool_size: int = Field(2, ge=1, le=64)         # threads running model work
    pool_queue: int = Field(8, ge=0, le=1024)      # requests allowed to wait for a thread; more -> 503
    torch_threads: int = Field(1, ge=1, le=64)     # intra-op threads of each model call
    # opt-in: models whose 1-query reads run through torch.compile, each compile checked against the eager
    # read at start-up (model/compiled.py): "" none, "all", or comma-separated model names
    compile_reads: str = Field("", max_length=4096)
    batch_reads: bool = True                       # plain reads of one model from several sessions: one call
    # batches running at once: threads of the batch lane, and as many model processes; shared by every kind
    # of batch (results/bench_service_batching_rounds.md: two against one, with model processes and without)
    batch_concurrency: int = Field(2, ge=1, le=64)
    batch_window_ms: float = Field(2.0, ge=0, le=1000)   # the longest a read waits for its batch to start
    batch_max_queries: int = Field(256, ge=1, le=65536)  # a batch starts once it holds this many queries
    model_process: bool = True                     # batched reads in a model process of their own
    # session weights each model process keeps between batches, so that a session's weights cross the pipe
    # once, not with every read (service/model_process.py: WeightsCache); 0: sent with every read
    model_cache_mb: int = Field(64, ge=0, le=65536)
    gil_switch_interval_us: float = Field(50.0, ge=5, le=100_000)  # sys.setswitchinterval, microseconds
    memory_max_sessions: int = Field(1000, ge=1, le=1_000_000)
    memory_max_bytes: int = Field(1 << 30, ge=1 << 20, le=1 << 36)
    log_level: str = "info"
    # uvicorn's access log, a line per request (credentials redacted: service/logs.py); behind a proxy that
    # logs requests itself it can go (what it costs: results/bench_service_batching_rounds.md)
    access_log: bool = True

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, v: list[str]) -> list[str]:
        for i, k in enumerate(v):
            if len(k) < MIN_KEY_CHARS:
                raise ValueError(f"api_keys[{i}] has {len(k)} characters; at least {MIN_KEY_CHARS} required")
        return v

    @field_validator("store_url")
    @classmethod
    def _known_store(cls, v: str) -> str:
        if not v.startswith(STORE_SCHEMES):
            raise ValueError(f"store_url {v!r} must start with one of {', '.join(STORE_SCHEMES)}")
        return v

    @field_validator("compile_reads")
    @classmethod
    def _compile_reads(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.,\- ]*", v):
            raise ValueError(f"compile_reads {v!r} (EBMM_COMPILE_READS, --compile-reads) must be all, or model "
                             "names separated by commas")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not DEVICE_RE.match(v):
            raise ValueError(f"device {v!r} must be auto, cpu, mps, cuda or cuda:N")
        return v

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, v: str) -> str:
        if v.lower() not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"log_level {v!r} is not a uvicorn log level")
        return v.lower()

    @model_validator(mode="after")
    def _shared_store_for_workers(self) -> Settings:
        if self.workers > 1 and self.store_url.startswith("memory://"):
            raise ValueError(f"workers={self.workers} with store_url {self.store_url!r}: each process would "
                             "hold its own sessions; use a redis:// store or workers=1")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_keys)

    @property
    def store_label(self) -> str:
        """The store URL without credentials, for logs and /readyz."""
        return re.sub(r"//[^@/]*@", "//***@", self.store_url)
