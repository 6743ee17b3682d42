"""The Store contract: the engine's core path through the public store methods, on both backends.

Every test runs on SQLite (state/store.py) and on PostgreSQL (state/pg_store.py) through the
`any_store` fixture, and asserts what the store holds afterwards (rows, events, checkpoints).
"""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timedelta

import pytest

from state.errors import InputError, RefusedError, StoreError
from state.models import ALREADY, APPLIED, PERMANENT, TRANSIENT, ApplyResult, OptOut, Page, Rejected
from state.store import ECHO_SKEW_SECONDS, PushOutcome

REASON_ORDER = ["imported", "manual", "unsubscribed", "hard_bounce", "spam_complaint"]


def _kinds(store, address):
    return [e["kind"] for e in store.events_for(address)]


def _suppress(store, adapter, *optouts):
    store.ingest_page(adapter, Page(list(optouts)))
    return store.promote(adapter)


def _push(store, sink, outcome=APPLIED, **result_fields):
    """Push every pending event to `sink` with one outcome; the PendingEvents it sent."""
    pending, highest = store.pending_events(sink, store.checkpoint(sink).applied_seq, 100)
    store.mark_inflight(sink, [p.seq for p in pending])
    store.record_push(sink, [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, outcome, **result_fields))
                             for p in pending], highest)
    return pending


def _applied_at(store, address, target):
    return datetime.fromisoformat(next(e["recorded_at"] for e in store.events_for(address)
                                       if e["kind"] == "applied" and e["target"] == target))


# -- ingest: pages, cursors, rejections ---------------------------------------------------------

def test_a_page_stages_its_optouts_in_order_and_saves_its_cursor_with_them(any_store):
    store = any_store
    counts = store.ingest_page("a", Page(
        [OptOut("b@y.io", "news", "imported", "user", None, None),
         OptOut("x@y.io", "*", "hard_bounce", "system", "2026-03-01T12:30:00+02:00", {"note": "ünï ✓", "n": 1}),
         OptOut("x@y.io", "*", "unsubscribed", "recipient", None, {"weaker": True}),  # same page: stronger wins
         OptOut("b@y.io", "news", "manual", "system", "2026-01-01T00:00:00Z", None)],   # later and stronger: wins
        [Rejected("list.csv row 4", "not-an-address", "no @")], cursor="c1",
        notices=[OptOut("n@y.io", "*", "unsubscribed", "recipient", None, {"message": "re-subscribed at a"})]))

    assert (counts.read, counts.staged, counts.rejected, counts.held, counts.changed) == (4, 2, 1, 0, 0)
    assert store.staged_count("a") == 2 and store.staged_count("other") == 0
    assert store.staged_optouts("a") == [   # in the order each key first came
        OptOut("b@y.io", "news", "manual", "system", "2026-01-01T00:00:00.000000+00:00", None),
        OptOut("x@y.io", "*", "hard_bounce", "system", "2026-03-01T10:30:00.000000+00:00", {"note": "ünï ✓", "n": 1})]
    assert store.staged_optouts("a", limit=1) == store.staged_optouts("a")[:1]
    checkpoint = store.checkpoint("a")
    assert checkpoint.read_cursor == "c1" and checkpoint.cursor_at is not None
    [failure] = store.failures("a")
    assert (failure["kind"], failure["location"], failure["value"], failure["message"], failure["address"]) == (
        "rejected", "list.csv row 4", "not-an-address", "no @", None)
    [notice] = store.events_for("n@y.io")
    assert (notice["kind"], notice["source"], notice["message"]) == ("observed", "a", "re-subscribed at a")
    assert store.count_suppressions() == 0      # staged, not yet suppressed

    store.ingest_page("a", Page([OptOut("c@y.io")], cursor=None))
    store.ingest_page("a", Page([OptOut("d@y.io")], cursor="c9"), save_cursor=False)
    assert store.checkpoint("a").read_cursor == "c1"
    assert store.staged_count("a") == 4


def test_a_page_written_in_a_transaction_that_fails_leaves_nothing_and_a_savepoint_only_its_own(any_store):
    store = any_store
    store.ingest_page("a", Page([OptOut("one@y.io")], cursor="c1"))
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.ingest_page("a", Page([OptOut("two@y.io")], [Rejected("f row 2", "x", "bad")], cursor="c2"))
            raise RuntimeError("crash before commit")
    assert store.checkpoint("a").read_cursor == "c1"
    assert [o.address for o in store.staged_optouts("a")] == ["one@y.io"]
    assert list(store.failures("a")) == []

    with store.transaction():
        store.ingest_page("a", Page([OptOut("three@y.io")], cursor="c3"))
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.ingest_page("a", Page([OptOut("four@y.io")], cursor="c4"))
                raise RuntimeError("inner step fails")
    assert store.checkpoint("a").read_cursor == "c3"
    assert [o.address for o in store.staged_optouts("a")] == ["one@y.io", "three@y.io"]

    with store.rolled_back():
        store.promote("a")
        assert store.count_suppressions() == 2
    assert store.count_suppressions() == 0 and store.staged_count("a") == 2


def test_the_first_page_of_a_store_object_rolled_back_leaves_it_able_to_take_the_next(any_store):
    """The temp tables made in a transaction that rolls back go with it; the next page makes them again."""
    store = any_store
    with pytest.raises(RuntimeError):
        with store.transaction():
            store.ingest_page("a", Page([OptOut("one@y.io")], cursor="c1"))
            raise RuntimeError("the page's cycle fails")
    with store.transaction():
        with pytest.raises(RuntimeError):
            with store.transaction():
                store.ingest_page("a", Page([OptOut("two@y.io")], cursor="c2"))
                raise RuntimeError("a savepoint fails")
    assert store.ingest_page("a", Page([OptOut("three@y.io")], cursor="c3")).staged == 1
    assert [o.address for o in store.staged_optouts("a")] == ["three@y.io"]
    assert store.checkpoint("a").read_cursor == "c3"


# -- staged and promote -------------------------------------------------------------------------

def test_promote_suppresses_with_one_event_each_in_staging_order_and_empties_staging(any_store):
    store = any_store
    store.ingest_page("a", Page([OptOut("z@y.io", "*", "unsubscribed", "recipient", "2026-01-02T00:00:00Z"),
                                 OptOut("m@y.io", "news", "manual", "user", None, {"row": 7})]))
    assert store.promote("a", legal_basis="consent", explanation="import of the spring list") == 2
    assert store.staged_count("a") == 0
    events = store.events_after(0, 10)
    assert [(e["kind"], e["address"], e["scope"], e["source"], e["legal_basis"], e["explanation"]) for e in events] == [
        ("suppressed", "z@y.io", "*", "a", "consent", "import of the spring list"),
        ("suppressed", "m@y.io", "news", "a", "consent", "import of the spring list")]
    z, m = store.suppression("z@y.io"), store.suppression("m@y.io", "news")
    assert (z["reason"], z["origin"], z["source"], z["occurred_at"], z["seq"]) == (
        "unsubscribed", "recipient", "a", "2026-01-02T00:00:00.000000+00:00", events[0]["seq"])
    assert (m["reason"], json.loads(m["details"]), m["seq"]) == ("manual", {"row": 7}, events[1]["seq"])
    assert z["recorded_at"] == events[0]["recorded_at"]
    assert store.suppression("m@y.io") is None
    assert store.promote("a") == 0 and store.last_event_seq() == events[1]["seq"]

    # Read again, a held opt-out is counted as held and staged no more.
    counts = store.ingest_page("a", Page([OptOut("z@y.io"), OptOut("new@y.io")]))
    assert (counts.held, counts.staged) == (1, 1)


def test_promote_strengthens_a_suppression_another_source_made_meanwhile_and_logs_it(any_store):
    """b staged a spam complaint; a suppressed the address as unsubscribed first; b's promote raises it."""
    store = any_store
    store.ingest_page("b", Page([OptOut("ann@y.io", "*", "spam_complaint", "recipient", "2026-01-02T00:00:00Z",
                                        {"id": "c1"}),
                                 OptOut("bob@y.io", "*", "unsubscribed", "recipient", None)]))
    store.ingest_page("c", Page([OptOut("cat@y.io", "*", "unsubscribed", "recipient", None)]))
    store.ingest_page("a", Page([OptOut("ann@y.io", "*", "unsubscribed", "recipient", "2026-01-01T00:00:00Z"),
                                 OptOut("cat@y.io", "*", "imported", "user", None)]))
    assert store.promote("a") == 2
    assert store.promote("b") == 1    # bob is new; ann was suppressed by a meanwhile
    ann = store.suppression("ann@y.io")
    assert (ann["reason"], ann["origin"], ann["source"], json.loads(ann["details"])) == (
        "spam_complaint", "recipient", "a", {"id": "c1"})
    changed = [e for e in store.events_for("ann@y.io") if e["kind"] == "changed"]
    bob_added = next(e for e in store.events_for("bob@y.io") if e["kind"] == "suppressed")
    assert [(e["reason"], e["source"], e["message"], e["occurred_at"], e["recorded_at"]) for e in changed] == [
        ("spam_complaint", "b", "was unsubscribed by recipient", "2026-01-02T00:00:00.000000+00:00",
         bob_added["recorded_at"])]
    assert store.suppression("cat@y.io")["reason"] == "imported"
    assert _kinds(store, "cat@y.io") == ["suppressed"]
    assert store.staged_count("b") == 0 and store.staged_count("c") == 1


# -- the order of reasons -----------------------------------------------------------------------

@pytest.mark.parametrize("first,second", list(itertools.permutations(REASON_ORDER, 2)))
def test_only_a_more_binding_reason_replaces_a_stored_one(any_store, first, second):
    store = any_store
    _suppress(store, "a", OptOut("x@y.io", reason=first, origin="system"))
    counts = store.ingest_page("a", Page([OptOut("x@y.io", reason=second, origin="system",
                                                 occurred_at="2099-01-01T00:00:00+00:00")]))
    stronger = max(first, second, key=REASON_ORDER.index)
    assert store.suppression("x@y.io")["reason"] == stronger
    changes = [e for e in store.events_for("x@y.io") if e["kind"] == "changed"]
    assert counts.changed == len(changes) == (1 if stronger == second else 0)
    assert (counts.held, counts.staged, store.staged_count("a")) == (1, 0, 0)


def test_a_user_made_opt_out_never_replaces_one_the_recipient_made(any_store):
    store = any_store
    _suppress(store, "a", OptOut("x@y.io", reason="unsubscribed", origin="recipient"))
    store.ingest_page("a", Page([OptOut("x@y.io", reason="spam_complaint", origin="user")]))
    row = store.suppression("x@y.io")
    assert (row["reason"], row["origin"]) == ("unsubscribed", "recipient")
    # Equal reasons: the more binding origin wins.
    store.ingest_page("b", Page([OptOut("x@y.io", reason="unsubscribed", origin="system")]))
    assert store.suppression("x@y.io")["origin"] == "recipient"
    _suppress(store, "a", OptOut("u@y.io", reason="manual", origin="user"))
    store.ingest_page("b", Page([OptOut("u@y.io", reason="manual", origin="recipient")]))
    assert store.suppression("u@y.io")["origin"] == "recipient"
    assert _kinds(store, "u@y.io") == ["suppressed", "changed"]


# -- echoes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset_s", [-3600, 0, ECHO_SKEW_SECONDS - 1])
def test_a_dated_echo_within_the_clock_skew_allowance_changes_nothing(any_store, offset_s):
    store = any_store
    _suppress(store, "a", OptOut("x@y.io", reason="imported", origin="user"))
    _push(store, "b")
    when = _applied_at(store, "x@y.io", "b") + timedelta(seconds=offset_s)
    counts = store.ingest_page("b", Page([OptOut("x@y.io", reason="imported", origin="recipient",
                                                 occurred_at=when.isoformat())]))
    assert counts.ignored_echoes == 1 and counts.changed == 0
    row = store.suppression("x@y.io")
    assert (row["reason"], row["origin"], row["source"]) == ("imported", "user", "a")
    assert _kinds(store, "x@y.io") == ["suppressed", "applied"]


def test_an_observation_dated_past_the_skew_allowance_or_more_binding_is_news(any_store):
    store = any_store
    _suppress(store, "a", OptOut("x@y.io", reason="imported", origin="user"),
              OptOut("s@y.io", reason="imported", origin="user"))
    _push(store, "b")
    late = _applied_at(store, "x@y.io", "b") + timedelta(seconds=ECHO_SKEW_SECONDS + 60)
    counts = store.ingest_page("b", Page([
        OptOut("x@y.io", reason="unsubscribed", origin="recipient", occurred_at=late.isoformat()),
        OptOut("s@y.io", reason="spam_complaint", origin="recipient", occurred_at=None)]))
    assert (counts.ignored_echoes, counts.changed) == (0, 2)
    assert (store.suppression("x@y.io")["reason"], store.suppression("s@y.io")["reason"]) == (
        "unsubscribed", "spam_complaint")


def test_echoes_of_a_fanned_out_or_held_as_write_and_of_an_in_flight_send_are_recognised(any_store):
    store = any_store
    _suppress(store, "a", OptOut("f@y.io", reason="unsubscribed"), OptOut("h@y.io", reason="imported", origin="user"))
    pending, highest = store.pending_events("b", 0, 10)
    store.record_push("b", [
        PushOutcome(pending[0].seq, pending[0].optout,
                    ApplyResult(pending[0].optout, APPLIED, fanned_out=("news", "offers", "news"))),
        PushOutcome(pending[1].seq, pending[1].optout,
                    ApplyResult(pending[1].optout, APPLIED, held_as="hard_bounce"))], highest)
    counts = store.ingest_page("b", Page([OptOut("f@y.io", "news"), OptOut("f@y.io", "offers"),
                                          OptOut("h@y.io", reason="hard_bounce", origin="system"),
                                          OptOut("f@y.io", "other")]))   # a scope the write never reached
    assert (counts.ignored_echoes, counts.staged) == (3, 1)
    assert [o.scope for o in store.staged_optouts("b")] == ["other"]
    assert store.suppression("h@y.io")["reason"] == "imported"

    # A send whose outcome a crash lost is known by its in-flight mark alone.
    _suppress(store, "a", OptOut("i@y.io", reason="manual", origin="user"))
    [sent] = store.pending_events("c", 0, 10)[0][-1:]
    assert store.mark_inflight("c", [sent.seq]) == set()
    counts = store.ingest_page("c", Page([OptOut("i@y.io", reason="unsubscribed", origin="recipient"),
                                          OptOut("i@y.io", "news", reason="unsubscribed")]))
    assert (counts.ignored_echoes, counts.staged) == (1, 1)   # another scope is not the mark's
    assert store.suppression("i@y.io")["reason"] == "manual"
    # A send seen to fail as a whole drops its marks: the same read-back is news then.
    store.clear_inflight("c", [sent.seq])
    assert store.mark_inflight("c", []) == set()
    counts = store.ingest_page("c", Page([OptOut("i@y.io", reason="unsubscribed", origin="recipient")]))
    assert (counts.ignored_echoes, counts.changed) == (0, 1)
    assert store.suppression("i@y.io")["reason"] == "unsubscribed"
    assert store.mark_inflight("c", [sent.seq]) == set()


# -- push: pending events, in-flight marks, outcomes, watermark ---------------------------------

def test_pending_events_leave_out_the_sinks_own_applied_and_replaced_events(any_store):
    store = any_store
    _suppress(store, "a", OptOut("one@y.io"), OptOut("two@y.io"))
    _suppress(store, "b", OptOut("own@y.io"))
    pending, highest = store.pending_events("b", 0, 100)
    assert [p.optout.address for p in pending] == ["one@y.io", "two@y.io"]   # not b's own
    assert highest == store.last_event_seq()
    assert all(p.source == "a" and p.recorded_at for p in pending)
    first, rest = store.pending_events("b", 0, 1)
    assert [p.optout.address for p in first] == ["one@y.io"] and rest == first[0].seq

    store.record_push("b", [PushOutcome(pending[0].seq, pending[0].optout,
                                        ApplyResult(pending[0].optout, APPLIED))], None)
    assert [p.optout.address for p in store.pending_events("b", 0, 100)[0]] == ["two@y.io"]
    assert store.checkpoint("b").applied_seq == 0            # no watermark given, none moved
    assert store.pending_summary("b", 0)[0] == 1

    # A suppression raised later is sent as it stands now.
    store.ingest_page("c", Page([OptOut("two@y.io", reason="spam_complaint", origin="recipient")]))
    [two] = store.pending_events("b", 0, 100)[0]
    assert (two.optout.address, two.optout.reason) == ("two@y.io", "spam_complaint")


def test_a_parked_event_keeps_its_failure_and_comes_back_until_it_is_applied(any_store):
    store = any_store
    _suppress(store, "a", *[OptOut(f"u{i}@y.io") for i in range(4)])
    pending, highest = store.pending_events("b", 0, 100)
    parked = pending[2]
    assert store.mark_inflight("b", [p.seq for p in pending]) == set()
    store.record_push("b", [
        PushOutcome(p.seq, p.optout, ApplyResult(p.optout, TRANSIENT if p is parked else APPLIED, "503"))
        for p in pending], parked.seq - 1)
    assert store.checkpoint("b").applied_seq == parked.seq - 1
    [failure] = store.failures("b")
    assert (failure["kind"], failure["address"], failure["ref_seq"], failure["attempts"]) == (
        TRANSIENT, "u2@y.io", parked.seq, 1)
    assert store.failure_count("b") == 1
    assert _kinds(store, "u2@y.io") == ["suppressed", "failed"]
    # The marks went with the outcomes: marking again finds none from a dead send.
    assert store.mark_inflight("b", [parked.seq]) == set()

    # The next push reads from the watermark: only the parked event is still needed.
    again, again_highest = store.pending_events("b", store.checkpoint("b").applied_seq, 100)
    assert [p.seq for p in again] == [parked.seq] and again_highest == highest
    store.record_push("b", [PushOutcome(parked.seq, parked.optout, ApplyResult(parked.optout, TRANSIENT, "503"))],
                      parked.seq - 1)
    assert [f["attempts"] for f in store.failures("b")] == [2]
    # A smaller watermark never moves the stored one back.
    assert parked.seq - 1 > 1
    store.record_push("b", [], 1)
    assert store.checkpoint("b").applied_seq == parked.seq - 1

    store.record_push("b", [PushOutcome(parked.seq, parked.optout, ApplyResult(parked.optout, APPLIED))], highest)
    assert store.checkpoint("b").applied_seq == highest
    assert list(store.failures("b")) == [] and store.failure_count("b") == 0
    [resolved] = store.failures("b", include_resolved=True)
    assert resolved["resolved_at"] is not None
    assert store.pending_events("b", highest, 100) == ([], highest)
    assert store.pending_summary("b", highest) == (0, None)


def test_a_resent_already_is_recorded_as_our_apply_and_other_outcomes_as_they_are(any_store):
    store = any_store
    _suppress(store, "a", OptOut("r@y.io"), OptOut("k@y.io"), OptOut("p@y.io"), OptOut("t@y.io", "unmapped"))
    pending, highest = store.pending_events("b", 0, 100)
    store.mark_inflight("b", [pending[0].seq])
    # The process died; a new one marks the same events and learns which were marked already.
    assert store.mark_inflight("b", [p.seq for p in pending]) == {pending[0].seq}
    r, k, p, t = pending
    store.record_push("b", [
        PushOutcome(r.seq, r.optout, ApplyResult(r.optout, ALREADY)),
        PushOutcome(k.seq, k.optout, ApplyResult(k.optout, ALREADY)),
        PushOutcome(p.seq, p.optout, ApplyResult(p.optout, PERMANENT, "invalid address")),
        PushOutcome(t.seq, t.optout, None, "topic unmapped has no list at b")], highest, resent={r.seq})
    by_address = {e["address"]: e for e in store.events_after(highest, 100)}
    assert (by_address["r@y.io"]["kind"], json.loads(by_address["r@y.io"]["details"])["outcome"],
            by_address["r@y.io"]["message"]) == (
        "applied", APPLIED, "applied by a send interrupted before its outcome was recorded")
    assert (by_address["k@y.io"]["kind"], json.loads(by_address["k@y.io"]["details"]),
            by_address["k@y.io"]["message"]) == ("applied", {"outcome": ALREADY}, "already held")
    assert (by_address["p@y.io"]["kind"], by_address["p@y.io"]["message"]) == (
        "failed", "permanent: invalid address")
    assert (by_address["t@y.io"]["kind"], by_address["t@y.io"]["ref_seq"]) == ("skipped", t.seq)
    assert all(e["target"] == "b" for e in by_address.values())
    assert sorted((f["kind"], f["address"]) for f in store.failures("b")) == [
        (PERMANENT, "p@y.io"), ("unmapped", "t@y.io")]
    assert store.checkpoint("b").applied_seq == highest


# -- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_fields_start_empty_and_keep_what_is_set(any_store):
    store = any_store
    fresh = store.checkpoint("a")
    assert (fresh.read_cursor, fresh.applied_seq, fresh.reconcile_requested, fresh.paused) == (None, 0, False, False)
    store.set_checkpoint("a", read_cursor="opaque:1", applied_seq=42, last_reconcile_at="2026-01-01T00:00:00+00:00",
                         reconcile_requested=1)
    store.pause("a")
    got = store.checkpoint("a")
    assert (got.read_cursor, got.applied_seq, got.last_reconcile_at, got.reconcile_requested, got.paused) == (
        "opaque:1", 42, "2026-01-01T00:00:00+00:00", True, True)
    assert got.paused_at is not None
    store.unpause("a")
    assert (store.checkpoint("a").paused, store.checkpoint("a").paused_at) == (False, None)
    with pytest.raises(ValueError, match="unknown checkpoint fields"):
        store.set_checkpoint("a", applied=1)
    store.record_run("a", "pull", "2026-01-01T00:00:00+00:00", 5, pulled=3)
    assert store.checkpoint("a").last_success_at is not None
    run = store.last_run("a")
    assert (run["phase"], run["pulled"], run["error_class"]) == ("pull", 3, None)
    store.record_run("a", "push", "2026-01-01T00:00:01+00:00", 5, error=StoreError("disk full"))
    assert (store.last_run("a")["error_class"], store.last_run("a")["error"]) == ("StoreError", "disk full")


# -- reads --------------------------------------------------------------------------------------

def test_reads_filter_and_order_suppressions_and_page_through_events(any_store):
    store = any_store
    _suppress(store, "a", OptOut("b@y.io", "*", "hard_bounce", "system", "2026-01-05T00:00:00Z"),
              OptOut("a@y.io", "news", "unsubscribed", "recipient", "2026-01-01T00:00:00Z"),
              OptOut("a@y.io", "*", "manual", "user", None))
    _suppress(store, "c", OptOut("c@y.io", "*", "spam_complaint", "recipient", "2026-01-03T00:00:00Z"))
    rows = list(store.iter_suppressions())
    assert [tuple(r[:6]) for r in rows] == [
        ("a@y.io", "*", "manual", "user", "a", ""),
        ("a@y.io", "news", "unsubscribed", "recipient", "a", "2026-01-01T00:00:00.000000+00:00"),
        ("b@y.io", "*", "hard_bounce", "system", "a", "2026-01-05T00:00:00.000000+00:00"),
        ("c@y.io", "*", "spam_complaint", "recipient", "c", "2026-01-03T00:00:00.000000+00:00")]
    assert all(r[6] == "" for r in rows)
    assert [r[0] for r in store.iter_suppressions(reasons=["hard_bounce", "spam_complaint"])] == ["b@y.io", "c@y.io"]
    assert [r[:2] for r in store.iter_suppressions(scope="news")] == [("a@y.io", "news")]
    assert [r[0] for r in store.iter_suppressions(source="c")] == ["c@y.io"]
    assert [r[0] for r in store.iter_suppressions(since="2026-01-03T00:00:00.000000+00:00",
                                                  until="2026-01-05T00:00:00.000000+00:00")] == ["c@y.io"]
    assert list(store.iter_suppressions(count=True)) == [(4,)]
    assert list(store.iter_suppressions(reasons=["manual"], count=True)) == [(1,)]
    assert store.count_suppressions() == 4
    assert store.suppression("nobody@y.io") is None

    last = store.last_event_seq()
    events = store.events_after(0, 100)
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events) and events[-1]["seq"] == last
    assert store.events_after(events[0]["seq"], 2) == events[1:3]
    assert store.events_after(last, 10) == []
    assert [e["scope"] for e in store.events_for("a@y.io")] == ["news", "*"]   # staging order
    assert set(events[0]) >= {"seq", "recorded_at", "kind", "address", "scope", "reason", "origin", "source",
                              "target", "ref_seq", "occurred_at", "legal_basis", "explanation", "message",
                              "details"}


def test_an_empty_store_reads_as_empty(any_store):
    store = any_store
    assert (store.last_event_seq(), store.count_suppressions(), store.events_after(0, 10)) == (0, 0, [])
    assert list(store.iter_suppressions()) == [] and store.pending_events("b", 0, 10) == ([], 0)
    assert store.last_run("a") is None and store.adapter_memory("a") == {}


# -- failures and adapter memory ----------------------------------------------------------------

def test_dismissing_failures_is_all_or_nothing_and_leaves_an_audit_event(any_store):
    store = any_store
    store.ingest_page("a", Page([], [Rejected("f row 2", "x", "no @"), Rejected("f row 3", "y", "no @")]))
    _suppress(store, "a", OptOut("p@y.io"))
    _push(store, "b", TRANSIENT, message="503")
    rejected = [f["id"] for f in store.failures("a")]
    [parked] = [f["id"] for f in store.failures("b")]
    with pytest.raises(InputError, match="no failure with id 999"):
        store.dismiss_failures([rejected[0], 999], "noise", "ops")
    with pytest.raises(RefusedError, match=f"failure {parked} is a parked apply"):
        store.dismiss_failures([rejected[0], parked], "noise", "ops")
    with pytest.raises(InputError, match="a reason is required"):
        store.dismiss_failures([rejected[0]], "  ", "ops")
    assert store.failure_count("a") == 2

    rows = store.dismiss_failures([rejected[0]], "a header row", "ops")
    assert [r["location"] for r in rows] == ["f row 2"]
    assert [f["location"] for f in store.failures("a")] == ["f row 3"]
    [closed] = [f for f in store.failures("a", include_resolved=True) if f["id"] == rejected[0]]
    assert closed["dismissed_reason"] == "a header row" and closed["resolved_at"] is not None
    [audit] = [e for e in store.events_after(0, 100) if e["kind"] == "failure_dismissed"]
    assert (audit["address"], audit["target"], audit["message"], json.loads(audit["details"])) == (
        "", "a", "a header row", {"failure_id": rejected[0], "failure_kind": "rejected", "by": "ops",
                                  "location": "f row 2"})
    with pytest.raises(InputError, match="already closed"):
        store.dismiss_failures([rejected[0]], "again", "ops")
    assert [f["adapter"] for f in store.failures()] == ["a", "b"]


def test_adapter_memory_keeps_changed_values_and_forgets_none(any_store):
    store = any_store
    store.save_adapter_memory("h", {"batch_403": "2026-01-01", "other": "x"})
    store.save_adapter_memory("h", {"other": None, "batch_403": "2026-02-01"})
    assert store.adapter_memory("h") == {"batch_403": "2026-02-01"} and store.adapter_memory("g") == {}
