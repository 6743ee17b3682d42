"""Every event append names its columns exactly (state/event_columns.py), on both stores.

SQLite would take "MESSAGE" for message; PostgreSQL's appends would write NULL for it. Both refuse
it, name it, and write nothing; the callers' own spellings (lifts, re-subscribes, snapshots,
dismissals, notices) are all exact, which the rest of the suite shows by running them.
"""

from __future__ import annotations

import pytest

from state.errors import StoreError
from state.event_columns import EVENT_COLUMNS, checked_event_columns

NOW = "2026-11-28T10:00:00+00:00"


def _events(store) -> list[tuple]:
    return [tuple(r) for r in store.conn.execute("SELECT kind, address, message FROM events ORDER BY seq").fetchall()]


KNOWN = ("recorded_at, kind, address, scope, reason, origin, source, target, ref_seq, occurred_at, legal_basis, "
         "explanation, message, details")


@pytest.mark.parametrize("spelling", ["MESSAGE", "Message", "messages", "mess age"])
def test_an_event_column_not_spelt_exactly_is_refused_and_nothing_is_written(any_store, spelling):
    store = any_store
    before = _events(store)
    with pytest.raises(StoreError) as caught:
        with store.transaction():
            store.append_event({"recorded_at": NOW, "kind": "observed", "address": "a@example.com",
                                "scope": "all", spelling: "kept?"})
    assert str(caught.value) == f"the events table has no column {spelling!r} (known: {KNOWN})"
    with pytest.raises(StoreError, match=f"no column {spelling!r}"):
        with store.transaction():
            store._append_events(("recorded_at", "kind", "address", "scope", spelling),
                                 [(NOW, "observed", "b@example.com", "all", "kept?")])
    assert _events(store) == before


def test_exact_names_are_written_with_every_value_on_both_stores(any_store):
    store = any_store
    with store.transaction():
        store.append_event({"recorded_at": NOW, "kind": "observed", "address": "a@example.com", "scope": "all",
                            "message": "one"})
        store._append_events(("recorded_at", "kind", "address", "scope", "message"),
                             [(NOW, "observed", "b@example.com", "all", "two")])
    assert _events(store)[-2:] == [("observed", "a@example.com", "one"), ("observed", "b@example.com", "two")]


def test_the_known_columns_are_the_events_tables_own(any_store):
    store = any_store
    if hasattr(store, "raw"):
        rows = store.conn.execute("SELECT column_name FROM information_schema.columns"
                                  " WHERE table_name = 'events' AND column_name <> 'seq'").fetchall()
    else:
        rows = [(r[1],) for r in store.conn.execute("PRAGMA table_info(events)").fetchall() if r[1] != "seq"]
    assert sorted(r[0] for r in rows) == sorted(EVENT_COLUMNS)
    assert checked_event_columns(iter(EVENT_COLUMNS)) == EVENT_COLUMNS
