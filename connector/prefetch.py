"""Reading the next page of a full read while the store takes in the last one.

A reconcile alternates between the adapter (waiting on a vendor's pages and rate limit, or parsing
a file) and the store (SQLite, which runs without the GIL). Run one after the other, their times
add up; with the read on a thread of its own they overlap, so a reconcile against a rate-limited
vendor takes as long as the vendor's pages and no longer. At most `ahead` pages wait in between,
so memory stays a few pages.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(pages: Iterator[T], stop: threading.Event | None = None, ahead: int = 2) -> Iterator[T]:
    """The items of `pages`, read `ahead` items in advance on a thread; its error is raised here, in order.

    Leaving the loop early (a break, an error, `stop`) tells the thread to stop after the item it
    is reading; the iterator is closed on that thread, so its cleanup runs where it ran.
    """
    handoff: queue.Queue = queue.Queue(maxsize=ahead)
    quit_reading = threading.Event()

    def put(item) -> bool:
        while not quit_reading.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        iterator = iter(pages)
        try:
            for item in iterator:
                if not put((item, None)) or (stop is not None and stop.is_set()):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which raises it as its own
            put((_DONE, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    reader = threading.Thread(target=read, name="full-read", daemon=True)
    reader.start()
    try:
        while True:
            try:
                item, error = handoff.get(timeout=0.1)
            except queue.Empty:
                if not reader.is_alive() and handoff.empty():
                    return  # stopped (stop was set) without a last item
                continue
            if item is _DONE:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        quit_reading.set()
        reader.join()
