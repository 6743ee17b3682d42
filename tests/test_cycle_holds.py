"""What a cycle, a sync and a reconcile hold around their work: an HTTP adapter's retry budget, an
adapter's memory (not saved by a dry run), the pull's error over the push's, and what a stopped pull
read. Written for mutants a mutation run left alive in Engine.cycle, sync_once, reconcile and pull.
"""

from __future__ import annotations

from contextlib import contextmanager

from adapters.base import AdapterMemory
from state.errors import PermanentError, TransientError
from state.models import OptOut


class Budget:
    """Stands for an HTTP client's retry budget: `cycle()` holds one budget for everything inside it."""

    def __init__(self):
        self.held = 0

    @contextmanager
    def cycle(self):
        self.held += 1
        try:
            yield
        finally:
            self.held -= 1


def budgeted(vendor) -> list[tuple[str, int]]:
    """Give `vendor` a retry budget; note, at each read and apply, whether it was held."""
    vendor.http = Budget()
    seen: list[tuple[str, int]] = []
    for method in ("read_changes", "read_all", "apply"):
        def noting(*args, _call=getattr(vendor, method), _name=method):
            seen.append((_name, vendor.http.held))
            return _call(*args)
        setattr(vendor, method, noting)
    return seen


def test_a_cycle_a_sync_and_a_reconcile_hold_each_adapters_retry_budget(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    seen = {name: budgeted(v[name]) for name in ("a", "b")}
    v["a"].opt_out(OptOut("x@example.com"))
    assert engine.cycle("a").error is None
    assert seen["a"] == [("read_changes", 1)]
    assert [r.error for r in engine.sync_once()] == [None, None]
    assert seen["b"] == [("read_changes", 1), ("apply", 1)]
    v["b"].held.clear()
    assert engine.reconcile("b").error is None
    assert seen["b"][2:] == [("read_all", 1), ("apply", 1)]
    assert v["a"].http.held == v["b"].http.held == 0


def test_a_dry_run_loads_an_adapters_memory_but_does_not_save_what_it_learnt(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    store.save_adapter_memory("a", {"known": "1"})
    v["a"].memory = AdapterMemory()
    reads, loaded = v["a"].read_changes, []

    def learning(cursor):
        loaded.append(v["a"].memory.get("known"))
        v["a"].memory.set("learnt", "yes")
        return reads(cursor)

    v["a"].read_changes = learning
    assert engine.cycle("a", dry_run=True).error is None
    assert [r.error for r in engine.sync_once(dry_run=True)] == [None]
    assert loaded == ["1", "1"] and store.adapter_memory("a") == {"known": "1"}
    assert engine.cycle("a").error is None
    assert store.adapter_memory("a") == {"known": "1", "learnt": "yes"}


def test_a_sync_reports_the_pull_error_when_the_push_fails_too(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b"}])
    v["b"].opt_out(OptOut("x@example.com"))
    v["a"].read_error = TransientError("connection reset while reading")
    v["a"].raise_permanent = True  # and its apply is refused
    reports = {r.adapter: r for r in engine.sync_once()}
    assert isinstance(reports["a"].error, TransientError)
    assert str(reports["a"].error) == "connection reset while reading"
    assert reports["b"].error is None
    v["a"].read_error = None
    reports = {r.adapter: r for r in engine.sync_once()}
    assert isinstance(reports["a"].error, PermanentError) and str(reports["a"].error) == "401 invalid credentials"


def test_a_pull_stopped_after_a_page_promotes_what_it_read(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "page_size": 2}])
    for i in range(5):
        v["a"].opt_out(OptOut(f"r{i}@example.com"))
    reads = v["a"].read_changes

    def stopped_after_the_first_page(cursor):
        for page in reads(cursor):
            engine.stop.set()  # e.g. the daemon is told to stop while the first page is read
            yield page

    v["a"].read_changes = stopped_after_the_first_page
    report = engine.cycle("a")
    assert (report.error, report.pulled, report.added) == (None, 2, 2)
    assert store.suppression("r1@example.com") is not None and store.suppression("r2@example.com") is None
    assert store.checkpoint("a").read_cursor == "2" and store.staged_count("a") == 0


def test_a_runs_row_holds_the_reports_counts_and_only_a_success_moves_last_success_at(memory_world):
    from dataclasses import replace

    from state.models import Rejected

    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 2}])
    for i in range(3):
        v["a"].opt_out(OptOut(f"r{i}@example.com"))
    reads = v["a"].read_changes
    v["a"].read_changes = lambda cursor: (replace(page, rejected=[Rejected("row 4", "nope", "no @ in address")])
                                          for page in reads(cursor))
    report = engine.cycle("a")
    run = store.last_run("a")
    assert (report.pulled, report.staged, report.rejected, report.paused) == (3, 3, 1, True)
    assert ({k: run[k] for k in ("pulled", "staged", "pushed", "failed", "rejected", "paused", "error_class",
                                  "error")} ==
            {"pulled": 3, "staged": 3, "pushed": 0, "failed": 0, "rejected": 1, "paused": 1, "error_class": None,
             "error": None})
    succeeded = store.checkpoint("a").last_success_at
    assert succeeded is not None

    store.record_run("a", "cycle", succeeded, 5, error=TransientError("503 service unavailable"))
    run = store.last_run("a")
    assert (run["error_class"], run["error"]) == ("TransientError", "503 service unavailable")
    assert store.checkpoint("a").last_success_at == succeeded
    store.record_run("a", "push", succeeded, 5)
    run = store.last_run("a")
    assert ({k: run[k] for k in ("phase", "pulled", "staged", "pushed", "failed", "rejected", "paused",
                                  "error_class", "error")} ==
            {"phase": "push", "pulled": 0, "staged": 0, "pushed": 0, "failed": 0, "rejected": 0, "paused": 0,
             "error_class": None, "error": None})
    assert store.checkpoint("a").last_success_at > succeeded


def test_a_dry_cycle_lists_twenty_by_default_and_a_sync_times_its_pull_and_push_together(memory_world):
    import time

    settings, store, engine, v = memory_world([{"name": "a"}])
    for i in range(25):
        v["a"].opt_out(OptOut(f"r{i:02}@example.com"))
    report = engine.cycle("a", dry_run=True)
    assert report.staged == 25 and len(report.would_add) == 20
    reads, pushes = v["a"].read_changes, engine.push

    def slow_read(cursor):
        time.sleep(0.2)
        return reads(cursor)

    def slow_push(name, report):
        time.sleep(0.2)
        return pushes(name, report)

    v["a"].read_changes, engine.push = slow_read, slow_push
    [report] = engine.sync_once()
    assert 400 <= report.duration_ms < 5000
