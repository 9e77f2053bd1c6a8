""".npy bodies without numpy's general reader: a retrieve of one query spent more time in np.load's header
parser (ast.literal_eval) and np.save than in copying its 4 KiB.

`load` reads the header numpy itself writes (format 1.0 or 2.0, a plain number dtype, C or Fortran order)
with one regular expression and hands anything else to np.load with pickles refused, so what it accepts
and refuses is np.load's. `dump` writes a valid format-1.0 file of a float32 array, or uint8 x 255.
"""
from __future__ import annotations

import io
import re
import struct

import numpy as np

MAGIC = b"\x93NUMPY"
_HEADER = re.compile(r"\{'descr': '([<>|=]?[biuf][1248])', 'fortran_order': (True|False), "
                     r"'shape': \(((?:\d+, )*\d*|(?:\d+, )*\d+,?)\), \} *\n")
_SIZES = {1: struct.Struct("<H"), 2: struct.Struct("<I")}
ALIGN = 64                                     # numpy pads the header so that the data starts aligned


def _fast(raw: bytes) -> np.ndarray | None:
    if len(raw) < 10 or raw[:6] != MAGIC or raw[6] not in _SIZES or raw[7] != 0:
        return None
    size = _SIZES[raw[6]]
    start = 8 + size.size
    if len(raw) < start:
        return None
    (n,) = size.unpack_from(raw, 8)
    m = _HEADER.fullmatch(raw[start:start + n].decode("latin1"))
    if m is None:
        return None
    dtype = np.dtype(m.group(1))
    shape = tuple(int(s) for s in m.group(3).replace(",", " ").split())
    count = int(np.prod(shape, dtype=np.int64))
    at = start + n
    if len(raw) - at < count * dtype.itemsize:
        return None                                # too short: np.load says so in its own words
    a = np.frombuffer(raw, dtype, count, at).copy()   # a writable array of its own, as np.load gives
    return a.reshape(shape, order="F" if m.group(2) == "True" else "C")


def load(raw: bytes) -> np.ndarray:
    """A .npy file's array; ValueError, OSError or EOFError as np.load(allow_pickle=False) raises them."""
    a = _fast(raw)
    return a if a is not None else np.load(io.BytesIO(raw), allow_pickle=False)


def dump(a: np.ndarray, dtype: str = "float32") -> bytes:
    """a as a .npy file (format 1.0) in C order: float32, or with dtype="uint8" values in [0, 1] as round(255 a)."""
    if dtype == "uint8":
        a = np.asarray(np.clip(np.rint(np.asarray(a, dtype=np.float32) * 255), 0, 255), dtype=np.uint8, order="C")
        descr = "|u1"
    elif dtype == "float32":
        a = np.asarray(a, dtype=np.float32, order="C")      # not ascontiguousarray: that makes 0-d arrays 1-d
        descr = "<f4"
    else:
        raise ValueError(f"dtype {dtype!r}: expected float32 or uint8")
    shape = tuple(int(s) for s in a.shape)
    head = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}"
    pad = -(10 + len(head) + 1) % ALIGN
    header = (head + " " * pad + "\n").encode("latin1")
    return b"".join((MAGIC, b"\x01\x00", _SIZES[1].pack(len(header)), header, a.tobytes()))
