"""A push's batches at their edges (Engine.push, _apply, _settle, _Sender): what the sink receives, what
is recorded, where the watermark stops, and the report's counts over several batches.

Written for mutants a mutation run left alive in connector/engine.py.
"""

from __future__ import annotations

import json
import threading

from state.errors import PermanentError, TransientError
from state.models import OptOut

R = [f"r{i}@example.com" for i in range(6)]


def world(memory_world, **sink):
    """'a' is read; 'b' only written, two items a batch, without the 'news' topic."""
    settings, store, engine, v = memory_world(
        [{"name": "a", "topics": {"news": "n"}}, {"name": "b", "role": "write", "batch_size": 2, **sink}],
        topics={"news": "Newsletter"})
    return settings, store, engine, v


def pulled(engine, v, optouts):
    """Opt-outs read from 'a' into the store; their event seqs, in order."""
    for optout in optouts:
        v["a"].opt_out(optout)
    assert engine.cycle("a").error is None
    return [next(e["seq"] for e in engine.store.events_for(o.address) if e["kind"] == "suppressed")
            for o in optouts]


def sent(vendor):
    return [[o.address for o in call] for call in vendor.apply_calls]


def events(store, kind, target="b"):
    """(address, ref_seq, message) of the events of one kind recorded for the sink, in order."""
    return store.conn.execute("SELECT address, ref_seq, message FROM events WHERE kind = ? AND target = ?"
                              " ORDER BY seq", (kind, target)).fetchall()


def inflight(store):
    return store.conn.execute("SELECT adapter, seq FROM inflight ORDER BY seq").fetchall()


def test_counts_over_several_batches_and_skipped_items_keep_their_seq(memory_world):
    settings, store, engine, v = world(memory_world)
    v["b"].fail_permanent_addresses = {R[0], R[3]}
    seqs = pulled(engine, v, [OptOut("u0@example.com", "news"), OptOut(R[0]), OptOut(R[1]),
                              OptOut("u1@example.com", "news"), OptOut(R[2]), OptOut(R[3]), OptOut(R[4])])
    report = engine.cycle("b", push_only=True)
    assert report.error is None
    assert sent(v["b"]) == [[R[0], R[1]], [R[2], R[3]], [R[4]]]
    assert (report.pushed, report.failed, report.skipped, report.parked) == (3, 2, 2, 0)
    assert events(store, "skipped") == [
        ("u0@example.com", seqs[0], "topic 'news' is not mapped at b"),
        ("u1@example.com", seqs[3], "topic 'news' is not mapped at b")]
    assert store.checkpoint("b").applied_seq == seqs[-1]


def test_a_push_of_only_unmapped_items_moves_the_watermark_past_them(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut("u0@example.com", "news")])
    report = engine.cycle("b", push_only=True)
    assert (report.error, report.skipped, v["b"].apply_calls) == (None, 1, [])
    assert store.checkpoint("b").applied_seq == seqs[0]
    assert engine.cycle("b", push_only=True).skipped == 0  # not scanned again


def test_a_push_stopped_while_a_batch_is_at_the_sink_records_it_and_sends_no_more(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut(R[0]), OptOut(R[1]), OptOut(R[2])])
    mark = store.mark_inflight

    def stopping(adapter, batch_seqs):
        engine.stop.set()  # e.g. the daemon is told to stop as the first batch goes out
        return mark(adapter, batch_seqs)

    store.mark_inflight = stopping
    report = engine.cycle("b", push_only=True)
    assert report.error is None and sent(v["b"]) == [[R[0], R[1]]]
    assert [a for a, _, _ in events(store, "applied")] == [R[0], R[1]]
    assert store.checkpoint("b").applied_seq == seqs[1] and inflight(store) == []


def test_the_sinks_calls_run_on_a_thread_named_after_the_adapter(memory_world):
    settings, store, engine, v = world(memory_world)
    pulled(engine, v, [OptOut(R[0]), OptOut(R[1]), OptOut(R[2])])
    apply, threads = v["b"].apply, []

    def noting(batch):
        threads.append(threading.current_thread().name)
        return apply(batch)

    v["b"].apply = noting
    assert engine.cycle("b", push_only=True).pushed == 3
    assert threads == ["push-b_0", "push-b_0"]


def test_a_sink_answering_for_a_different_number_of_items_fails_the_push_and_keeps_no_marks(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut(R[0]), OptOut(R[1])])
    apply = v["b"].apply
    v["b"].apply = lambda batch: apply(batch)[:-1]
    report = engine.cycle("b", push_only=True)
    assert isinstance(report.error, PermanentError)
    assert str(report.error) == "adapter 'b' returned 1 results for 2 items"
    assert inflight(store) == [] and events(store, "applied") == []
    assert store.checkpoint("b").applied_seq < seqs[0]


def test_a_batch_failing_as_a_whole_after_one_that_went_through(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut(R[0]), OptOut(R[1]), OptOut(R[2]), OptOut(R[3])])
    apply = v["b"].apply

    def then_refused(batch):
        if v["b"].apply_calls:
            raise PermanentError("401 invalid credentials")
        return apply(batch)

    v["b"].apply = then_refused
    report = engine.cycle("b", push_only=True)
    assert isinstance(report.error, PermanentError) and str(report.error) == "401 invalid credentials"
    assert [(a, s) for a, s, _ in events(store, "applied")] == [(R[0], seqs[0]), (R[1], seqs[1])]
    assert store.checkpoint("b").applied_seq == seqs[1] and inflight(store) == []


def test_a_transient_error_parks_the_batch_with_its_message(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut(R[0]), OptOut(R[1])])
    v["b"].fail_transient_batches = 1
    report = engine.cycle("b", push_only=True)
    assert isinstance(report.error, TransientError) and report.parked == 2
    assert events(store, "failed") == [(R[0], seqs[0], "transient: 503 service unavailable"),
                                       (R[1], seqs[1], "transient: 503 service unavailable")]
    assert store.checkpoint("b").applied_seq == seqs[0] - 1


def test_a_parked_batch_still_counts_a_resent_item_the_sink_holds_as_our_apply(memory_world):
    settings, store, engine, v = world(memory_world)
    seqs = pulled(engine, v, [OptOut(R[0]), OptOut(R[1])])
    store.mark_inflight("b", [seqs[0]])  # a process died after sending it, before recording it
    v["b"].held[(R[0], "*")] = OptOut(R[0])  # that send reached the sink
    v["b"].fail_transient_addresses = {R[1]}
    report = engine.cycle("b", push_only=True)
    assert (report.pushed, report.parked) == (1, 1)
    assert events(store, "applied") == [(R[0], seqs[0], "applied by a send interrupted before its outcome was recorded")]
    applied = store.conn.execute("SELECT details FROM events WHERE kind = 'applied' AND target = 'b'").fetchone()[0]
    assert json.loads(applied)["outcome"] == "applied"
    assert store.checkpoint("b").applied_seq == seqs[0]


def test_a_long_pushs_progress_counts_the_skipped_items_with_each_batch(memory_world, monkeypatch):
    import io

    from connector import progress as progress_module
    from connector.logs import setup_logging

    settings, store, engine, v = world(memory_world)
    pulled(engine, v, [OptOut("u0@example.com", "news"), OptOut(R[0]), OptOut(R[1]), OptOut(R[2]), OptOut(R[3])])
    log = io.StringIO()
    setup_logging("json", "info", stream=log)
    engine.report_progress = True
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.0)  # a report at every batch
    assert engine.cycle("b", push_only=True).pushed == 4
    lines = [json.loads(line) for line in log.getvalue().splitlines() if '"progress"' in line]
    assert [(e["adapter"], e["phase"], e["done"], e["total"]) for e in lines] == [
        ("b", "push", 3, 5), ("b", "push", 5, 5)]


def test_progress_is_reported_only_when_asked_for_and_never_in_a_dry_run(memory_world, monkeypatch):
    import io

    from connector import progress as progress_module
    from connector.logs import setup_logging
    from connector.progress import STORE_KEY

    settings, store, engine, v = world(memory_world)
    pulled(engine, v, [OptOut(R[0]), OptOut(R[1]), OptOut(R[2]), OptOut(R[3])])
    log = io.StringIO()
    setup_logging("json", "info", stream=log)
    monkeypatch.setattr(progress_module, "PROGRESS_EVERY", 0.0)
    saved = store.save_adapter_memory
    rows: list = []
    store.save_adapter_memory = lambda name, changes: (rows.append(changes), saved(name, changes))[1]
    engine.report_progress = True
    assert engine.cycle("b", push_only=True, dry_run=True).pushed == 4  # counted, not sent
    from connector.engine import Engine

    assert Engine(settings, store, engine.adapters).cycle("b", push_only=True).pushed == 4  # off by default
    assert '"progress"' not in log.getvalue()
    assert [r for r in rows if STORE_KEY in r] == []


def test_after_a_last_full_batch_the_watermark_passes_the_events_the_sink_needs_not(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b", "batch_size": 2}])
    v["a"].opt_out(OptOut(R[0]))
    v["a"].opt_out(OptOut(R[1]))
    assert engine.cycle("a").added == 2
    v["b"].opt_out(OptOut(R[2]))  # b's own: never pushed back to b
    assert engine.cycle("b", push_only=False).error is None
    own = next(e["seq"] for e in store.events_for(R[2]) if e["kind"] == "suppressed")
    assert sent(v["b"]) == [[R[0], R[1]]]
    assert store.checkpoint("b").applied_seq == own
