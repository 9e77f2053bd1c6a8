"""Fashion-MNIST (60k train / 10k test, 10 classes) from Debian's `dataset-fashion-mnist`, padded to 32x32."""
from __future__ import annotations

import gzip
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import Dataset, load_split, run, save_split, write_manifest

NAME = "fashion"
PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip or plain) of unsigned bytes: (N,) labels or (N, H, W) images."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) -> (N, 1, 32, 32) with a 2-pixel zero border, as LeNet-style pipelines do."""
    return np.pad(images, ((0, 0), (2, 2), (2, 2)))[:, None]


def _source_dir(root: Path) -> tuple[Path, str]:
    """Use the system-wide install if present, else `apt-get download` + `dpkg-deb -x` into the cache."""
    if all((SYSTEM_DIR / f).is_file() for pair in FILES.values() for f in pair):
        return SYSTEM_DIR, f"Debian {PACKAGE} (installed at {SYSTEM_DIR})"
    work = root / "sources" / PACKAGE
    target = work / "root" / SYSTEM_DIR.relative_to("/")
    if not all((target / f).is_file() for pair in FILES.values() for f in pair):
        work.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "download", PACKAGE], cwd=work)
        debs = sorted(work.glob(f"{PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {PACKAGE} left no .deb in {work}")
        run(["dpkg-deb", "-x", str(debs[-1]), str(work / "root")], cwd=work)
        for deb in debs:
            deb.unlink()
        shutil.rmtree(work / "root" / "usr" / "share" / "doc", ignore_errors=True)
    return target, f"Debian {PACKAGE} (apt-get download into {work})"


def fetch(root: Path) -> dict[str, Any]:
    start = time.time()
    source, how = _source_dir(root)
    folder = root / NAME
    arrays: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    for split, (image_file, label_file) in FILES.items():
        images = pad_to_32(read_idx(source / image_file))                  # (M, 1, 32, 32)
        labels = read_idx(source / label_file)                             # (M,)
        assert len(images) == len(labels), f"{split}: {len(images)} images but {len(labels)} labels"
        arrays.update(save_split(folder, split, images, labels, binary=False))
        splits[split] = {"count": len(images), "classes": len(np.unique(labels))}
    manifest = {"name": NAME, "source": how, "licence": "MIT (Zalando Research)",
                "made_by": "IDX files read as uint8, padded 28x28 -> 32x32 with zeros; original splits",
                "class_names": CLASSES, "arrays": arrays, "splits": splits,
                "seconds": round(time.time() - start, 1)}
    write_manifest(folder, manifest)
    return manifest


def load(split: str, root: Path) -> Dataset:
    images, labels, manifest = load_split(NAME, root / NAME, split)
    info = {"source": manifest["source"], "made_by": manifest["made_by"], "class_names": CLASSES}
    return Dataset(NAME, split, images, labels, info)
