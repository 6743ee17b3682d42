"""Fewer runs of CPython's cyclic garbage collector while bulk work runs.

A push batch, a reconcile page or an import block keeps tens of thousands of
objects alive at once (a csv_file batch of 10,000 opt-outs is about 60,000).
At CPython's default threshold (a collection for every 700 objects made and
not yet freed) the collector runs dozens of times per batch, and each run
scans the batch's objects again as they age: 15 to 25 % of a push or of a
reconcile's sink side, measured (bench/RESULTS.md). None of those objects is
garbage; reference counting frees them when their batch is done.

So while any bulk work runs, the first generation is collected only after
BULK_THRESHOLD objects, which a batch does not reach. Cyclic garbage is still
collected, only later: at most BULK_THRESHOLD objects of it wait, which bounds
the memory it can hold. Work on several threads shares one setting; the last to
finish puts the previous threshold back. The daemon does not use it: its
webhook receiver makes garbage all the time, which would wait too (measured:
ingest peak RSS 115 -> 136 MB).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BULK_THRESHOLD = 100_000

_lock = threading.Lock()
_running = 0
_saved: tuple[int, ...] = ()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the block with the collector's first threshold at BULK_THRESHOLD (never lowered, never enabled)."""
    global _running, _saved
    with _lock:
        if _running == 0:
            _saved = gc.get_threshold()
            # A threshold of 0 means automatic collection is off: whoever turned it off meant it.
            if 0 < _saved[0] < BULK_THRESHOLD:
                gc.set_threshold(BULK_THRESHOLD, *_saved[1:])
        _running += 1
    try:
        yield
    finally:
        with _lock:
            _running -= 1
            if _running == 0:
                gc.set_threshold(*_saved)
