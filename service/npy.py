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
_DIM = r"(?:0|[1-9]\d{0,17})"                  # as numpy writes them: no leading zeros, below 2**63
_HEADER = re.compile(r"\{'descr': '([<>|=]?(?:b1|[iu][1248]|f[248]))', 'fortran_order': (True|False), "
                     rf"'shape': \(((?:{_DIM}, )*(?:{_DIM},?)?)\), \}} *\n")
MAX_HEADER = 10_000                              # numpy's own limit (max_header_size)
_SIZES = {1: struct.Struct("<H"), 2: struct.Struct("<I")}
ALIGN = 64                                     # numpy pads the header so that the data starts aligned
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _fast(raw: bytes) -> np.ndarray | None:
    if len(raw) < 10 or raw[:6] != MAGIC or raw[6] not in _SIZES or raw[7] != 0:
        return None
    size = _SIZES[raw[6]]
    start = 8 + size.size
    if len(raw) < start:
        return None
    (n,) = size.unpack_from(raw, 8)
    if n > MAX_HEADER:
        return None
    m = _HEADER.fullmatch(raw[start:start + n].decode("latin1"))
    if m is None:
        return None
    dtype = np.dtype(m.group(1))
    shape = tuple(int(s) for s in m.group(3).replace(",", " ").split())
    count = int(np.prod(shape, dtype=np.int64))
    at = start + n
    if len(raw) - at < count * dtype.itemsize:
        raise ValueError(f"the header says {shape} {dtype} ({count * dtype.itemsize} bytes), the file holds "
                         f"{len(raw) - at} bytes of data")
    a = np.frombuffer(raw, dtype, count, at).copy()   # a writable array of its own, as np.load gives
    return a.reshape(shape, order="F" if m.group(2) == "True" else "C")


def load(raw: bytes) -> np.ndarray:
    """A .npy file's array. What np.load(allow_pickle=False) refuses raises ValueError (its own, or its
    other errors as ValueError), and so does a header that promises more data than the file holds, before
    anything is allocated for it."""
    a = _fast(raw)
    if a is not None:
        return a
    try:
        f = io.BytesIO(raw)
        read_header = _HEADER_READERS.get(np.lib.format.read_magic(f))
        if read_header is not None:                # format 3.0 and unknown ones: np.load's own checks
            shape, _, dtype = read_header(f)
            need = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if not dtype.hasobject and len(raw) - f.tell() < need:
                raise ValueError(f"the header says {shape} {dtype} ({need} bytes), the file holds "
                                 f"{len(raw) - f.tell()} bytes of data")
        f.seek(0)
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise
    except Exception as e:                       # noqa: BLE001 - np.load's parser leaks others (TokenError, ...)
        raise ValueError(f"{type(e).__name__}: {e}") from e


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
