"""state/resubscribes.py in the library: each refusal and event worded whole, the evidence text, the
lift a re-subscribe makes under policy `everywhere`, and a removal's outcome.

Written for mutants a mutation run left alive there (docs/testing.md); each seen to fail on a broken copy.
"""

from __future__ import annotations

import json

import pytest

from state import resubscribes
from state.models import OptOut, Page, Resubscribe
from state.store import Store

OPTED_OUT = "2026-01-01T00:00:00.000000+00:00"
LATER = "2026-02-01T00:00:00.000000+00:00"
NOW = "2026-03-01T00:00:00.000000+00:00"


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page([
            OptOut("own@example.com", "*", "unsubscribed", "recipient", OPTED_OUT),
            OptOut("spam@example.com", "*", "spam_complaint", "recipient", OPTED_OUT),
            OptOut("hb@example.com", "*", "hard_bounce", "system", OPTED_OUT),
            OptOut("sys@example.com", "*", "unsubscribed", "system", OPTED_OUT),
        ]))
        store.promote("crm")
        yield store


def record(store, item, policy="local"):
    with store.transaction():
        return resubscribes.record(store, "esp", [item], policy, NOW)


def last_event(store):
    row = store.conn.execute("SELECT kind, origin, source, occurred_at, message, details FROM events"
                             " ORDER BY seq DESC LIMIT 1").fetchone()
    return row[:5] + (json.loads(row[5]) if row[5] else None,)


@pytest.mark.parametrize("address, by, when, policy, why", [
    ("own@example.com", "recipient", LATER, "ignore", "recipient_resubscribe is 'ignore' for this adapter"),
    ("own@example.com", "admin", LATER, "local", "made by admin, not by the recipient"),
    ("own@example.com", "recipient", None, "local", "the vendor does not date it"),
    ("spam@example.com", "recipient", LATER, "local", "a spam complaint is never released"),
    ("hb@example.com", "recipient", LATER, "local", "a hard bounce is never released"),
    ("sys@example.com", "recipient", LATER, "local", "a unsubscribed a system reported is never released"),
])
def test_each_refusal_is_an_observation_worded_whole_and_the_opt_out_stays(store, address, by, when, policy,
                                                                            why):
    counts = record(store, Resubscribe(address, "*", by, when, {"vendor": "esp", "id": "7"}), policy)
    assert (counts.released, counts.lifted, counts.refused) == (0, 0, 1)
    assert last_event(store) == ("observed", by, "esp", when,
                                 f"re-subscribe at esp not honoured: {why}; the opt-out stays",
                                 {"vendor": "esp", "id": "7", "resubscribe_by": by})
    assert store.suppression(address) is not None and resubscribes.releases_of(store, address, "*") == []


def test_a_recipients_dated_re_subscribe_releases_at_that_adapter_only(store):
    counts = record(store, Resubscribe("own@example.com", "*", "recipient", LATER, {"id": "7"}))
    assert (counts.released, counts.lifted, counts.refused) == (1, 0, 0)
    assert last_event(store) == ("resubscribed", "recipient", "esp", LATER,
                                 "re-subscribed at esp by the recipient; the opt-out is released at esp only",
                                 {"id": "7", "resubscribe_by": "recipient"})
    assert resubscribes.releases_of(store, "own@example.com", "*") == ["esp"]
    assert resubscribes.release_counts(store) == {"esp": 1}
    assert store.suppression("own@example.com") is not None


def test_policy_everywhere_lifts_with_consent_and_the_evidence_as_explanation(store):
    counts = record(store, Resubscribe("own@example.com", "*", "recipient", LATER, {"id": "7", "empty": ""}),
                    "everywhere")
    assert (counts.released, counts.lifted) == (0, 1)
    lift = store.conn.execute("SELECT legal_basis, explanation, message, source, reason, details FROM events"
                              " WHERE kind = 'lifted'").fetchone()
    assert lift[:5] == ("consent", f"re-subscribed at esp by the recipient at {LATER} (id=7)",
                        "lifted by the recipient's own re-subscribe at esp", "crm", "unsubscribed")
    assert json.loads(lift[5])["by"] == "recipient re-subscribe at esp"
    assert store.suppression("own@example.com") is None
    assert store.conn.execute("SELECT lifted_at FROM lifts WHERE address = ?", ("own@example.com",)).fetchone() == (
        LATER,)


def test_the_evidence_text_lists_the_fields_it_has_in_order():
    item = Resubscribe("a@example.com", "*", "recipient", LATER, {"z": 1, "a": "x", "none": None, "blank": ""})
    assert resubscribes.evidence_text("esp", item, LATER) == f"re-subscribed at esp by the recipient at {LATER} (a=x, z=1)"
    bare = Resubscribe("a@example.com", "*", "recipient", LATER, {})
    assert resubscribes.evidence_text("esp", bare, LATER) == f"re-subscribed at esp by the recipient at {LATER}"


def test_an_unknown_policy_is_refused_by_name(store):
    with pytest.raises(ValueError) as caught:
        record(store, Resubscribe("own@example.com", "*", "recipient", LATER, {}), "sometimes")
    assert str(caught.value) == "recipient_resubscribe must be one of local, everywhere, ignore, got 'sometimes'"


@pytest.mark.parametrize("ok, kind", [(True, "removed"), (False, "remove_failed")])
def test_a_removal_outcome_is_recorded_and_no_longer_due(store, ok, kind):
    store.conn.execute("INSERT INTO removals_due (adapter, lift_seq, due_at) VALUES ('esp', 1, ?)", (NOW,))
    store.conn.execute("INSERT INTO removals_due (adapter, lift_seq, due_at) VALUES ('other', 1, ?)", (NOW,))
    resubscribes.finish_removal(store, "esp", 1, OptOut("own@example.com"), ok, "vendor said so")
    row = store.conn.execute("SELECT kind, address, scope, target, ref_seq, message FROM events ORDER BY seq DESC"
                             " LIMIT 1").fetchone()
    assert row == (kind, "own@example.com", "*", "esp", 1, "vendor said so")
    assert store.conn.execute("SELECT adapter FROM removals_due").fetchall() == [("other",)]


def test_every_item_of_a_page_is_weighed_and_counted_after_one_that_is_skipped(store):
    items = [Resubscribe("never@example.com", "*", "recipient", LATER, {}),          # never opted out
             Resubscribe("own@example.com", "*", "recipient", OPTED_OUT, {}),         # not after the opt-out
             Resubscribe("spam@example.com", "*", "recipient", LATER, {}),            # refused
             Resubscribe("hb@example.com", "*", "admin", LATER, {}),                  # refused
             Resubscribe("own@example.com", "*", "recipient", LATER, {"n": 1})]       # released
    with store.transaction():
        counts = resubscribes.record(store, "esp", items, "local", NOW)
    assert (counts.released, counts.lifted, counts.refused) == (1, 0, 2)
    store.ingest_page("crm", Page([OptOut("fresh@example.com", "*", "unsubscribed", "recipient", OPTED_OUT),
                                   OptOut("new@example.com", "*", "unsubscribed", "recipient", OPTED_OUT)]))
    store.promote("crm")
    more = [Resubscribe("fresh@example.com", "*", "recipient", LATER, {}),
            Resubscribe("new@example.com", "*", "recipient", LATER, {})]
    with store.transaction():  # the same page read again, and more: each one is recorded once
        again = resubscribes.record(store, "esp", items + more, "local", NOW)
    assert (again.released, again.refused) == (2, 0)
    assert store.conn.execute("SELECT count(*) FROM events WHERE kind IN ('resubscribed', 'observed')"
                              ).fetchone()[0] == 5


def test_two_lifts_in_a_page_are_both_counted_and_worded(store):
    store.ingest_page("crm", Page([OptOut("two@example.com", "*", "unsubscribed", "recipient", OPTED_OUT)]))
    store.promote("crm")
    items = [Resubscribe("own@example.com", "*", "recipient", LATER, {}),
             Resubscribe("two@example.com", "*", "recipient", LATER, {})]
    with store.transaction():
        counts = resubscribes.record(store, "esp", items, "everywhere", NOW)
    assert counts.lifted == 2
    messages = [m for (m,) in store.conn.execute("SELECT message FROM events WHERE kind = 'resubscribed'")]
    assert messages == ["re-subscribed at esp by the recipient; the opt-out is lifted everywhere "
                        "(policy everywhere)"] * 2


def test_an_opt_out_in_the_same_page_dated_after_the_re_subscribe_keeps_it_from_releasing(store):
    latest = "2026-02-15T00:00:00.000000+00:00"
    page = [OptOut("own@example.com", "*", "unsubscribed", "recipient", latest),   # the newest comes first
            OptOut("own@example.com", "*", "unsubscribed", "recipient", OPTED_OUT),
            OptOut("other@example.com", "*", "unsubscribed", "recipient", "2027-01-01T00:00:00.000000+00:00")]
    with store.transaction():
        counts = resubscribes.record(store, "esp", [Resubscribe("own@example.com", "*", "recipient", LATER, {})],
                                     "local", NOW, page)
    assert (counts.released, counts.refused) == (0, 0)
    assert resubscribes.releases_of(store, "own@example.com", "*") == []


def test_an_opt_out_still_staged_is_weighed_by_its_own_reason(tmp_path, memory_world):
    settings, store, engine, v = memory_world([{"name": "crm", "max_new_per_cycle": 1}])
    v["crm"].opt_out(OptOut("a@example.com", "*", "spam_complaint", "recipient", OPTED_OUT))
    v["crm"].opt_out(OptOut("b@example.com", "*", "spam_complaint", "recipient", OPTED_OUT))
    engine.cycle("crm")
    assert store.checkpoint("crm").paused and store.suppression("a@example.com") is None
    counts = record(store, Resubscribe("a@example.com", "*", "recipient", LATER, {}))
    assert counts.refused == 1
    assert last_event(store)[4] == "re-subscribe at esp not honoured: a spam complaint is never released; the opt-out stays"
