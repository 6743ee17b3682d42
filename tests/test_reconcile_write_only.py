"""The reconcile of a sink that is only written (its read merged against the store, state/merge_diff.py), and
how a cycle's duration is measured. Written for survivors of a mutation run (docs/testing.md)."""

from __future__ import annotations

import itertools

import connector.engine as engine_module
from connector.engine import CycleReport
from state.models import OptOut


def _source_set_rows(store) -> int:
    exists = store.conn.execute("SELECT 1 FROM temp.sqlite_master WHERE name = 'source_set'").fetchone()
    return store.conn.execute("SELECT count(*) FROM temp.source_set").fetchone()[0] if exists else 0


def test_a_write_only_sink_under_the_global_policy_gets_a_lost_topic_opt_out_back_as_all_email(memory_world):
    settings, store, engine, v = memory_world(
        [{"name": "a", "role": "read", "topics": {"news": "n"}},
         {"name": "c", "role": "write", "unmapped_topics": "global"},
         {"name": "d", "role": "write"}],
        topics={"news": "Newsletter"})
    v["a"].opt_out(OptOut("x@example.com", scope="news"))
    v["a"].opt_out(OptOut("y@example.com"))
    engine.sync_once()
    assert set(v["c"].held) == {("x@example.com", "*"), ("y@example.com", "*")}
    assert set(v["d"].held) == {("y@example.com", "*")}  # "skip": d cannot hold a news opt-out
    del v["c"].held[("x@example.com", "*")]
    v["c"].apply_calls.clear()
    v["d"].apply_calls.clear()

    report = engine.reconcile("c")
    assert (report.error, report.missing_at_source, report.pushed) == (None, 1, 1)
    assert [[(o.address, o.scope) for o in call] for call in v["c"].apply_calls] == [[("x@example.com", "*")]]
    # The sink's full read was merged against the store, never loaded into the store's source-set table.
    assert _source_set_rows(store) == 0

    report = engine.reconcile("d")
    assert (report.error, report.missing_at_source, report.pushed, v["d"].apply_calls) == (None, 0, 0, [])


def test_a_cycle_records_its_duration_in_milliseconds_and_keeps_the_error(memory_world, monkeypatch):
    settings, store, engine, v = memory_world([{"name": "a"}])
    clock = itertools.chain([100.0, 102.5])
    monkeypatch.setattr(engine_module.time, "monotonic", lambda: next(clock))
    report = CycleReport("a")

    def work():
        raise RuntimeError("vendor down")

    engine._timed(report, work)
    assert report.duration_ms == 2500 and str(report.error) == "vendor down"
