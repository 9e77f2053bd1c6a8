"""The `ebmm` entry point: the model commands plus `serve` and `bench-service` (added here)."""
from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from model.checkpoint import find_checkpoints
from model.cli import build_parser
from model.cli import main as model_main

SERVE_OPTIONS = {  # CLI flag -> setting; a flag given overrides the EBMM_* environment variable
    "host": "host", "port": "port", "workers": "workers", "store_url": "store_url",
    "checkpoint_dir": "checkpoint_dir", "device": "device", "torch_threads": "torch_threads",
    "pool_size": "pool_size", "log_level": "log_level", "compile_reads": "compile_reads",
}


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .config import Settings
    for opt, setting in SERVE_OPTIONS.items():
        value = getattr(args, opt)
        if value is not None:
            os.environ[f"EBMM_{setting.upper()}"] = str(value)   # the worker processes read these
    try:
        s = Settings()
    except ValidationError as e:
        print(f"ebmm serve: invalid settings:\n{e}", file=sys.stderr)
        return 2
    if not find_checkpoints(s.checkpoint_dir):
        print(f"ebmm serve: no checkpoints in {s.checkpoint_dir} (no sub-folder with a card.json); "
              "ship or train one, or set EBMM_CHECKPOINT_DIR", file=sys.stderr)
        return 2
    print(f"ebmm service: http://{s.host}:{s.port}  (API docs: http://{s.host}:{s.port}/docs; "
          f"store {s.store_label}; api keys {'on' if s.auth_enabled else 'off'})", flush=True)
    uvicorn.run("service.main:create_app", factory=True, host=s.host, port=s.port, workers=s.workers,
                log_level=s.log_level, access_log=s.access_log, timeout_graceful_shutdown=10)
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import run_bench
    return run_bench(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the REST memory service (settings also from EBMM_* variables)")
    p.add_argument("--host", help="bind address (EBMM_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (EBMM_PORT, default 8000)")
    p.add_argument("--workers", type=int, help="uvicorn processes (EBMM_WORKERS, default 1)")
    p.add_argument("--store-url", help="memory:// or redis://host:port/db (EBMM_STORE_URL)")
    p.add_argument("--checkpoint-dir", help="folder of checkpoints (EBMM_CHECKPOINT_DIR)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (EBMM_DEVICE)")
    p.add_argument("--torch-threads", type=int, help="intra-op threads per request (EBMM_TORCH_THREADS)")
    p.add_argument("--pool-size", type=int, help="model worker threads (EBMM_POOL_SIZE)")
    p.add_argument("--log-level", help="uvicorn log level (EBMM_LOG_LEVEL)")
    p.add_argument("--compile-reads", help="models whose 1-query reads run through torch.compile, checked at "
                   "start-up: all, or comma-separated names (EBMM_COMPILE_READS, default none)")
    p.set_defaults(func=_serve)
    b = sub.add_parser("bench-service", help="drive a running service with concurrent clients")
    b.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the running service")
    b.add_argument("--model", help="model to bench (default: the service's default model)")
    b.add_argument("--patterns", type=int, default=64, help="patterns per write and queries per retrieve")
    b.add_argument("--requests", type=int, default=10, help="requests per operation and concurrency")
    b.add_argument("--payload", choices=("png", "npy"), default="png",
                   help="png: multipart PNG files and JSON answers; npy: .npy bodies and answers")
    b.add_argument("--answer-dtype", choices=("float32", "uint8"), default="float32",
                   help="with --payload npy: the dtype retrieves ask their .npy answer in (Accept: ...; dtype=)")
    b.add_argument("--concurrency", default="1,4", help="comma-separated client counts")
    b.add_argument("--client", choices=("httpx", "raw"), default="httpx",
                   help="httpx: asyncio clients (any payload); raw: one keep-alive http.client connection per "
                        "client thread, with .npy bodies only: less of the client's own time in the latency")
    b.add_argument("--sessions", type=int, default=1, help="sessions written first; retrieves cycle over them")
    b.add_argument("--skip-write", action="store_true", help="time retrieves only")
    b.add_argument("--floor", action="store_true", help="also time GET /healthz at each concurrency (HTTP floor)")
    b.add_argument("--api-key", default=os.environ.get("EBMM_BENCH_API_KEY"), help="API key, if keys are on")
    b.add_argument("--out", default="results/bench_service.json", help="JSON results file")
    b.add_argument("--md", default="results/bench_service.md", help="markdown summary file")
    b.add_argument("--note", default="", help="a line describing the setup, written into the results")
    b.set_defaults(func=_bench)


def main(argv: list[str] | None = None) -> int:
    from .client_cli import add_client
    parser, sub = build_parser()
    add_commands(sub)
    add_client(sub)
    return model_main(argv, parser)


if __name__ == "__main__":
    sys.exit(main())
