"""Request patterns (images, nested arrays, bit strings) -> a tensor in a model's input space."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .errors import BadInput, TooLarge
from .imaging import decode_images
from .registry import LoadedModel

Source = Literal["images", "arrays", "bits"]
Role = Literal["patterns", "queries", "mask"]


@dataclass
class RawBatch:
    """Undecoded items of one kind, and the request field they came from (for error messages)."""
    source: Source
    items: list[Any]          # bytes (images), nested lists (arrays) or str (bits)
    field: str                # e.g. "patterns.images" or "files"
    block: np.ndarray | None = None   # a .npy body: the whole float32 (N, ...) batch, items its rows
    notes: list[str] = field(default_factory=list)   # what reading the body did to it (said in conversions)


def check_count(batch: RawBatch, limit: int) -> None:
    if not batch.items:
        raise BadInput(f"{batch.field}: at least one item is required", batch.field, [])
    if len(batch.items) > limit:
        raise TooLarge(f"{batch.field}: {len(batch.items)} items exceed the limit of {limit} per request",
                       batch.field, len(batch.items))


def _bits(items: list[Any], field: str, shape: tuple[int, ...]) -> np.ndarray:
    d = math.prod(shape)
    out = np.empty((len(items), d), dtype=np.float32)              # (N, D)
    for i, s in enumerate(items):
        if not isinstance(s, str) or len(s) != d or s.strip("01"):
            got = f"{len(s)} characters" if isinstance(s, str) else type(s).__name__
            raise BadInput(f"{field}[{i}]: expected a string of {d} characters 0/1, got {got}",
                           f"{field}[{i}]", s)
        out[i] = np.frombuffer(s.encode("ascii"), dtype=np.uint8) - ord("0")
    return out.reshape(len(items), *shape)


def _array(item: Any, field: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        a = np.asarray(item, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInput(f"{field}: not a rectangular array of numbers ({e})", field, item) from e
    if a.shape == shape[1:] and len(shape) == 3 and shape[0] == 1:
        a = a[None]                                                # (H, W) -> (1, H, W)
    if a.shape != shape:
        raise BadInput(f"{field}: shape {list(a.shape)} does not match the model's input {list(shape)}",
                       field, list(a.shape))
    if not np.isfinite(a).all():
        raise BadInput(f"{field}: values must be finite numbers within [0, 1] (one is too large for "
                       "float32 or not a number)", field, "non-finite")
    if a.min() < 0 or a.max() > 1:
        raise BadInput(f"{field}: values must be finite and within [0, 1], got [{a.min()}, {a.max()}]",
                       field, [float(a.min()), float(a.max())])
    return a


def _array_block(a: np.ndarray, field: str, shape: tuple[int, ...]) -> np.ndarray:
    """A whole float32 (N, ...) batch (a .npy body) checked at once, as `_array` checks each row; an
    error names the first row at fault, as the row by row check would."""
    if a.shape[1:] == shape[1:] and len(shape) == 3 and shape[0] == 1:
        a = a[:, None]                                             # (N, H, W) -> (N, 1, H, W)
    if a.shape[1:] != shape:
        raise BadInput(f"{field}[0]: shape {list(a.shape[1:])} does not match the model's input {list(shape)}",
                       f"{field}[0]", list(a.shape[1:]))
    flat = a.reshape(a.shape[0], -1)
    if not np.isfinite(flat).all() or flat.min() < 0 or flat.max() > 1:
        bad = int(np.flatnonzero(~(np.isfinite(flat) & (flat >= 0) & (flat <= 1)).all(1))[0])
        _array(a[bad], f"{field}[{bad}]", shape)                   # raises with that row's message
    return a


def to_tensor(batch: RawBatch, model: LoadedModel, role: Role, max_pixels: int
              ) -> tuple[torch.Tensor, list[str]]:
    """-> (N, *input_shape) float32 in [0, 1], plus the conversions applied (said in the response).

    Images for a binary model are binarised at 0.5; a mask is true where >= 0.5 (white = known).
    """
    shape, f = model.input_shape, batch.field
    if batch.source == "images":
        if not model.is_image:
            raise BadInput(f"{f}: model {model.name} takes {list(shape)} bit strings or arrays, not images",
                           f, model.name)
        binarise = role == "mask" or model.kind == "binary"
        x, notes = decode_images(batch.items, f, shape, binarise, max_pixels)
    elif batch.source == "bits":
        if model.kind != "binary" and role != "mask":
            raise BadInput(f"{f}: bit strings need a binary model; {model.name} is {model.kind}", f,
                           model.name)
        x, notes = _bits(batch.items, f, shape), []
    elif batch.block is not None:
        x, notes = _array_block(batch.block, f, shape), list(batch.notes)
        if role == "mask":
            x = (x >= 0.5).astype(np.float32)
    else:
        x = np.stack([_array(a, f"{f}[{i}]", shape) for i, a in enumerate(batch.items)])
        notes = []
        if role == "mask":
            x = (x >= 0.5).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)), notes


def match_mask(mask: torch.Tensor, queries: torch.Tensor, field: str) -> torch.Tensor:
    """One mask for all queries, or one per query -> bool (B, *input_shape)."""
    if mask.shape[0] == 1:
        mask = mask.expand_as(queries)
    if mask.shape != queries.shape:
        n = queries.shape[0]
        what = "one mask" if n == 1 else f"one mask for all or one per query ({n})"
        raise BadInput(f"{field}: {mask.shape[0]} masks for {n} {'query' if n == 1 else 'queries'}; "
                       f"send {what}", field, mask.shape[0])
    return mask >= 0.5


INK_SHARE = 0.5     # binary image models store light strokes on dark: more light pixels than this is odd


def input_warnings(x: torch.Tensor, notes: list[str], model: LoadedModel, field: str) -> list[str]:
    """What about the decoded input may make recall worse, said in `warnings` (not only `conversions`):
    a resize to the model's size, and for binary image models (white strokes on black) images that
    are mostly white, i.e. likely dark ink on a light background."""
    out = []
    resized = [n for n in notes if n.startswith(("resized", "mask: resized"))]
    if resized:
        out.append(f"{field}: {'; '.join(resized)}: the model works at {'x'.join(map(str, model.input_shape[1:]))} "
                   "pixels, so detail finer than that is lost")
    if model.is_image and model.kind == "binary" and x.numel():
        light = (x.flatten(1).mean(1) > INK_SHARE)                       # (N,)
        if bool(light.any()):
            which = light.nonzero().flatten().tolist()
            shown = ", ".join(map(str, which[:8])) + (" ..." if len(which) > 8 else "")
            out.append(f"{field}: {len(which)} of {x.shape[0]} images are mostly white (items {shown}): "
                       f"model {model.name} stores white strokes on black, so these look inverted; send "
                       "255 - value (light ink on a dark background) unless that is what you mean")
    return out

