"""connector.prefetch: a full read runs a few pages ahead on a thread; order, errors and early exits hold."""

from __future__ import annotations

import threading
import time

import pytest

from connector.prefetch import prefetched


def test_items_come_in_order_and_reading_overlaps_the_consumer():
    def pages():
        for n in range(10):
            time.sleep(0.02)            # the vendor's page
            yield n

    started = time.perf_counter()
    seen = []
    for item in prefetched(pages()):
        time.sleep(0.02)                # the store's work on it
        seen.append(item)
    assert seen == list(range(10))
    assert time.perf_counter() - started < 0.35   # 0.4 s one after the other; about 0.22 s overlapped


def test_an_error_of_the_read_is_raised_after_the_items_before_it():
    def pages():
        yield 1
        yield 2
        raise ValueError("page 3 is malformed")

    seen = []
    with pytest.raises(ValueError, match="page 3"):
        for item in prefetched(pages()):
            seen.append(item)
    assert seen == [1, 2]


def test_leaving_early_stops_the_reader_and_closes_the_read_on_its_thread():
    closed_on, read = [], []

    def pages():
        try:
            for n in range(1000):
                read.append(n)
                yield n
        finally:
            closed_on.append(threading.current_thread().name)

    for item in prefetched(pages(), ahead=2):
        if item == 3:
            break
    assert closed_on == ["full-read"] and len(read) <= 3 + 2 + 2


def test_a_stop_ends_the_read_after_the_page_in_hand():
    stop = threading.Event()

    def pages():
        for n in range(1000):
            if n == 5:
                stop.set()
            yield n

    assert list(prefetched(pages(), stop)) == [0, 1, 2, 3, 4, 5]
