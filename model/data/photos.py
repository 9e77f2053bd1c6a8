"""Unlabelled 32x32 colour crops of natural photos (a CIFAR stand-in), split disjointly by source photo.

Photos come from files that ship inside packages: scikit-image's bundled `skimage/data` images
(only the ones in the wheel; the rest need a download), scikit-learn's two sample images when
sklearn is installed, and Debian `opencv-doc` sample photos (`apt-get download`, optional).
Near-duplicate photos (stereo pairs, before/after shots) share a group, and the split is by group.
"""
from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import Dataset, load_split, run, save_split, write_manifest

NAME = "photos"
SEED = 20200426
MIN_STD = 12.0             # crops flatter than this (uint8 std) are redrawn: sky, walls, black borders
# held-out photo groups, chosen so that every source alone still has a test split (about 1 in 4)
TEST_GROUPS = frozenset({"chelsea", "rocket", "flower", "baboon", "books", "fruits", "smarties", "squirrel"})
SKIMAGE = {"astronaut.png": "astronaut", "chelsea.png": "chelsea", "coffee.png": "coffee",
           "rocket.jpg": "rocket", "motorcycle_left.png": "motorcycle", "motorcycle_right.png": "motorcycle",
           "hubble_deep_field.jpg": "hubble", "retina.jpg": "retina", "ihc.png": "ihc"}
SKLEARN = {"china.jpg": "china", "flower.jpg": "flower"}
OPENCV_PACKAGE = "opencv-doc"
OPENCV_DIR = "usr/share/doc/opencv-doc/examples/"
# file (under the package's examples/ folder) -> group; pairs of views of one scene share a group
OPENCV = {
    "data/aero1.jpg": "aero", "data/aero3.jpg": "aero", "data/aloeL.jpg": "aloe", "data/aloeR.jpg": "aloe",
    "data/apple.jpg": "apple", "data/baboon.jpg": "baboon", "data/board.jpg": "board",
    "data/building.jpg": "building", "data/butterfly.jpg": "butterfly", "data/chicky_512.png": "chicky",
    "data/ela_original.jpg": "ela", "data/ela_modified.jpg": "ela", "data/fruits.jpg": "fruits",
    "data/graf1.png": "graf", "data/graf3.png": "graf", "data/home.jpg": "home",
    "data/left.jpg": "books", "data/right.jpg": "books", "data/leuvenA.jpg": "leuven",
    "data/leuvenB.jpg": "leuven", "data/licenseplate_motion.jpg": "car", "data/messi5.jpg": "messi",
    "data/orange.jpg": "orange", "data/rubberwhale1.png": "rubberwhale",
    "data/rubberwhale2.png": "rubberwhale", "data/smarties.png": "smarties",
    "data/squirrel_cls.jpg": "squirrel",
    "data/starry_night.jpg": "starry_night", "data/stuff.jpg": "stuff",
    "alphamat/input_images/plant.jpg": "plant",
}


def is_test_group(group: str) -> bool:
    return group in TEST_GROUPS


# ----------------------------------------------------------------------------- sources

def _package_files(package: str, sub: str, names: dict[str, str]) -> list[tuple[Path, str]]:
    """(file, group) for the listed files that exist inside an installed Python package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return [(folder / n, g) for n, g in names.items() if (folder / n).is_file()]


def _opencv_files(root: Path) -> list[tuple[Path, str]]:
    """`apt-get download opencv-doc` once, keep only the listed photos (about 6 MB of 96)."""
    work = root / "sources" / OPENCV_PACKAGE
    if not all((work / n).is_file() for n in OPENCV):
        work.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "download", OPENCV_PACKAGE], cwd=work)
        debs = sorted(work.glob(f"{OPENCV_PACKAGE}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {OPENCV_PACKAGE} left no .deb in {work}")
        _extract_from_deb(debs[-1], work)
        for deb in debs:
            deb.unlink()
    return [(work / n, g) for n, g in OPENCV.items() if (work / n).is_file()]


def _extract_from_deb(deb: Path, work: Path) -> None:
    wanted = {f"./{OPENCV_DIR}{n}": n for n in OPENCV}
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    data = tar.extractfile(member)
                    assert data is not None
                    (work / wanted[member.name]).parent.mkdir(parents=True, exist_ok=True)
                    (work / wanted[member.name]).write_bytes(data.read())
        proc.stdout.read()                               # drain the tail so dpkg-deb exits cleanly
    if proc.returncode != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed (exit {proc.returncode})")


# ----------------------------------------------------------------------------- crops

def random_crops(photo: np.ndarray, n: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """n square crops of random side (size .. half the short edge, log-uniform), random position and
    horizontal flip, box-resized to (n, 3, size, size) uint8; nearly flat crops are redrawn."""
    from PIL import Image

    image = Image.fromarray(photo)
    h, w = photo.shape[:2]
    top = max(size + 1, min(h, w) // 2)
    out: list[np.ndarray] = []
    for _ in range(8):                                   # rounds of redraws for flat crops
        sides = np.exp(rng.uniform(np.log(size), np.log(top), size=n)).astype(int)
        for side in sides:
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            box = (x, y, x + side, y + side)
            crop = np.asarray(image.resize((size, size), Image.Resampling.BOX, box=box))  # (size, size, 3)
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            if crop.std() >= MIN_STD:
                out.append(crop)
        if len(out) >= n:
            break
    if not out:                                          # a blank image gives no crops
        return np.zeros((0, 3, size, size), np.uint8)
    return np.stack(out[:n]).transpose(0, 3, 1, 2).copy()   # (n, 3, size, size)


def _rng(photo_name: str) -> np.random.Generator:
    """Per-photo seed, so a photo's crops do not depend on which other sources were found."""
    return np.random.default_rng([SEED, int(hashlib.sha1(photo_name.encode()).hexdigest()[:8], 16)])


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))             # (H, W, 3) uint8


# ----------------------------------------------------------------------------- fetch / load

def gather_sources(root: Path, opencv: bool = True) -> tuple[list[tuple[Path, str]], list[str]]:
    """All available (photo file, group) pairs and notes on optional sources that were skipped."""
    files = _package_files("skimage", "data", SKIMAGE)
    notes: list[str] = []
    sklearn = _package_files("sklearn", "datasets/images", SKLEARN)
    files += sklearn
    if not sklearn:
        notes.append("scikit-learn not installed: its 2 sample photos skipped")
    if opencv:
        try:
            files += _opencv_files(root)
        except RuntimeError as e:
            notes.append(f"opencv-doc skipped: {e}")
    return files, notes


def fetch(root: Path, crops_per_photo: int = 500, opencv: bool = True) -> dict[str, Any]:
    start = time.time()
    files, notes = gather_sources(root, opencv)
    if not files:
        raise RuntimeError("photos: no source photo found (is scikit-image installed?)")
    folder = root / NAME
    arrays: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        chosen = [(f, g) for f, g in files if is_test_group(g) == (split == "test")]
        crops = [random_crops(_read_rgb(f), crops_per_photo, _rng(f.name)) for f, _ in chosen]
        images = np.concatenate(crops)                                      # (M, 3, 32, 32)
        arrays.update(save_split(folder, split, images, None, binary=False))
        splits[split] = {"count": len(images), "photos": [f.name for f, _ in chosen],
                         "groups": sorted({g for _, g in chosen})}
    manifest = {"name": NAME, "source": "skimage.data bundled photos, sklearn samples, Debian opencv-doc",
                "licence": "CC0 / public domain / BSD-3 / CC BY 2.0 (per source photo)",
                "made_by": f"{crops_per_photo} random square crops per photo (side 32..short edge/2, "
                           f"log-uniform, random h-flip), box-resized to 32x32; split by photo group "
                           f"(test groups: {sorted(TEST_GROUPS)})",
                "notes": notes, "arrays": arrays, "splits": splits, "seconds": round(time.time() - start, 1)}
    write_manifest(folder, manifest)
    return manifest


def load(split: str, root: Path) -> Dataset:
    images, labels, manifest = load_split(NAME, root / NAME, split)
    info = {"source": manifest["source"], "made_by": manifest["made_by"],
            "photos": manifest["splits"][split]["photos"], "groups": manifest["splits"][split]["groups"]}
    return Dataset(NAME, split, images, labels, info)
