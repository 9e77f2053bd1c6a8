"""Schemas and decoding: every accepted form reaches the model's input; every bad one is named."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from model.checkpoint import load_checkpoint
from model.serving import Memory
from service.errors import BadInput, ServiceError, TooLarge, UnsupportedMedia
from service.imaging import b64decode, encode_png
from service.inputs import RawBatch, check_count, match_mask, to_tensor
from service.registry import LoadedModel
from service.schemas import PatternBatch, RetrieveRequest, WriteRequest

MAX_PIXELS = 100_000


def image_bytes(size: tuple[int, int] = (16, 16), mode: str = "L", fmt: str = "PNG", value: int = 255) -> bytes:
    im = Image.new(mode, size, value if mode in ("L", "P") else (value,) * len(mode))
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


def noise_png(side: int = 32) -> bytes:
    """Incompressible pixels, so that cutting the file cuts the pixel data."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def models(checkpoint_dir: Path) -> dict[str, LoadedModel]:
    out = {}
    for name in ("binary128", "shapes16", "colour8"):
        ck = load_checkpoint(checkpoint_dir / name)
        out[name] = LoadedModel(name, Memory(ck), ck.card, ck.sha256)
    return out


def test_pattern_batch_needs_exactly_one_form() -> None:
    assert PatternBatch(bits=["01"]).source == "bits"
    for bad in ({}, {"bits": ["0"], "arrays": [[0]]}):
        with pytest.raises(ValidationError, match="exactly one"):
            PatternBatch(**bad)
    with pytest.raises(ValidationError, match="extra"):
        WriteRequest.model_validate({"patterns": {"bits": ["0"]}, "colour": "red"})


def test_retrieve_request_bounds() -> None:
    r = RetrieveRequest.model_validate({"queries": {"bits": ["01"]}})
    assert r.steps is None and r.trajectory is False and r.output is None
    for bad in ({"steps": 0}, {"output": "gif"}):
        with pytest.raises(ValidationError):
            RetrieveRequest.model_validate({"queries": {"bits": ["01"]}, **bad})


def test_bits_and_arrays_become_the_input_shape(models: dict[str, LoadedModel]) -> None:
    x, notes = to_tensor(RawBatch("bits", ["01" * 64, "1" * 128], "patterns.bits"), models["binary128"],
                         "patterns", MAX_PIXELS)
    assert x.shape == (2, 128) and x[0, :4].tolist() == [0, 1, 0, 1] and notes == []
    hw = np.full((16, 16), 0.25).tolist()                  # (H, W) accepted for one channel
    x, _ = to_tensor(RawBatch("arrays", [hw], "patterns.arrays"), models["shapes16"], "patterns", MAX_PIXELS)
    assert x.shape == (1, 1, 16, 16) and float(x.mean()) == 0.25


def test_images_are_converted_and_the_conversions_reported(models: dict[str, LoadedModel]) -> None:
    blobs = [image_bytes((32, 32), "RGB", "PNG", 200), image_bytes((32, 32), "RGB", "PNG", 10)]
    x, notes = to_tensor(RawBatch("images", blobs, "files"), models["shapes16"], "patterns", MAX_PIXELS)
    assert x.shape == (2, 1, 16, 16) and x[0].min() == 1 and x[1].max() == 0
    assert notes == ["decoded PNG 32x32 RGB", "converted RGB to L", "resized 32x32 to 16x16 (bilinear)",
                     "binarised at 0.5"]
    x, notes = to_tensor(RawBatch("images", [image_bytes((8, 8), "L", "JPEG", 128)], "files"),
                         models["colour8"], "queries", MAX_PIXELS)
    assert x.shape == (1, 3, 8, 8) and "converted L to RGB" in notes and 0.4 < float(x.mean()) < 0.6


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP"])
def test_every_accepted_format_decodes(models: dict[str, LoadedModel], fmt: str) -> None:
    x, _ = to_tensor(RawBatch("images", [image_bytes((16, 16), "L", fmt)], "files"), models["shapes16"],
                     "patterns", MAX_PIXELS)
    assert x.shape == (1, 1, 16, 16)


def test_palette_image_with_transparency_converts_without_warnings(models: dict[str, LoadedModel]) -> None:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    im.save(buf, format="GIF", transparency=0)
    x, notes = to_tensor(RawBatch("images", [buf.getvalue()], "files"), models["shapes16"], "patterns", MAX_PIXELS)
    assert x.shape == (1, 1, 16, 16) and any("converted P" in n for n in notes)


BAD_INPUTS = [  # (model, batch, error, field)
    ("binary128", RawBatch("bits", ["01"], "patterns.bits"), BadInput, "patterns.bits[0]"),
    ("binary128", RawBatch("bits", ["2" * 128], "patterns.bits"), BadInput, "patterns.bits[0]"),
    ("binary128", RawBatch("images", [image_bytes()], "files"), BadInput, "files"),
    ("colour8", RawBatch("bits", ["0" * 192], "patterns.bits"), BadInput, "patterns.bits"),
    ("shapes16", RawBatch("arrays", [[[0, 1], [1]]], "q.arrays"), BadInput, "q.arrays[0]"),
    ("shapes16", RawBatch("arrays", [np.zeros((2, 16, 16)).tolist()], "q.arrays"), BadInput, "q.arrays[0]"),
    ("shapes16", RawBatch("arrays", [np.full((16, 16), 2.0).tolist()], "q.arrays"), BadInput, "q.arrays[0]"),
    ("shapes16", RawBatch("arrays", [[["a"] * 16] * 16], "q.arrays"), BadInput, "q.arrays[0]"),
    ("shapes16", RawBatch("images", [b"not an image at all"], "files"), UnsupportedMedia, "files[0]"),
    ("shapes16", RawBatch("images", [image_bytes(fmt="TIFF")], "files"), UnsupportedMedia, "files[0]"),
    ("shapes16", RawBatch("images", [noise_png()[:400]], "files"), BadInput, "files[0]"),
    ("shapes16", RawBatch("images", [image_bytes((16, 16)), image_bytes((17, 16))], "files"), BadInput, "files[1]"),
    ("shapes16", RawBatch("images", [image_bytes((400, 300))], "files"), TooLarge, "files[0]"),
]


@pytest.mark.parametrize("model, batch, error, field", BAD_INPUTS)
def test_bad_inputs_name_the_field(models: dict[str, LoadedModel], model: str, batch: RawBatch,
                                   error: type[ServiceError], field: str) -> None:
    with pytest.raises(error) as info:
        to_tensor(batch, models[model], "patterns", MAX_PIXELS)
    assert info.value.field == field and field in info.value.detail


def test_count_limits() -> None:
    with pytest.raises(TooLarge, match="3 items exceed the limit of 2"):
        check_count(RawBatch("bits", ["0"] * 3, "patterns.bits"), 2)
    with pytest.raises(BadInput, match="at least one"):
        check_count(RawBatch("bits", [], "patterns.bits"), 2)


def test_masks_broadcast_or_match() -> None:
    q = torch.zeros(3, 4)
    assert match_mask(torch.ones(1, 4), q, "mask.bits").shape == (3, 4)
    with pytest.raises(BadInput, match="2 masks for 3 queries"):
        match_mask(torch.ones(2, 4), q, "mask.bits")


def test_base64_forms_and_png_encoding() -> None:
    raw = image_bytes()
    text = base64.b64encode(raw).decode()
    assert b64decode("data:image/png;base64," + text, "f") == raw
    assert b64decode(text[:40] + "\n" + text[40:], "f") == raw
    with pytest.raises(BadInput, match="base64"):
        b64decode("@@@", "patterns.images[0]")
    png = base64.b64decode(encode_png(np.ones((3, 4, 5), np.float32)))
    assert Image.open(io.BytesIO(png)).size == (5, 4)
