"""Images in and out: decode (format, pixel limit), convert to a model's input, encode PNG."""
from __future__ import annotations

import base64
import binascii
import io
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import BadInput, TooLarge, UnsupportedMedia

FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP")
BINARY_THRESHOLD = 0.5


def b64decode(text: str, field: str) -> bytes:
    """Base64 (standard or URL-safe, data: URL prefix allowed) -> bytes."""
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    payload = "".join(payload.split())                   # line-wrapped base64 (e.g. `base64` output)
    try:
        return base64.b64decode(payload.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise BadInput(f"{field}: not valid base64 ({e})", field, text) from e


def open_image(data: bytes, field: str, max_pixels: int) -> Image.Image:
    """Identify the format and check the pixel count before any pixel is decoded."""
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise TooLarge(f"{field}: image exceeds the pixel limit ({e})", field, f"{len(data)} bytes") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UnsupportedMedia(f"{field}: not a decodable image; send {', '.join(FORMATS)}",
                               field, data[:16]) from e
    if im.format not in FORMATS:
        raise UnsupportedMedia(f"{field}: {im.format} images are not accepted; send {', '.join(FORMATS)}",
                               field, im.format)
    w, h = im.size
    if w * h > max_pixels:
        raise TooLarge(f"{field}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}",
                       field, f"{w}x{h}")
    return im


def load_pixels(im: Image.Image, field: str) -> Image.Image:
    try:
        im.load()
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadInput(f"{field}: damaged or truncated {im.format} image ({e})", field, im.format) from e
    return im


def to_model_image(im: Image.Image, shape: tuple[int, ...], binarise: bool, notes: Counter) -> np.ndarray:
    """A decoded image -> float32 (C, H, W) in [0, 1] for the model; each conversion goes in notes."""
    c, h, w = shape
    target = "RGB" if c == 3 else "L"
    if getattr(im, "n_frames", 1) > 1:
        notes[f"used the first of {im.n_frames} frames"] += 1
    if im.mode != target:
        notes[f"converted {im.mode} to {target}" + (" (alpha dropped)" if "A" in im.mode else "")] += 1
        im = (im.convert("RGBA") if im.mode == "P" else im).convert(target)
    if im.size != (w, h):
        notes[f"resized {im.size[0]}x{im.size[1]} to {w}x{h} (bilinear)"] += 1
        im = im.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.float32) / 255.0               # (H, W) or (H, W, 3)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    if binarise:
        notes[f"binarised at {BINARY_THRESHOLD}"] += 1
        arr = (arr >= BINARY_THRESHOLD).astype(np.float32)
    return arr


def decode_images(blobs: list[bytes], field: str, shape: tuple[int, ...], binarise: bool,
                  max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """Encoded images (all the same size) -> float32 (N, C, H, W) and what was done to them."""
    images = [open_image(b, f"{field}[{i}]", max_pixels) for i, b in enumerate(blobs)]
    first = images[0].size
    for i, im in enumerate(images):
        if im.size != first:
            raise BadInput(f"{field}[{i}]: image is {im.size[0]}x{im.size[1]} but {field}[0] is "
                           f"{first[0]}x{first[1]}; send one size per request", f"{field}[{i}]",
                           f"{im.size[0]}x{im.size[1]}")
    notes: Counter = Counter()
    for im in images:
        notes[f"decoded {im.format} {im.size[0]}x{im.size[1]} {im.mode}"] += 1
    arrays = []
    for i, im in enumerate(images):           # one full-size image in memory at a time
        arrays.append(to_model_image(load_pixels(im, f"{field}[{i}]"), shape, binarise, notes))
        im.close()
    n = len(images)
    return np.stack(arrays), [k if v == n else f"{k} ({v} of {n})" for k, v in notes.items()]


def encode_png(x: np.ndarray) -> str:
    """float (C, H, W) in [0, 1] -> base64 PNG (grayscale for one channel, RGB for three)."""
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    im = Image.fromarray(u8[0]) if u8.shape[0] == 1 else Image.fromarray(u8.transpose(1, 2, 0))
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)     # tiny images: speed over a few bytes
    return base64.b64encode(buf.getvalue()).decode("ascii")
