"""`ebmm client ...`: the Python client from the command line, for image files on disk."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from .client import Client, EBMMError


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key)


def _images(paths: list[str]) -> list[Image.Image]:
    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                out.append(im.copy())
        except (OSError, ValueError) as e:
            raise EBMMError(0, "Bad file", f"{p}: not an image this client can read ({e})", "files", p) from e
    return out


def _save(x: np.ndarray, path: Path) -> None:
    a = np.clip(x, 0, 1)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else (a.transpose(1, 2, 0) if a.ndim == 3 else a)
    Image.fromarray((a * 255 + 0.5).astype(np.uint8)).save(path)


def _run(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.client_command == "models":
            print(json.dumps([{k: m[k] for k in ("name", "architecture", "kind", "input_shape", "memory_floats",
                                                 "capacity_patterns")} for m in c.models()], indent=1))
        elif args.client_command == "write":
            print(json.dumps(c.write(_images(args.files), args.model).info, indent=1))
        elif args.client_command == "retrieve":
            mask = _images(args.mask) if args.mask else None
            r = c.session(args.session).retrieve(_images(args.files), mask=mask, steps=args.steps)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for f, x, e in zip(args.files, r.patterns, r.energies, strict=True):
                _save(x, out / (Path(f).stem + ".png"))
                print(f"{out / (Path(f).stem + '.png')}  energy {e:.4g}")
        elif args.client_command == "export":
            Path(args.out).write_bytes(c.session(args.session).export())
            print(f"wrote {args.out}")
        elif args.client_command == "import":
            print(json.dumps(c.import_session(Path(args.file).read_bytes()).info, indent=1))
        elif args.client_command == "info":
            print(json.dumps(c.session(args.session).info, indent=1))
        elif args.client_command == "delete":
            c.session(args.session).delete()
            print(f"deleted {args.session}")
    return 0


def client_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except EBMMError as e:
        where = f" (field {e.field!r}, value {e.value!r})" if e.field else ""
        print(f"ebmm client {args.client_command}: error: {e}{where}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"ebmm client {args.client_command}: error: {e}", file=sys.stderr)
        return 2


def add_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="talk to a running service: write, retrieve, export, import, delete")
    p.add_argument("--url", default=os.environ.get("EBMM_URL", "http://127.0.0.1:8000"), help="service URL (EBMM_URL)")
    p.add_argument("--api-key", default=os.environ.get("EBMM_API_KEY"), help="API key (EBMM_API_KEY)")
    cs = p.add_subparsers(dest="client_command", required=True)
    cs.add_parser("models", help="the served models")
    w = cs.add_parser("write", help="write image files into a new session; prints the session")
    w.add_argument("files", nargs="+")
    w.add_argument("--model", help="model name (default: the server's)")
    r = cs.add_parser("retrieve", help="restore query image files; writes OUT/NAME.png per query")
    r.add_argument("session")
    r.add_argument("files", nargs="+")
    r.add_argument("--mask", nargs="+", help="mask image file(s), white = known pixel")
    r.add_argument("--steps", type=int)
    r.add_argument("--out", default="restored")
    e = cs.add_parser("export", help="save a session as a safetensors file")
    e.add_argument("session")
    e.add_argument("--out", required=True)
    i = cs.add_parser("import", help="a new session from an exported file")
    i.add_argument("file")
    for name in ("info", "delete"):
        cs.add_parser(name, help=f"{name} a session").add_argument("session")
    p.set_defaults(func=client_command)
