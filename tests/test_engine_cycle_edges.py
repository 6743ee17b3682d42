"""One adapter's cycle at its edges: dry-run lists, push only, the guard's note, the wake-up, the run's start.

Written for mutants a mutation run left alive in Engine.cycle, _promote_within_guard and _recorded.
"""

from __future__ import annotations

import time

from state.models import OptOut, utc_now

ADDRESSES = [f"r{i}@example.com" for i in range(5)]


def test_a_dry_cycle_counts_everything_and_lists_at_most_the_limit(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    for address in ADDRESSES:
        v["a"].opt_out(OptOut(address))
    engine.dry_run_list_limit = 2
    report = engine.cycle("a", dry_run=True)
    assert report.staged == 5 and [o.address for o in report.would_add] == ADDRESSES[:2]
    assert store.suppression(ADDRESSES[0]) is None and store.last_run("a") is None


def test_a_push_only_cycle_reads_nothing(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].opt_out(OptOut("x@example.com"))
    report = engine.cycle("a", push_only=True)
    assert (report.error, report.pulled, report.phase) == (None, 0, "push")
    assert store.suppression("x@example.com") is None and store.last_run("a")["phase"] == "push"
    assert engine.cycle("a").pulled == 1


def test_the_guard_says_how_to_approve_and_new_opt_outs_wake_the_pushers_by_name(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 2}, {"name": "b"}])
    woken: list[str] = []
    engine.on_new_events = woken.append
    for address in ADDRESSES[:3]:
        v["a"].opt_out(OptOut(address))
    report = engine.cycle("a")
    assert report.notes == ["3 new opt-outs exceed max_new_per_cycle=2; paused until "
                            "'optout-sync approve a --count 3'"]
    assert woken == []
    v["b"].opt_out(OptOut("y@example.com"))
    assert engine.cycle("b").added == 1 and woken == ["b"]


def test_a_run_is_recorded_with_the_time_its_work_began(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    reads = v["a"].read_changes

    def slow(cursor):
        time.sleep(0.3)
        yield from reads(cursor)

    v["a"].read_changes = slow
    before = utc_now()
    engine.cycle("a")
    run = store.last_run("a")
    assert before <= run["started_at"] < utc_now()
    assert run["duration_ms"] >= 300
    after_start = run["started_at"]
    # Taken before the read, not when the run was written down 0.3 s later.
    from datetime import datetime
    assert (datetime.fromisoformat(after_start) - datetime.fromisoformat(before)).total_seconds() < 0.2
