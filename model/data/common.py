"""Shared pieces of the data sources: the Dataset record, the cache folder and its .npy + JSON format."""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

MANIFEST = "manifest.json"
SPLITS = ("train", "test")


class MissingDataError(RuntimeError):
    """A data source is not on disk; the message says how to get it."""


@dataclass
class Dataset:
    """Images of one split of one source, as floats in [0,1]."""
    name: str
    split: str
    images: Tensor               # (M, *S) float32 in [0,1]; S = (C, H, W)
    labels: Tensor | None        # (M,) int64 class ids, or None for unlabelled sources
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_classes(self) -> int:
        return 0 if self.labels is None else int(self.labels.unique().numel())


def cache_dir() -> Path:
    """$EBMM_DATA_DIR, else ~/.cache/ebmm/data (read at call time, never at import)."""
    env = os.environ.get("EBMM_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ebmm" / "data"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: unknown value {split!r}; use one of {SPLITS}")


def missing(name: str, folder: Path) -> MissingDataError:
    return MissingDataError(
        f"dataset {name!r} is not in the data cache ({folder / MANIFEST} does not exist); "
        f"get it with `ebmm data fetch {name}` (or `make data` for every source), "
        f"or set EBMM_DATA_DIR to a cache that has it")


# ----------------------------------------------------------------------------- writing

def save_split(folder: Path, split: str, images: np.ndarray, labels: np.ndarray | None,
               binary: bool) -> dict[str, Any]:
    """Write (M, C, H, W) uint8 images (bits packed when binary) and labels; returns manifest entries."""
    assert images.dtype == np.uint8 and images.ndim == 4, f"images: need (M,C,H,W) uint8, got {images.shape}"
    folder.mkdir(parents=True, exist_ok=True)
    m = images.shape[0]
    if binary:
        assert images.max(initial=0) <= 1, "images: binary arrays must hold only 0 and 1"
        stored, encoding = np.packbits(images.reshape(m, -1), axis=1), "packbits"   # (M, C*H*W/8)
    else:
        stored, encoding = images, "uint8/255"
    entries = {f"{split}_images.npy": {"shape": list(images.shape), "encoding": encoding}}
    _save_npy(folder / f"{split}_images.npy", stored)
    if labels is not None:
        _save_npy(folder / f"{split}_labels.npy", labels.astype(np.int32))
        entries[f"{split}_labels.npy"] = {"shape": [m], "encoding": "int32 class ids"}
    return entries


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, np.ascontiguousarray(array), allow_pickle=False)
    tmp.replace(path)


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Written last: its presence marks a complete fetch."""
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST)


# ----------------------------------------------------------------------------- reading

def read_manifest(name: str, folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise missing(name, folder)
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(name: str, folder: Path, split: str) -> tuple[Tensor, Tensor | None, dict[str, Any]]:
    """Images as float32 in [0,1] with their (M,) int64 labels (or None) and the manifest."""
    check_split(split)
    manifest = read_manifest(name, folder)
    entry = manifest["arrays"][f"{split}_images.npy"]
    stored = np.load(folder / f"{split}_images.npy", allow_pickle=False)
    shape = tuple(entry["shape"])
    if entry["encoding"] == "packbits":
        bits = np.unpackbits(stored, axis=1, count=int(np.prod(shape[1:])))           # (M, C*H*W)
        images = torch.from_numpy(bits.reshape(shape)).to(torch.float32)
    else:
        images = torch.from_numpy(stored.reshape(shape)).to(torch.float32) / 255.0
    labels = None
    if f"{split}_labels.npy" in manifest["arrays"]:
        labels = torch.from_numpy(np.load(folder / f"{split}_labels.npy", allow_pickle=False)).long()
    return images, labels, manifest


# ----------------------------------------------------------------------------- tools

def run(cmd: list[str], cwd: Path, timeout: float = 600.0) -> str:
    """Run a packaging client (apt-get, npm, dpkg-deb); failures name the command and its stderr."""
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as e:
        raise RuntimeError(f"command {cmd[0]!r} is not installed (needed for: {' '.join(cmd)})") from e
    if done.returncode != 0:
        raise RuntimeError(f"command failed (exit {done.returncode}): {' '.join(cmd)}\n{done.stderr.strip()}")
    return done.stdout


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0,1] -> uint8 0..255 (rounded), the cache's grayscale/colour encoding."""
    return np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
