"""Seeded query distortions (paper section 5: random blocks, salt-and-pepper, noise, flipped bits)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

FILLS = ("bits", "uniform", "zero", "one", "gray")
SPEC_FORMS = ("none", "block:SIZE", "block:SIZE:FILL (FILL = bits|uniform|zero|one|gray|a float in [0,1])",
              "saltpepper:RATE", "noise:STD", "flip:N", "replace:N")


@dataclass(frozen=True)
class Distorted:
    """A distorted batch and where it was touched (True = corrupted or occluded entry)."""
    x: Tensor     # (B, *S) same shape and dtype as the clean batch
    mask: Tensor  # (B, *S) bool


# ----------------------------------------------------------------------------- helpers

def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform [0,1) draws from a CPU generator, moved to x's device (same seed, same draws anywhere)."""
    return torch.rand(shape, generator=generator).to(device=like.device, dtype=like.dtype)


def _check_batch(x: Tensor, min_dims: int = 2) -> None:
    if x.dim() < min_dims:
        raise ValueError(f"x: expected a batch (B, *S) with at least {min_dims} dims, got {tuple(x.shape)}")


def _fill_values(x: Tensor, fill: str | float, generator: torch.Generator | None) -> Tensor:
    """Replacement values for every entry of x; only the masked ones are used."""
    if isinstance(fill, str):
        if fill == "bits":
            return (_rand(tuple(x.shape), generator, x) < 0.5).to(x.dtype)
        if fill == "uniform":
            return _rand(tuple(x.shape), generator, x)
        constants = {"zero": 0.0, "one": 1.0, "gray": 0.5}
        if fill not in constants:
            raise ValueError(f"fill: unknown value {fill!r}; use one of {FILLS} or a float in [0,1]")
        fill = constants[fill]
    if isinstance(fill, bool) or not 0.0 <= float(fill) <= 1.0:
        raise ValueError(f"fill: {fill!r} is not a float in [0,1]")
    return torch.full_like(x, float(fill))


def _distinct_positions(b: int, d: int, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """(B, D) bool with exactly n True per row at uniformly random distinct positions."""
    if not 0 <= n <= d:
        raise ValueError(f"n: {n} positions requested but each pattern has {d} entries")
    keys = torch.rand((b, d), generator=generator)                        # (B, D)
    idx = keys.topk(n, dim=1).indices                                     # (B, n)
    mask = torch.zeros((b, d), dtype=torch.bool).scatter_(1, idx, True)   # (B, D)
    return mask.to(like.device)


# ----------------------------------------------------------------------------- distortions

def block(x: Tensor, size: int = 16, fill: str | float = "bits",
          generator: torch.Generator | None = None) -> Distorted:
    """One size x size block per image at a uniformly random position fully inside it, over all channels.

    Images are (B, C, H, W) or (B, H, W); for flat patterns (B, D) the block is a contiguous run
    of `size` entries.
    """
    _check_batch(x)
    spatial = tuple(x.shape[-2:]) if x.dim() >= 3 else tuple(x.shape[-1:])
    if size < 1 or any(size > s for s in spatial):
        raise ValueError(f"size: block of {size} does not fit inside patterns of shape {tuple(x.shape[1:])}")
    b = x.shape[0]
    corners = [(torch.rand(b, generator=generator) * (s - size + 1)).long().clamp_(max=s - size)
               for s in spatial]                                          # each (B,)
    inside = [(torch.arange(s) >= c[:, None]) & (torch.arange(s) < c[:, None] + size)
              for s, c in zip(spatial, corners, strict=False)]                          # each (B, s)
    if len(spatial) == 2:
        region = inside[0][:, :, None] & inside[1][:, None, :]            # (B, H, W)
        region = region.view(b, *[1] * (x.dim() - 3), *spatial)           # (B, 1, H, W)
    else:
        region = inside[0]                                                # (B, D)
    mask = region.expand(x.shape).to(x.device)                            # (B, *S)
    return Distorted(torch.where(mask, _fill_values(x, fill, generator), x), mask.contiguous())


def salt_pepper(x: Tensor, rate: float, generator: torch.Generator | None = None) -> Distorted:
    """Each entry independently set to 0 or 1 (equally likely) with probability `rate`."""
    _check_batch(x)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate: {rate!r} is not a probability in [0,1]")
    mask = _rand(tuple(x.shape), generator, x) < rate                     # (B, *S)
    values = (_rand(tuple(x.shape), generator, x) < 0.5).to(x.dtype)      # (B, *S)
    return Distorted(torch.where(mask, values, x), mask)


def gaussian(x: Tensor, std: float, generator: torch.Generator | None = None) -> Distorted:
    """Add N(0, std^2) noise to every entry and clip to [0,1]; every entry counts as touched."""
    _check_batch(x)
    if not std >= 0.0:
        raise ValueError(f"std: {std!r} must be >= 0")
    noise = torch.randn(tuple(x.shape), generator=generator).to(device=x.device, dtype=x.dtype)
    return Distorted((x + std * noise).clamp(0.0, 1.0), torch.ones_like(x, dtype=torch.bool))


def flip_bits(x: Tensor, n: int, generator: torch.Generator | None = None) -> Distorted:
    """Exactly n distinct entries per pattern flipped (x -> 1 - x)."""
    _check_batch(x)
    flat = x.reshape(x.shape[0], -1)                                      # (B, D)
    mask = _distinct_positions(flat.shape[0], flat.shape[1], n, generator, x)
    out = torch.where(mask, 1.0 - flat, flat)                             # (B, D)
    return Distorted(out.reshape(x.shape), mask.reshape(x.shape))


def replace_bits(x: Tensor, n: int, generator: torch.Generator | None = None) -> Distorted:
    """Exactly n distinct entries per pattern replaced by random bits (so about n/2 actually change)."""
    _check_batch(x)
    flat = x.reshape(x.shape[0], -1)                                      # (B, D)
    mask = _distinct_positions(flat.shape[0], flat.shape[1], n, generator, x)
    bits = (_rand(tuple(flat.shape), generator, x) < 0.5).to(x.dtype)    # (B, D)
    return Distorted(torch.where(mask, bits, flat).reshape(x.shape), mask.reshape(x.shape))


def user_mask(x: Tensor, mask: Tensor, fill: str | float = "zero",
              generator: torch.Generator | None = None) -> Distorted:
    """Fill the entries a caller marks (bool mask broadcastable to x)."""
    _check_batch(x, min_dims=1)
    try:
        full = torch.as_tensor(mask, device=x.device).to(torch.bool).expand(x.shape)  # (B, *S)
    except RuntimeError as e:
        raise ValueError(f"mask: shape {tuple(torch.as_tensor(mask).shape)} does not broadcast "
                         f"to x of shape {tuple(x.shape)}") from e
    return Distorted(torch.where(full, _fill_values(x, fill, generator), x), full.contiguous())


def identity(x: Tensor, generator: torch.Generator | None = None) -> Distorted:
    """No distortion (mask all False); lets callers treat 'none' like any other spec."""
    return Distorted(x.clone(), torch.zeros_like(x, dtype=torch.bool))


# ----------------------------------------------------------------------------- specs

@dataclass(frozen=True)
class Distortion:
    """A parsed spec: call it as fn(x, generator) -> Distorted."""
    spec: str
    kind: str
    args: tuple

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Distorted:
        fn: Callable[..., Distorted] = _KINDS[self.kind][0]
        return fn(x, *self.args, generator=generator)

    def describe(self) -> str:
        return _KINDS[self.kind][1](*self.args)


def _bad(spec: str, why: str) -> ValueError:
    return ValueError(f"distortion spec {spec!r}: {why}; valid forms: {', '.join(SPEC_FORMS)}")


def _number(spec: str, text: str, cast: type, lo: float, hi: float, what: str) -> float | int:
    try:
        value = cast(text)
    except ValueError:
        raise _bad(spec, f"{what} {text!r} is not a {cast.__name__}") from None
    if not (lo <= value <= hi) or (isinstance(value, float) and not math.isfinite(value)):
        raise _bad(spec, f"{what} {value} is outside [{lo}, {hi}]")
    return value


def _parse_fill(spec: str, text: str) -> str | float:
    if text in FILLS:
        return text
    return _number(spec, text, float, 0.0, 1.0, "fill")


def _describe_fill(fill: str | float) -> str:
    names = {"bits": "random bits", "uniform": "uniform noise", "zero": "zeros", "one": "ones",
             "gray": "gray (0.5)"}
    return names.get(fill, f"the value {fill}") if isinstance(fill, str) else f"the value {fill:g}"


_KINDS: dict[str, tuple[Callable[..., Distorted], Callable[..., str]]] = {
    "none": (identity, lambda: "no distortion"),
    "block": (block, lambda s, f: f"random {s}x{s} block filled with {_describe_fill(f)}"),
    "saltpepper": (salt_pepper, lambda r: f"salt-and-pepper noise on {r:.0%} of entries"),
    "noise": (gaussian, lambda s: f"additive Gaussian noise with std {s:g}, clipped to [0,1]"),
    "flip": (flip_bits, lambda n: f"{n} random bits flipped"),
    "replace": (replace_bits, lambda n: f"{n} random positions replaced by random bits"),
}


def parse(spec: str) -> Distortion:
    """'block:16', 'block:16:zero', 'saltpepper:0.1', 'noise:0.2', 'flip:8', 'replace:16' or 'none'."""
    if not isinstance(spec, str):
        raise _bad(str(spec), "not a string")
    kind, *parts = spec.strip().lower().split(":")
    if kind not in _KINDS:
        raise _bad(spec, f"unknown kind {kind!r}")
    wanted = {"none": (0, 0), "block": (1, 2)}.get(kind, (1, 1))
    if not wanted[0] <= len(parts) <= wanted[1]:
        raise _bad(spec, f"{kind!r} takes {wanted[0]}-{wanted[1]} arguments, got {len(parts)}")
    if kind == "block":
        size = _number(spec, parts[0], int, 1, 1 << 16, "size")
        args: tuple = (size, _parse_fill(spec, parts[1]) if len(parts) > 1 else "bits")
    elif kind in ("saltpepper",):
        args = (_number(spec, parts[0], float, 0.0, 1.0, "rate"),)
    elif kind == "noise":
        args = (_number(spec, parts[0], float, 0.0, 1e6, "std"),)
    elif kind in ("flip", "replace"):
        args = (_number(spec, parts[0], int, 0, 1 << 30, "n"),)
    else:
        args = ()
    return Distortion(spec, kind, args)


def describe(spec: str) -> str:
    """Human text for a spec, e.g. 'random 16x16 block filled with random bits'."""
    return parse(spec).describe()
