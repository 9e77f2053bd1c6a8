"""The .npy reader and writer (service/npy.py) read what np.load reads, refuse what it refuses, and write
what np.save writes."""
from __future__ import annotations

import io

import numpy as np
import pytest

from service import npy

SHAPES = [(1, 1, 32, 32), (64, 3, 8, 8), (5,), (), (2, 0, 3), (3, 128)]
DTYPES = [np.float32, np.float64, np.float16, np.uint8, np.bool_, np.int64, np.int32, ">f4", "<u2"]


def _saved(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


@pytest.mark.parametrize("shape", SHAPES)
def test_reads_every_plain_array_as_np_load_does_without_falling_back(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    for dt in DTYPES:
        for order in ("C", "F"):
            a = np.asarray(rng.random(shape) * 3, order=order).astype(dt, order=order)
            raw = _saved(a)
            fast = npy._fast(raw)
            assert fast is not None, (dt, order)
            ref = np.load(io.BytesIO(raw))
            assert fast.dtype == ref.dtype and fast.shape == ref.shape and np.array_equal(fast, ref)
            assert fast.flags.writeable and not np.shares_memory(fast, np.frombuffer(raw, np.uint8))


@pytest.mark.parametrize("shape", SHAPES)
def test_writes_what_np_save_writes(shape: tuple[int, ...]) -> None:
    a = np.asarray(np.random.default_rng(1).random(shape), dtype=np.float32)
    assert npy.dump(a) == _saved(a)
    assert npy.dump(a.astype(np.float64)) == _saved(a)              # float32 whatever it is given
    assert npy.dump(np.asarray(a, order="F")) == _saved(a)           # ... and in C order
    u8 = np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)
    assert npy.dump(a, "uint8") == _saved(u8)
    assert npy.dump(np.asarray(a * 2 - 0.5), "uint8") == _saved(np.clip(np.rint((a * 2 - 0.5) * 255), 0, 255)
                                                             .astype(np.uint8))  # out of [0, 1]: clipped


def test_refuses_what_np_load_refuses() -> None:
    raw = _saved(np.zeros((2, 3), np.float32))
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    for bad in (raw[:-1], raw[:20], b"\x93NUMPY\x01\x00", b"not an array", objects.getvalue()):
        with pytest.raises((ValueError, OSError, EOFError)):
            np.load(io.BytesIO(bad), allow_pickle=False)
        with pytest.raises((ValueError, OSError, EOFError)):
            npy.load(bad)
    text = _saved(np.array(["é"]))                                  # dtypes other than numbers: np.load's path
    assert npy._fast(text) is None and npy.load(text)[0] == "é"


def _raw(header: str, data: bytes = b"", version: int = 1) -> bytes:
    size = "<H" if version == 1 else "<I"
    import struct
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack(size, len(header)) + header.encode("latin1") + data


def test_hostile_headers_are_value_errors_before_anything_large_is_allocated() -> None:
    """Each a 422 on the request path (bodies.parse_npy turns ValueError into one), never a 500."""
    bad = [
        _raw("{'descr': '<f1', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 8),     # no such dtype
        _raw("{'descr': '|b4', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 8),
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000, 1), }\n", b"\0" * 16),
        _raw("{'shape': (1000000000000, 1), 'fortran_order': False, 'descr': '<f4', }\n", b"\0" * 16),
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999, 1), }\n", b"\0"),
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2, \n", b"\0" * 8),       # cut short
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 4),     # short
        _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }\n", b"\0" * 8, version=7),
    ]
    for raw in bad:
        with pytest.raises(ValueError):
            npy.load(raw)
    # numpy refuses leading zeros in its own parser; the fast path leaves such headers to it
    zeros = _raw("{'descr': '<f4', 'fortran_order': False, 'shape': (01, 2), }\n", b"\0" * 8)
    assert npy._fast(zeros) is None
    with pytest.raises(ValueError):
        npy.load(zeros)
