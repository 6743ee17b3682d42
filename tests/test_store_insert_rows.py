"""Events written many rows a statement: every row, in order, whatever the batch's size or SQLite's limit."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import pytest

from state.models import ALREADY, APPLIED, ApplyResult, OptOut, Page
from state.store import _ROWS_PER_INSERT, PushOutcome, Store


def pushed(store: Store, n: int, sink: str = "esp") -> list[tuple]:
    """Ingest n opt-outs, record each as applied to `sink` (every 7th already held); the applied rows written."""
    store.ingest_page("src", Page([OptOut(f"p{i:05d}@x.io", reason="unsubscribed" if i % 3 else "hard_bounce",
                                          origin="recipient" if i % 3 else "system") for i in range(n)]))
    store.promote("src")
    pending, highest = store.pending_events(sink, 0, n + 10)
    assert len(pending) == n
    outcomes = [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, ALREADY if i % 7 == 0 else APPLIED))
                for i, p in enumerate(pending)]
    store.record_push(sink, outcomes, highest)
    expected = [(p.optout.address, p.optout.scope, p.optout.reason, p.optout.origin, sink, p.seq,
                 "already held" if i % 7 == 0 else "", '{"outcome": "already"}' if i % 7 == 0
                 else '{"outcome": "applied"}') for i, p in enumerate(pending)]
    return expected


def written(store: Store) -> list[tuple]:
    return store.conn.execute(
        "SELECT address, scope, reason, origin, target, ref_seq, message, details FROM events"
        " WHERE kind = 'applied' ORDER BY seq").fetchall()


@pytest.mark.parametrize("n", [1, _ROWS_PER_INSERT - 1, _ROWS_PER_INSERT, _ROWS_PER_INSERT + 1,
                               3 * _ROWS_PER_INSERT, 3 * _ROWS_PER_INSERT + 17])
def test_every_outcome_is_one_event_in_the_batchs_order(tmp_path, n):
    with Store(tmp_path / "store.db") as store:
        expected = pushed(store, n)
        assert written(store) == expected
        # In the batch's order means seqs ascend with it, as one statement per row gave them.
        seqs = [row[0] for row in store.conn.execute("SELECT seq FROM events WHERE kind = 'applied' ORDER BY ref_seq")]
        assert seqs == sorted(seqs) and len(set(seqs)) == n
        assert store.pending_events("esp", 0, n + 10)[0] == []


@pytest.mark.parametrize("limit", [10, 25, 999])
def test_a_sqlite_that_allows_fewer_values_a_statement_gets_fewer_rows_each(tmp_path, limit):
    with Store(tmp_path / "store.db") as store:
        store.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, limit)
        expected = pushed(store, 123)
        assert written(store) == expected


def test_an_empty_batch_writes_no_event(tmp_path):
    with Store(tmp_path / "store.db") as store:
        store.record_push("esp", [], 0)
        store._append_events(("recorded_at", "kind", "address", "scope"), [])
        assert store.conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


def test_a_failing_row_writes_none_of_the_batch(tmp_path):
    """A constraint broken by any row, in any statement, undoes the whole record: no half-recorded batch."""
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("src", Page([OptOut(f"p{i:04d}@x.io") for i in range(2 * _ROWS_PER_INSERT)]))
        store.promote("src")
        pending, highest = store.pending_events("esp", 0, 10_000)
        outcomes = [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, APPLIED)) for p in pending]
        # address is NOT NULL: the last row of the second statement breaks it.
        broken = replace(outcomes[-1].optout, address=None)
        outcomes[-1] = PushOutcome(outcomes[-1].seq, broken, ApplyResult(broken, APPLIED))
        before = store.last_event_seq()
        with pytest.raises(sqlite3.IntegrityError):
            store.record_push("esp", outcomes, highest)
        assert store.last_event_seq() == before
        assert store.checkpoint("esp") is None or store.checkpoint("esp").applied_seq == 0
