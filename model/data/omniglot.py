"""Real Omniglot from its own folder layout (images_background -> train, images_evaluation -> test).

Omniglot is in no registry this project can reach; users who have it point `root` at the folder
holding images_background/ALPHABET/characterNN/*.png (105x105, black strokes on white). Strokes
become 1 on a 0 background, like the rendered `characters` set.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .common import Dataset, MissingDataError, check_split

NAME = "omniglot"
FOLDERS = {"train": "images_background", "test": "images_evaluation"}


def binarise_stroke_image(path: Path, size: int = 32, threshold: float = 0.3) -> np.ndarray:
    """One Omniglot PNG -> (size, size) uint8, strokes 1.

    Box-downsampling 105 -> 32 leaves a 2-3 px stroke covering about a third of an output pixel,
    so the threshold sits below 0.5 to keep strokes connected.
    """
    from PIL import Image

    with Image.open(path) as im:
        ink = 255 - np.asarray(im.convert("L"), dtype=np.uint8)           # (105, 105) strokes high
    small = Image.fromarray(ink).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0 > threshold).astype(np.uint8)


def _split_dir(root: Path, split: str) -> Path:
    folder = root / FOLDERS[split]
    if not folder.is_dir():
        raise MissingDataError(
            f"dataset 'omniglot' split {split!r}: {folder} does not exist. Omniglot is in no package "
            f"registry this project reaches, so `ebmm data fetch` cannot get it: download it yourself, "
            f"unzip images_background.zip / images_evaluation.zip, and pass root=<that folder> "
            f"(or place them under {root}). The rendered 'characters' set is the offline stand-in.")
    return folder


def load(split: str, root: Path, size: int = 32) -> Dataset:
    """All characters of one split; each ALPHABET/CHARACTER folder is one class."""
    check_split(split)
    folder = _split_dir(root, split)
    classes = sorted(c for a in folder.iterdir() if a.is_dir() for c in a.iterdir() if c.is_dir())
    images, labels = [], []
    for label, char_dir in enumerate(classes):
        for png in sorted(char_dir.glob("*.png")):
            images.append(binarise_stroke_image(png, size))
            labels.append(label)
    if not images:
        raise MissingDataError(f"dataset 'omniglot' split {split!r}: no PNG in {folder}/ALPHABET/CHARACTER/")
    x = torch.from_numpy(np.stack(images)[:, None]).to(torch.float32)     # (M, 1, size, size)
    info = {"source": str(folder), "class_names": [f"{c.parent.name}/{c.name}" for c in classes],
            "made_by": "inverted (strokes 1), box-resized 105 -> 32, thresholded at 0.3"}
    return Dataset(NAME, split, x, torch.tensor(labels, dtype=torch.int64), info)
