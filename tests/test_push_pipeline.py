"""A push records each batch while the next one is at the sink: faster, one call at a time, nothing lost."""

from __future__ import annotations

import threading
import time

import pytest

from connector.engine import CycleReport
from state.errors import StoreError
from state.models import OptOut, Page
from state.store import Store


def world(memory_world, n: int, batch: int):
    settings, store, engine, built = memory_world([{"name": "src", "role": "read", "max_new_per_cycle": 10_000},
                                                   {"name": "sink", "role": "write", "batch_size": batch}])
    store.ingest_page("src", Page([OptOut(f"p{i:03d}@x.io") for i in range(n)]))
    store.promote("src")
    return store, engine, built["sink"]


def slowed(sink, seconds: float):
    """The sink's apply takes `seconds` more, and counts how many calls are at the sink at once."""
    original, lock, state = sink.apply, threading.Lock(), {"now": 0, "most": 0}

    def apply(batch):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        try:
            time.sleep(seconds)
            return original(batch)
        finally:
            with lock:
                state["now"] -= 1

    sink.apply = apply
    return state


def test_recording_overlaps_the_next_call_and_only_one_call_is_at_the_sink(memory_world, monkeypatch):
    store, engine, sink = world(memory_world, 50, 10)
    calls = slowed(sink, 0.2)
    original = Store.record_push

    def slow_record(self, *args, **kwargs):
        time.sleep(0.2)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Store, "record_push", slow_record)
    started = time.perf_counter()
    report = engine.cycle("sink", push_only=True)
    wall = time.perf_counter() - started
    assert report.error is None and report.pushed == 50 and calls["most"] == 1
    assert len(sink.held) == 50 and store.checkpoint("sink").applied_seq == store.last_event_seq() - 50
    assert store.conn.execute("SELECT count(*) FROM inflight").fetchone()[0] == 0
    assert wall < 1.6     # 5 calls and 5 records one after the other: 2.0 s; overlapped about 1.2 s


def test_a_record_that_fails_leaves_the_marks_of_the_batch_at_the_sink(memory_world, monkeypatch):
    store, engine, sink = world(memory_world, 30, 10)
    original, seen = Store.record_push, []

    def failing_second(self, name, outcomes, *args, **kwargs):
        seen.append([o.seq for o in outcomes])
        if len(seen) == 2:
            raise StoreError("disk full")
        return original(self, name, outcomes, *args, **kwargs)

    monkeypatch.setattr(Store, "record_push", failing_second)
    report = engine.cycle("sink", push_only=True)
    assert isinstance(report.error, StoreError)
    marked = {row[0] for row in store.conn.execute("SELECT seq FROM inflight WHERE adapter = 'sink'")}
    # The second batch was being recorded while the third was at the sink: both keep their marks,
    # so the re-send next cycle counts them as this daemon's applies.
    assert marked == set(seen[1]) | {seq for seq in range(seen[1][-1] + 1, seen[1][-1] + 11)}
    assert len(sink.held) == 30
    monkeypatch.setattr(Store, "record_push", original)
    again = engine.cycle("sink", push_only=True)
    assert again.error is None and again.pushed == 20
    applied = store.conn.execute("SELECT count(*) FROM events WHERE kind = 'applied' AND target = 'sink'"
                                 " AND json_extract(details, '$.outcome') = 'applied'").fetchone()[0]
    assert applied == 30


def test_a_batch_with_a_parked_item_stops_the_push_before_the_next_batch_is_sent(memory_world):
    store, engine, sink = world(memory_world, 40, 10)
    sent = []
    original = sink.apply

    def apply(batch):
        sent.append([o.address for o in batch])
        return original(batch)

    sink.apply = apply
    sink.fail_transient_addresses = {"p015@x.io"}          # in the second batch
    report = engine.cycle("sink", push_only=True)
    assert len(sent) == 2 and report.parked == 1 and report.pushed == 19
    # The watermark stops just before the parked event; the next cycle sends from there.
    parked_seq = store.conn.execute("SELECT seq FROM suppressions WHERE address = 'p015@x.io'").fetchone()[0]
    assert store.checkpoint("sink").applied_seq == parked_seq - 1
    sink.fail_transient_addresses = set()
    again = engine.cycle("sink", push_only=True)
    assert again.error is None and again.pushed == 21 and len(sink.held) == 40
