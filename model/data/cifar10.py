"""Real CIFAR-10 from its python batches, read with an unpickler that only builds numpy arrays.

The batches are Python pickles; a plain unpickler runs whatever a file names, so `SafeUnpickler`
resolves only the globals these files need and refuses everything else.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from .common import Dataset, MissingDataError, check_split

NAME = "cifar10"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3 protocol-2 pickles call to rebuild bytes; limited to that one codec."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode: refusing encoding {encoding!r}")
    return text.encode("latin1")


def _allowed() -> dict[tuple[str, str], Any]:
    from numpy._core import multiarray, numeric

    return {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,   # files written by numpy 1.x
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,  # numpy 2.x
        ("numpy.core.multiarray", "scalar"): multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy.core.numeric", "_frombuffer"): numeric._frombuffer,           # protocol 5
        ("numpy._core.numeric", "_frombuffer"): numeric._frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("builtins", "bytes"): bytes, ("builtins", "bytearray"): bytearray,
        ("builtins", "list"): list, ("builtins", "dict"): dict,
        ("__builtin__", "bytes"): bytes, ("__builtin__", "list"): list, ("__builtin__", "dict"): dict,
    }


class SafeUnpickler(pickle.Unpickler):
    """Resolves only numpy array/dtype reconstruction and plain containers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        target = _allowed().get((module, name))
        if target is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: CIFAR batches need only numpy arrays, "
                f"dtypes, dicts, lists and bytes; this file is not a CIFAR batch or was tampered with")
        return target


def safe_load(f: BinaryIO) -> Any:
    """Unpickle a CIFAR batch (Python 2 str keys come back as bytes)."""
    return SafeUnpickler(f, encoding="bytes").load()


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (N, 3, 32, 32) uint8 images and (N,) labels."""
    with open(path, "rb") as f:
        batch = safe_load(f)
    if not isinstance(batch, dict):
        raise TypeError(f"{path}: expected a dict, got {type(batch).__name__}")
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in get or "labels" not in get:
        raise ValueError(f"{path}: keys {sorted(get)} lack 'data' or 'labels'")
    data = np.asarray(get["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data has shape {data.shape}, expected (N, 3072)")
    labels = np.asarray(get["labels"], dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels                             # rows are R, G, B planes


def _batch_dir(root: Path) -> Path:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            return folder
    raise MissingDataError(
        f"dataset 'cifar10': no CIFAR-10 python batches (data_batch_1..5, test_batch) in {root}. "
        f"CIFAR-10 is in no package registry this project reaches, so `ebmm data fetch` cannot get it: "
        f"download cifar-10-python.tar.gz yourself, extract it, and pass root=<cifar-10-batches-py>. "
        f"The 'photos' set is the offline stand-in.")


def load(split: str, root: Path) -> Dataset:
    check_split(split)
    folder = _batch_dir(root)
    paths = [folder / n for n in FILES[split] if (folder / n).is_file()]
    if not paths:
        raise MissingDataError(f"dataset 'cifar10' split {split!r}: none of {FILES[split]} in {folder}")
    parts = [read_batch(p) for p in paths]
    images = torch.from_numpy(np.concatenate([p[0] for p in parts])).to(torch.float32) / 255.0  # (M,3,32,32)
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    info = {"source": str(folder), "files": [p.name for p in paths], "class_names": CLASSES}
    return Dataset(NAME, split, images, labels, info)
