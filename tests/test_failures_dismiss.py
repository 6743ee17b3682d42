"""`failures dismiss` in the library: all or nothing, each refusal worded whole, one audit event per failure.

Written for mutants of Store.dismiss_failures that a mutation run left alive (docs/testing.md).
"""

from __future__ import annotations

import json

import pytest

from state.errors import InputError, RefusedError
from state.models import OptOut, Page, Rejected


@pytest.fixture
def failures(memory_world):
    """A store with a rejected row (no address), a refused apply and a parked apply, by kind."""
    settings, store, engine, v = memory_world([{"name": "a"}, {"name": "b", "topics": {"news": "n"}}],
                                              topics={"news": "News"})
    v["a"].opt_out(OptOut("bad@example.com", "news"))
    v["a"].opt_out(OptOut("later@example.com"))
    v["a"].opt_out(OptOut("later2@example.com"))
    v["b"].fail_permanent_addresses = {"bad@example.com"}
    v["b"].fail_transient_addresses = {"later@example.com", "later2@example.com"}
    engine.sync_once()
    store.ingest_page("a", Page([], [Rejected("list.csv row 3", "nope", "no @ in address")], cursor="x"))
    by_kind = {f["kind"]: f for f in store.failures()}  # the last of each kind
    assert sorted(f["kind"] for f in store.failures()) == ["permanent", "rejected", "transient", "transient"]
    return store, by_kind


def open_ids(store) -> list[int]:
    return sorted(f["id"] for f in store.failures())


@pytest.mark.parametrize("reason", ["", "   \n"])
def test_a_missing_reason_is_refused(failures, reason):
    store, by_kind = failures
    with pytest.raises(InputError) as caught:
        store.dismiss_failures([by_kind["permanent"]["id"]], reason, by="ops")
    assert str(caught.value) == "a reason is required to dismiss a failure"


def test_no_id_is_refused(failures):
    store, _ = failures
    with pytest.raises(InputError) as caught:
        store.dismiss_failures([], "checked", by="ops")
    assert str(caught.value) == "name at least one failure id to dismiss"


def test_unknown_ids_are_named_and_nothing_is_dismissed(failures):
    store, by_kind = failures
    before = open_ids(store)
    with pytest.raises(InputError) as caught:
        store.dismiss_failures([by_kind["rejected"]["id"], 998, 999], "checked", by="ops")
    assert str(caught.value) == ("no failure with id 998, 999; nothing was dismissed "
                                 "(optout-sync failures lists the open ones)")
    assert open_ids(store) == before


def test_closed_ids_are_named_and_nothing_more_is_dismissed(failures):
    store, by_kind = failures
    rejected, refused = by_kind["rejected"]["id"], by_kind["permanent"]["id"]
    store.dismiss_failures([rejected], "checked", by="ops")
    with pytest.raises(InputError) as caught:
        store.dismiss_failures([refused, rejected], "checked", by="ops")
    assert str(caught.value) == f"failure {rejected} is already closed; nothing was dismissed"
    assert refused in open_ids(store)
    store.dismiss_failures([refused], "checked", by="ops")
    with pytest.raises(InputError) as caught:
        store.dismiss_failures([refused, rejected], "checked", by="ops")
    assert str(caught.value) == f"failure {refused}, {rejected} is already closed; nothing was dismissed"


def test_a_parked_apply_is_refused_and_nothing_is_dismissed(failures):
    store, by_kind = failures
    parked = [f["id"] for f in store.failures() if f["kind"] == "transient"]
    refused = by_kind["permanent"]["id"]
    with pytest.raises(RefusedError) as caught:
        store.dismiss_failures([refused, *parked], "checked", by="ops")
    assert str(caught.value) == (f"failure {parked[0]}, {parked[1]} is a parked apply, retried every cycle "
                                 "until it succeeds; nothing was dismissed")
    assert refused in open_ids(store)


def test_each_dismissal_is_one_audit_event_with_who_why_and_what(failures):
    store, by_kind = failures
    rejected, refused = by_kind["rejected"], by_kind["permanent"]
    rows = store.dismiss_failures([refused["id"], rejected["id"], refused["id"]], "  checked by hand  ",
                                  by="ops-anna")
    assert [r["id"] for r in rows] == [refused["id"], rejected["id"]]  # a repeated id counts once
    assert open_ids(store) == sorted(f["id"] for f in store.failures() if f["kind"] == "transient")
    assert len(open_ids(store)) == 2
    closed = {f["id"]: f for f in store.failures(include_resolved=True)}
    assert closed[refused["id"]]["dismissed_reason"] == "checked by hand"
    events = store.conn.execute(
        "SELECT address, scope, target, message, details FROM events WHERE kind = 'failure_dismissed'"
        " ORDER BY seq").fetchall()
    assert [(a, s, t, m, json.loads(d)) for a, s, t, m, d in events] == [
        ("bad@example.com", "news", "b", "checked by hand",
         {"failure_id": refused["id"], "failure_kind": "permanent", "by": "ops-anna",
          "location": refused["location"]}),
        ("", "", "a", "checked by hand",
         {"failure_id": rejected["id"], "failure_kind": "rejected", "by": "ops-anna",
          "location": "list.csv row 3"}),
    ]
