"""Pause the cyclic garbage collector while a request builds or parses a large body.

Millions of new floats and lists (a JSON body of arrays, an answer with a trajectory) otherwise trigger
full collections that hold the GIL for a few hundred milliseconds and stall the event loop (measured:
/healthz waited 230 ms during one large retrieve; tests/integration/test_bounded_work.py). The objects
built hold no reference cycles; collection resumes when the last pauser finishes.
"""
from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_pausers = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    global _pausers
    with _lock:
        _pausers += 1
        gc.disable()
    try:
        yield
    finally:
        with _lock:
            _pausers -= 1
            if _pausers == 0:
                gc.enable()
