"""What the SQLite store writes and hands back, field by field: notices' events, pending events, push
outcomes' messages and details, checkpoints, re-subscribe removals. Small and fast: the mutation run
(docs/testing.md) runs these once per mutant of the functions they reach."""

from __future__ import annotations

import json

import pytest

from state import resubscribes
from state.models import ALREADY, APPLIED, PERMANENT, ApplyResult, OptOut, Page, Resubscribe
from state.store import Checkpoint, PushOutcome, Store

JAN, FEB = "2026-01-01T00:00:00.000000+00:00", "2026-02-01T00:00:00.000000+00:00"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.db") as opened:
        yield opened


def _suppress(store, adapter, *optouts):
    store.ingest_page(adapter, Page(list(optouts)))
    return store.promote(adapter)


def _events(store, *columns):
    return store.conn.execute(f"SELECT {', '.join(columns)} FROM events ORDER BY seq").fetchall()


def test_a_notice_is_an_observed_event_with_its_own_message_or_the_default_and_changes_nothing(store):
    store.ingest_page("esp", Page(notices=[
        OptOut("a@x.io", "*", "unsubscribed", "recipient", JAN, {"message": "re-subscribed at esp", "list": "n"}),
        OptOut("b@x.io", "news", "manual", "user"),
    ]))
    assert _events(store, "kind", "address", "scope", "reason", "origin", "source", "occurred_at", "message",
                   "details") == [
        ("observed", "a@x.io", "*", "unsubscribed", "recipient", "esp", JAN, "re-subscribed at esp",
         '{"message":"re-subscribed at esp","list":"n"}'),
        ("observed", "b@x.io", "news", "manual", "user", "esp", None, "seen at source; no suppression removed",
         None),
    ]
    assert store.conn.execute("SELECT count(*) FROM suppressions").fetchone()[0] == 0
    assert store.staged_optouts("esp") == []


def test_pending_events_carry_the_stored_opt_out_its_source_and_when_it_was_recorded(store):
    _suppress(store, "crm", OptOut("a@x.io", "news", "hard_bounce", "recipient", JAN, {"bounce": "5.1.1"}),
              OptOut("b@x.io"))
    recorded = dict(store.conn.execute("SELECT address, recorded_at FROM events WHERE kind = 'suppressed'"))
    pending, highest = store.pending_events("esp", 0, 10)
    assert [(p.optout, p.source, p.recorded_at) for p in pending] == [
        (OptOut("a@x.io", "news", "hard_bounce", "recipient", JAN, {"bounce": "5.1.1"}), "crm", recorded["a@x.io"]),
        (OptOut("b@x.io"), "crm", recorded["b@x.io"]),
    ]
    assert all(p.recorded_at for p in pending) and highest == max(p.seq for p in pending)


def _push_one(store, sink, result_of):
    (item,), highest = store.pending_events(sink, 0, 10)
    store.mark_inflight(sink, [item.seq])
    store.record_push(sink, [PushOutcome(item.seq, item.optout, result_of(item.optout))], highest)
    return item


def test_an_apply_is_recorded_with_the_sinks_message_else_already_held_or_nothing(store):
    _suppress(store, "crm", OptOut("a@x.io"))
    _push_one(store, "held", lambda o: ApplyResult(o, ALREADY))
    _push_one(store, "put", lambda o: ApplyResult(o, APPLIED))
    _push_one(store, "said", lambda o: ApplyResult(o, ALREADY, "on the list since 2019"))
    assert _events(store, "target", "kind", "message", "details")[1:] == [
        ("held", "applied", "already held", '{"outcome": "already"}'),
        ("put", "applied", "", '{"outcome": "applied"}'),
        ("said", "applied", "on the list since 2019", '{"outcome": "already"}'),
    ]


def test_an_apply_the_sink_holds_otherwise_records_its_outcome_with_what_the_echo_rule_needs(store):
    _suppress(store, "crm", OptOut("a@x.io", "news"))
    _push_one(store, "ses", lambda o: ApplyResult(OptOut(o.address), APPLIED, held_as="spam_complaint",
                                                  fanned_out=("b", "a", "b")))
    _push_one(store, "bad", lambda o: ApplyResult(OptOut(o.address), PERMANENT, "invalid"))
    details = [json.loads(d) for (d,) in _events(store, "details")[1:]]
    assert details == [
        {"outcome": "applied", "sent_scope": "*", "held_as": "spam_complaint", "fanned_out": ["a", "b"]},
        {"outcome": "permanent", "sent_scope": "*"},
    ]


def test_the_checkpoint_of_an_adapter_names_it_whether_or_not_it_ran(store):
    assert store.checkpoint("new") == Checkpoint("new", None, None, 0, None, None, False, False, None)
    fresh = store.checkpoint("new")
    assert fresh.reconcile_requested is False and fresh.paused is False
    store.ingest_page("ran", Page([OptOut("a@x.io")], cursor="c1"))
    ran = store.checkpoint("ran")
    assert (ran.adapter, ran.read_cursor, ran.applied_seq, ran.paused) == ("ran", "c1", 0, False)


def test_a_removal_due_carries_the_lifted_opt_outs_reason_and_origin(store):
    _suppress(store, "src", OptOut("x@y.io", "*", "manual", "user", JAN))
    (item,), highest = store.pending_events("crm", 0, 10)
    store.record_push("crm", [PushOutcome(item.seq, item.optout, ApplyResult(item.optout, APPLIED))], highest)
    store.ingest_page("esp", Page([], resubscribes=[Resubscribe("x@y.io", "*", "recipient", FEB, {"n": 1})]),
                      resubscribe_policy="everywhere")
    ((_, optout),) = resubscribes.removals_due(store, "crm")
    assert optout == OptOut("x@y.io", "*", "manual", "user")
