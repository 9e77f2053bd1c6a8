"""Omniglot-like binary 32x32 characters rendered with per-sample jitter from KanjiVG stroke SVGs.

Each of KanjiVG's ~6,700 base characters (kanji, kana, ASCII; one design each) is one class. A
sample is the character's strokes under a random affine map (rotation, scale, shear, shift), with
a small per-stroke shift and a random stroke width, drawn at 4x resolution, box-downsampled and
thresholded. Strokes are 1 on a 0 background: Omniglot inverted, the convention the paper's
binary images use. The train/test split is by class, from a hash of the file name.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .common import Dataset, MissingDataError, load_split, save_split, write_manifest

NAME = "characters"
VIEWBOX = 109.0               # KanjiVG's SVG canvas is 109 x 109
TEST_PERCENT = 15             # share of classes (by name hash) held out for the test split
SEED = 20200426               # base of the per-class render seeds
_BASE_FILE = re.compile(r"^[0-9a-f]{5}\.svg$")      # variants ("04e14-Kaisho.svg") are skipped
_PATH_D = re.compile(r"<path\b[^>]*?\sd=\"([^\"]+)\"")


# ----------------------------------------------------------------------------- KanjiVG files

def kanjivg_dir() -> Path:
    """The `kanji/` data folder the `kanjivg` wheel installs into site-packages."""
    try:
        folder = Path(str(importlib.metadata.distribution("kanjivg").locate_file("kanji")))
    except importlib.metadata.PackageNotFoundError:
        folder = None
    if folder is None or not folder.is_dir():
        raise MissingDataError("KanjiVG is not installed: `pip install kanjivg svg.path` "
                               "(or `pip install -e '.[data]'`), then `ebmm data fetch characters`")
    return folder


def character_files(folder: Path) -> list[Path]:
    """Base character SVGs (one design per code point), sorted by code point."""
    return sorted(p for p in folder.iterdir() if _BASE_FILE.match(p.name))


def is_test_class(stem: str) -> bool:
    """Deterministic class-disjoint split: about TEST_PERCENT% of names hash into test."""
    return int(hashlib.sha1(stem.encode()).hexdigest()[:8], 16) % 100 < TEST_PERCENT


def sample_path(d: str, points_per_curve: int = 9) -> np.ndarray:
    """Points along one SVG path in viewBox units: (P, 2) as (x, y)."""
    from svg.path import CubicBezier, Move, parse_path

    t = np.linspace(0.0, 1.0, points_per_curve)[:, None]                    # (T, 1)
    pieces = []
    for seg in parse_path(d):
        if isinstance(seg, Move):
            continue
        if isinstance(seg, CubicBezier):
            p = np.array([seg.start, seg.control1, seg.control2, seg.end])  # (4,) complex
            z = ((1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1]
                 + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3])[:, 0]      # (T,)
        else:
            z = np.array([seg.point(float(u)) for u in t[:, 0]])           # (T,)
        pieces.append(z if not pieces else z[1:])
    z = np.concatenate(pieces) if pieces else np.zeros(0, complex)
    return np.stack([z.real, z.imag], axis=1)                               # (P, 2)


def load_strokes(svg_file: Path) -> list[np.ndarray]:
    """A character's strokes as point arrays (P, 2) in the 109 x 109 viewBox."""
    text = Path(svg_file).read_text(encoding="utf-8")
    strokes = [sample_path(d) for d in _PATH_D.findall(text)]
    return [s for s in strokes if len(s) > 0]


# ----------------------------------------------------------------------------- rendering

def _jitter(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Random affine map (A, shift) in viewBox units and a stroke width."""
    theta = np.deg2rad(rng.uniform(-10.0, 10.0))
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    shear = np.array([[1.0, rng.uniform(-0.15, 0.15)], [0.0, 1.0]])
    a = rot @ shear * rng.uniform(0.85, 1.05)                               # (2, 2)
    shift = rng.uniform(-2.0, 2.0, size=2) * VIEWBOX / size                 # up to 2 output pixels
    return a, shift, float(rng.uniform(4.0, 6.5))


def _corners(q: np.ndarray, min_turn_degrees: float = 20.0) -> np.ndarray:
    """Indices of a polyline's ends and sharp turns, where wide PIL lines would leave notches."""
    d = np.diff(q, axis=0)                                                  # (P-1, 2)
    heading = np.arctan2(d[:, 1], d[:, 0])                                  # (P-1,)
    turn = np.abs((np.diff(heading) + np.pi) % (2 * np.pi) - np.pi)         # (P-2,)
    inner = np.nonzero(turn > np.deg2rad(min_turn_degrees))[0] + 1
    return np.concatenate([[0], inner, [len(q) - 1]])


def render_character(paths: Sequence[str | np.ndarray], rng: np.random.Generator, size: int = 32,
                     upsample: int = 4) -> np.ndarray:
    """One jittered rendering: (size, size) uint8 with strokes 1 and background 0.

    `paths` are SVG path strings or (P, 2) point arrays in KanjiVG's 109 x 109 viewBox.
    """
    from PIL import Image, ImageDraw

    a, shift, width = _jitter(rng, size)
    scale = size * upsample / VIEWBOX
    radius = width * scale / 2
    canvas = Image.new("L", (size * upsample, size * upsample), 0)
    draw = ImageDraw.Draw(canvas)
    centre = VIEWBOX / 2
    for path in paths:
        pts = sample_path(path) if isinstance(path, str) else np.asarray(path, dtype=float)   # (P, 2)
        wobble = rng.normal(0.0, 0.8, size=2)                               # per-stroke hand shake
        q = ((pts - centre) @ a.T + centre + shift + wobble) * scale        # (P, 2) canvas pixels
        draw.line(q.ravel().tolist(), fill=255, width=max(1, round(width * scale)))
        for x, y in q[_corners(q)]:                                         # round caps and joints
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=255)
    small = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    return (small > 127.5).astype(np.uint8)                                 # (size, size)


def _render_class(job: tuple[str, int, int]) -> np.ndarray:
    """All renders of one class (own seed, so results do not depend on the worker count)."""
    file, per_class, size = job
    path = Path(file)
    rng = np.random.default_rng([SEED, int(path.stem, 16)])
    strokes = load_strokes(path)
    return np.stack([render_character(strokes, rng, size) for _ in range(per_class)])  # (n, H, W)


# ----------------------------------------------------------------------------- fetch / load

def _render_split(files: list[Path], per_class: int, size: int, workers: int) -> np.ndarray:
    jobs = [(str(f), per_class, size) for f in files]
    if workers <= 1:
        out = [_render_class(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            out = list(pool.map(_render_class, jobs, chunksize=32))
    return np.concatenate(out)[:, None]                                     # (M, 1, H, W)


def fetch(root: Path, per_class: int = 10, size: int = 32, workers: int | None = None,
          limit: int | None = None) -> dict[str, Any]:
    """Render `per_class` jittered samples of every base character into root/characters."""
    start = time.time()
    source = kanjivg_dir()
    files = [f for f in character_files(source) if load_strokes_count(f) > 0][:limit]
    workers = workers or min(4, os.cpu_count() or 1)
    folder = root / NAME
    arrays: dict[str, Any] = {}
    splits: dict[str, Any] = {}
    for split in ("train", "test"):
        chosen = [f for f in files if is_test_class(f.stem) == (split == "test")]
        images = _render_split(chosen, per_class, size, workers)
        labels = np.repeat(np.arange(len(chosen)), per_class)
        arrays.update(save_split(folder, split, images, labels, binary=True))
        splits[split] = {"count": len(images), "classes": len(chosen),
                         "class_names": [f.stem for f in chosen]}
    manifest = {"name": NAME, "source": f"PyPI kanjivg {importlib.metadata.version('kanjivg')} ({source})",
                "licence": "CC BY-SA 3.0 (KanjiVG, Ulrich Apel)",
                "made_by": f"model.data.characters.render_character, {per_class} jittered renders per "
                           f"class, {size}x{size}, strokes=1; class-disjoint split by "
                           f"sha1(name) % 100 < {TEST_PERCENT}",
                "arrays": arrays, "splits": splits, "seconds": round(time.time() - start, 1)}
    write_manifest(folder, manifest)
    return manifest


def load_strokes_count(svg_file: Path) -> int:
    """Number of stroke paths in a KanjiVG file (cheap; no path parsing)."""
    return len(_PATH_D.findall(svg_file.read_text(encoding="utf-8")))


def load(split: str, root: Path) -> Dataset:
    images, labels, manifest = load_split(NAME, root / NAME, split)
    info = {"source": manifest["source"], "made_by": manifest["made_by"], "licence": manifest["licence"],
            "class_names": manifest["splits"][split]["class_names"]}
    return Dataset(NAME, split, images, labels, info)
