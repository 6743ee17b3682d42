"""Reconcile's re-apply and schedule: batching, outcome counts, stop, dry run, and when a reconcile is due.

Written for the mutants a mutation run left alive in Engine._reapply_missing, Engine._reconcile,
Engine.reconcile_due and CycleReport.absorb (docs/testing.md); each was seen to fail on a broken copy.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

import connector.engine as engine_module
from connector.engine import CycleReport
from state.models import OptOut
from state.store import IngestCounts

ADDRESSES = [f"r{i}@example.com" for i in range(7)]


def drifted_world(memory_world):
    """a holds seven opt-outs, b (batch limit 3) got them all and then lost every one by hand."""
    settings, store, engine, v = memory_world([{"name": "a", "role": "read"},
                                               {"name": "b", "batch_size": 3, "role": "write"}])
    for address in ADDRESSES:
        v["a"].opt_out(OptOut(address))
    engine.sync_once()
    assert len(v["b"].held) == 7
    v["b"].held.clear()
    v["b"].apply_calls.clear()
    return settings, store, engine, v


def test_reconcile_reapplies_in_address_order_in_batches_of_the_sinks_limit(memory_world):
    settings, store, engine, v = drifted_world(memory_world)
    report = engine.reconcile("b")
    assert report.error is None
    assert [[o.address for o in call] for call in v["b"].apply_calls] == [ADDRESSES[0:3], ADDRESSES[3:6],
                                                                          ADDRESSES[6:7]]
    assert (report.missing_at_source, report.pushed, report.parked, report.failed) == (7, 7, 0, 0)
    assert set(v["b"].held) == {(a, "*") for a in ADDRESSES}
    # Nothing is left to re-apply: a second reconcile sends nothing.
    v["b"].apply_calls.clear()
    again = engine.reconcile("b")
    assert (again.missing_at_source, again.pushed, v["b"].apply_calls) == (0, 0, [])


def test_reconcile_counts_each_outcome_of_a_reapply_and_records_the_refusal(memory_world):
    settings, store, engine, v = drifted_world(memory_world)
    v["b"].fail_permanent_addresses = {ADDRESSES[1]}
    v["b"].fail_transient_addresses = {ADDRESSES[4], ADDRESSES[6]}
    report = engine.reconcile("b")
    assert (report.missing_at_source, report.pushed, report.parked, report.failed) == (7, 4, 2, 1)
    refused = [f for f in store.failures("b") if f["address"] == ADDRESSES[1]]
    assert [f["message"] for f in refused] == ["vendor refuses this address"]
    run = store.last_run("b")
    assert (run["phase"], run["pushed"], run["failed"]) == ("reconcile", 4, 3)  # the run counts parked as failed


def test_a_dry_reconcile_counts_every_missing_row_and_sends_nothing(memory_world):
    settings, store, engine, v = drifted_world(memory_world)
    report = engine.reconcile("b", dry_run=True)
    assert (report.missing_at_source, report.pushed, v["b"].apply_calls) == (7, 0, [])
    assert store.checkpoint("b").last_reconcile_at is None


def test_a_stop_during_the_reapply_ends_it_after_the_batch_in_hand(memory_world):
    settings, store, engine, v = drifted_world(memory_world)
    sink = v["b"]
    original = sink.apply

    def apply_then_stop(batch):
        engine.stop.set()
        return original(batch)

    sink.apply = apply_then_stop
    report = engine.reconcile("b")
    assert [len(call) for call in sink.apply_calls] == [3]
    assert (report.missing_at_source, report.pushed) == (3, 3)


def test_a_source_that_does_not_write_is_read_but_never_sent_the_rows_it_lacks(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "role": "read"}, {"name": "b", "role": "read"}])
    for address in ADDRESSES:
        v["a"].opt_out(OptOut(address))
    engine.sync_once()
    v["b"].opt_out(OptOut("only-at-b@example.com"))
    report = engine.reconcile("b")
    assert (report.error, report.missing_at_source, v["b"].apply_calls) == (None, 0, [])
    assert report.staged == 1 and store.suppression("only-at-b@example.com") is not None
    assert store.checkpoint("b").last_reconcile_at is not None


# -- when a reconcile is due ---------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setattr(engine_module, "utc_now", lambda: NOW.isoformat())


def ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).isoformat()


@pytest.mark.parametrize("age, due", [(3599, False), (3600, True), (3601, True)])
def test_a_reconcile_is_due_once_its_age_reaches_reconcile_every(memory_world, clock, age, due):
    settings, store, engine, v = memory_world([{"name": "a", "reconcile_every": 3600}])
    store.set_checkpoint("a", last_reconcile_at=ago(age))
    assert engine.reconcile_due("a") is due
    # The schedule start only stands in for a reconcile that never ran.
    assert engine.reconcile_due("a", schedule_start=ago(10 * 3600)) is due


@pytest.mark.parametrize("age, due", [(3599, False), (3600, True)])
def test_a_never_reconciled_adapter_counts_from_the_schedule_start(memory_world, clock, age, due):
    settings, store, engine, v = memory_world([{"name": "a", "reconcile_every": 3600}])
    assert engine.reconcile_due("a") is False
    assert engine.reconcile_due("a", schedule_start=ago(age)) is due


def test_a_requested_reconcile_is_due_at_once_and_never_without_a_schedule(memory_world, clock):
    settings, store, engine, v = memory_world([{"name": "a", "reconcile_every": 3600},
                                               {"name": "b", "reconcile_every": 0}])
    store.set_checkpoint("a", last_reconcile_at=ago(1), reconcile_requested=1)
    assert engine.reconcile_due("a") is True
    store.set_checkpoint("b", last_reconcile_at=ago(10 ** 7))
    assert engine.reconcile_due("b", schedule_start=ago(10 ** 7)) is False
    store.set_checkpoint("b", reconcile_requested=1)
    assert engine.reconcile_due("b") is True


# -- the report's counters ------------------------------------------------------------------------

def test_the_report_adds_every_counter_of_each_page():
    report = CycleReport("a")
    page = IngestCounts(read=11, staged=5, changed=2, ignored_lifted=1, ignored_echoes=3, rejected=7, held=4)
    report.absorb(page)
    report.absorb(page)
    assert (report.pulled, report.staged, report.changed, report.held, report.ignored, report.rejected) == (
        22, 10, 4, 8, 8, 14)
    assert report.duplicates == 22 - 10 - 8 - 8


def test_ingest_counts_add_every_field():
    from dataclasses import fields

    names = [f.name for f in fields(IngestCounts)]
    total = IngestCounts(**{name: n + 1 for n, name in enumerate(names)})
    total.add(IngestCounts(**{name: 10 * (n + 1) for n, name in enumerate(names)}))
    assert total == IngestCounts(**{name: 11 * (n + 1) for n, name in enumerate(names)})
    assert len(names) >= 8


def test_a_reapply_resent_after_a_kill_counts_as_ours_though_the_sink_answers_already(memory_world):
    """The kill fell after the vendor call: the in-flight mark says the send was ours, so the sink's
    'already' on the next re-apply is recorded as our apply, and a lift may take it back there."""
    settings, store, engine, v = drifted_world(memory_world)
    sink = v["b"]
    original = sink.apply

    class Died(BaseException):
        pass

    def apply_then_die(batch):
        original(batch)
        raise Died()

    sink.apply = apply_then_die
    with pytest.raises(Died):
        engine.reconcile("b")
    sink.apply = original
    first = {o.address for o in sink.apply_calls[0]}
    # The sink's full read lags: what the dead send put there is not listed yet, so it is re-applied.
    listed = sink.read_all
    sink.read_all = lambda: (page.__class__([o for o in page.optouts if o.address not in first])
                             for page in listed())
    report = engine.reconcile("b")
    assert report.error is None and report.pushed == 7
    applied = store.conn.execute(
        "SELECT address, json_extract(details, '$.outcome') FROM events WHERE kind = 'applied' AND target = 'b'"
        " AND address IN (%s) ORDER BY seq DESC LIMIT 3" % ",".join("?" * len(first)), sorted(first)).fetchall()
    assert sorted(applied) == [(a, "applied") for a in sorted(first)]


def test_a_paused_adapter_keeps_its_staged_opt_outs_whole_and_in_order_until_approved(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "max_new_per_cycle": 2}])
    staged = [OptOut("c@example.com", "*", "hard_bounce", "recipient", "2026-11-01T10:00:00.000000+00:00",
                     {"bounce_category": "bad-mailbox"}),
              OptOut("a@example.com", "*", "unsubscribed", "recipient", None, None),
              OptOut("b@example.com", "*", "manual", "user", "2026-11-02T10:00:00.000000+00:00", {"note": "x"})]
    for optout in staged:
        v["a"].opt_out(optout)
    before = datetime.now(timezone.utc).isoformat()
    engine.sync_once()
    checkpoint = store.checkpoint("a")
    assert checkpoint.paused == 1 and before <= checkpoint.paused_at <= datetime.now(timezone.utc).isoformat()
    assert store.staged_optouts("a") == staged
    assert store.staged_optouts("a", 2) == staged[:2]
    assert engine.approve("a", 3) == 3
    checkpoint = store.checkpoint("a")
    assert (checkpoint.paused, checkpoint.paused_at, store.staged_optouts("a")) == (0, None, [])


# -- what a reconcile reads and stages ------------------------------------------------------------

def test_a_reconcile_counts_every_page_of_the_full_read_and_its_rejected_rows(memory_world):
    from state.models import Page, Rejected

    settings, store, engine, v = memory_world([{"name": "a", "page_size": 2}])
    for address in ADDRESSES[:5]:
        v["a"].held[(address, "*")] = OptOut(address)
    pages = v["a"].read_all

    def with_a_rejected_row(page_number=iter(range(100))):
        for page in pages():
            yield Page(page.optouts, [Rejected(f"row {next(page_number)}", "nope", "no @ in address")])

    v["a"].read_all = with_a_rejected_row
    report = engine.reconcile("a")
    assert (report.error, report.pulled, report.rejected, report.staged) == (None, 5, 3, 5)


def test_a_write_only_sink_is_never_ingested_and_a_paused_source_stages_nothing_more(memory_world):
    settings, store, engine, v = drifted_world(memory_world)
    v["b"].held[("0only-at-b@example.com", "*")] = OptOut("0only-at-b@example.com")
    assert engine.reconcile("b").staged == 0
    assert store.suppression("0only-at-b@example.com") is None and store.staged_count("b") == 0

    v["a"].held[("new@example.com", "*")] = OptOut("new@example.com")
    store.pause("a")
    report = engine.reconcile("a")
    assert (report.error, report.staged, store.staged_count("a")) == (None, 0, 0)
    assert store.suppression("new@example.com") is None


def test_a_dry_reconcile_keeps_nothing_it_staged_and_lists_at_most_the_limit(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    for address in ADDRESSES:
        v["a"].held[(address, "*")] = OptOut(address)
    engine.dry_run_list_limit = 2
    report = engine.reconcile("a", dry_run=True)
    assert report.staged == 7 and [o.address for o in report.would_add] == ADDRESSES[:2]
    assert store.staged_count("a") == 0 and store.suppression(ADDRESSES[0]) is None
    assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_requested_reconcile_clears_the_request_once_it_ran(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    store.set_checkpoint("a", reconcile_requested=1)
    assert engine.reconcile("a").error is None
    checkpoint = store.checkpoint("a")
    assert checkpoint.reconcile_requested is False and checkpoint.last_reconcile_at is not None


def test_an_adapter_that_cannot_read_its_full_set_is_a_settings_error(memory_world):
    from dataclasses import replace

    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].capabilities = replace(v["a"].capabilities, read_all=False)
    report = engine.reconcile("a")
    assert str(report.error) == "adapter 'a' cannot read its full set, so it cannot be reconciled"


def test_reapplied_rows_keep_each_their_own_date_and_the_first_address_in_sort_order(memory_world):
    settings, store, engine, v = memory_world([{"name": "a", "role": "read"},
                                               {"name": "b", "role": "write", "batch_size": 3}])
    dated = [OptOut("0first@example.com", "*", "unsubscribed", "recipient", None),
             OptOut("m@example.com", "*", "unsubscribed", "recipient", "2026-01-01T00:00:00.000000+00:00"),
             OptOut("n@example.com", "*", "unsubscribed", "recipient", "2026-02-01T00:00:00.000000+00:00")]
    for optout in dated:
        v["a"].opt_out(optout)
    engine.sync_once()
    v["b"].held.clear()
    v["b"].apply_calls.clear()
    engine.reconcile("b")
    assert [(o.address, o.occurred_at) for o in v["b"].apply_calls[0]] == [(o.address, o.occurred_at)
                                                                          for o in dated]


def test_a_stronger_reason_found_by_reconcile_is_recorded_with_its_time(memory_world):
    settings, store, engine, v = memory_world([{"name": "a"}])
    v["a"].opt_out(OptOut("x@example.com", "*", "unsubscribed", "recipient"))
    engine.sync_once()
    v["a"].held[("x@example.com", "*")] = OptOut("x@example.com", "*", "spam_complaint", "recipient")
    assert engine.reconcile("a").changed == 1
    changed = [e for e in store.events_for("x@example.com") if e["kind"] == "changed"]
    assert [(e["reason"], e["source"]) for e in changed] == [("spam_complaint", "a")]
    assert changed[0]["recorded_at"] and store.suppression("x@example.com")["reason"] == "spam_complaint"


def test_a_reapply_that_fails_as_a_whole_leaves_no_in_flight_mark(memory_world):
    """The send failed before reaching the sink: its marks must not later count as ours for a lift."""
    settings, store, engine, v = drifted_world(memory_world)
    v["b"].fail_transient_batches = 1
    report = engine.reconcile("b")
    assert report.error is not None and "503" in str(report.error)
    assert store.conn.execute("SELECT count(*) FROM inflight").fetchone()[0] == 0
    assert engine.reconcile("b").pushed == 7


def test_re_subscribes_a_full_read_brings_are_released_from_every_page_and_only_where_it_is_read(memory_world):
    from state.models import Page, Resubscribe

    settings, store, engine, v = memory_world([{"name": "a", "page_size": 1}, {"name": "b", "role": "write"}])
    dated = "2026-01-01T00:00:00.000000+00:00"
    for address in ("x@example.com", "y@example.com"):
        v["a"].opt_out(OptOut(address, "*", "unsubscribed", "recipient", dated))
    engine.sync_once()
    later = "2026-02-01T00:00:00.000000+00:00"
    back = {a: Resubscribe(a, "*", "recipient", later, {"id": a}) for a in ("x@example.com", "y@example.com")}

    def with_resubscribes(reads):
        def read_all():
            for page in reads():
                yield Page(page.optouts, resubscribes=[back[o.address] for o in page.optouts])
        return read_all

    v["b"].read_all = with_resubscribes(v["b"].read_all)   # a sink that is never read from
    assert engine.reconcile("b").released == 0
    assert store.conn.execute("SELECT count(*) FROM releases").fetchone()[0] == 0
    v["a"].read_all = with_resubscribes(v["a"].read_all)
    report = engine.reconcile("a")
    assert report.error is None and report.released == 2
    assert store.conn.execute("SELECT address, adapter FROM releases ORDER BY address").fetchall() == [
        ("x@example.com", "a"), ("y@example.com", "a")]


def test_a_full_reads_re_subscribe_follows_the_adapters_policy_and_leaves_the_pull_cursor(memory_world):
    from state.models import Page, Resubscribe

    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b", "role": "write"}],
                                              recipient_resubscribe="everywhere")
    v["a"].opt_out(OptOut("x@example.com", "*", "unsubscribed", "recipient", "2026-01-01T00:00:00+00:00"))
    engine.sync_once()
    cursor = store.checkpoint("a").read_cursor
    assert cursor == "1"
    back = Resubscribe("x@example.com", "*", "recipient", "2026-02-01T00:00:00+00:00", {"id": "r1"})
    v["a"].read_all = lambda: iter([Page([], cursor="99", resubscribes=[back])])
    report = engine.reconcile("a")
    # Policy everywhere: lifted, not merely released at a (the default policy 'local' would release it).
    assert report.error is None and report.released == 1
    assert store.suppression("x@example.com") is None
    assert store.conn.execute("SELECT count(*) FROM releases").fetchone()[0] == 0
    assert [e["kind"] for e in store.events_for("x@example.com")][-2:] == ["resubscribed", "lifted"]
    # A full read is no pull: the pull cursor stays where the last pull left it.
    assert store.checkpoint("a").read_cursor == cursor


def test_a_reconcile_holds_one_retry_budget_for_its_whole_run(memory_world):
    from contextlib import contextmanager
    from types import SimpleNamespace

    settings, store, engine, v = drifted_world(memory_world)
    held: list[str] = []
    seen: list[tuple[str, bool]] = []

    @contextmanager
    def cycle():
        held.append("b")
        try:
            yield
        finally:
            held.remove("b")

    sink = v["b"]
    sink.http = SimpleNamespace(cycle=cycle)   # what retry_budget_held looks for on an HTTP adapter
    reads, applies = sink.read_all, sink.apply

    def read_all():
        seen.append(("read", bool(held)))
        yield from reads()

    def apply(batch):
        seen.append(("apply", bool(held)))
        return applies(batch)

    sink.read_all, sink.apply = read_all, apply
    assert engine.reconcile("b").pushed == 7
    assert seen == [("read", True)] + [("apply", True)] * 3
    assert held == []
