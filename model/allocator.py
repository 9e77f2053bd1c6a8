"""The C allocator's thresholds, for processes that serve reads.

glibc's malloc serves a large block (past a threshold that starts at 128 KiB and moves with what is freed) by
mapping fresh pages, and hands it back to the kernel when it is freed, so the next read's block of the same
size faults every page in again: on one AMD EPYC host, a 64-query read of photos32-span16k, whose recall
builds batches of 179 x 179 systems (8 MB each), took 3,219 minor page faults and 7.6 ms of kernel time per
read, and 12 faults and no measurable kernel time with the thresholds raised (scripts/check_allocator.py,
results/explore/allocator-faults.json, medians of 4 rounds of fresh processes).
`keep_freed_memory` raises them, so that freed blocks stay in the heap for the next read.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3           # mallopt's parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20                             # glibc's largest on 64-bit hosts
TRIM_THRESHOLD = 128 << 20                            # free heap kept at its top before it goes back


def keep_freed_memory(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Blocks below mmap_threshold come from the heap, and up to trim_threshold of free memory stays at its
    top; True where glibc took both (elsewhere, as under musl or on macOS, nothing changes: False). The cost:
    the process keeps up to trim_threshold of freed memory it would have given back."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
