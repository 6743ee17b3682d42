"""PgStore's own behaviour beyond the shared contract (tests/test_store_contract.py): one writer at a
time, errors without the URL's password, a NUL in a page. Re-subscribes, the reconcile, snapshots and the
status numbers are in tests/test_store_contract_reconcile.py."""

from __future__ import annotations

import threading

import pytest

from state.errors import StoreError
from state.models import OptOut, Page
from state.pg_store import PgStore


def test_write_transactions_run_one_at_a_time_as_on_sqlite(pg_url):
    """A second writer waits at BEGIN for the first one's commit (the append lock), then sees its rows."""
    first, second = PgStore(pg_url), PgStore(pg_url)
    seen = []
    try:
        with first.transaction():
            first.ingest_page("a", Page([OptOut("one@y.io")], cursor="c1"))

            def write():
                with second.transaction():
                    seen.append(second.checkpoint("a").read_cursor)
                    second.set_checkpoint("a", read_cursor="c2")

            writer = threading.Thread(target=write)
            writer.start()
            writer.join(0.5)
            assert writer.is_alive() and seen == []     # still waiting for the first writer
        writer.join(10)
        assert seen == ["c1"]                          # it read after the first one's commit
        assert first.checkpoint("a").read_cursor == "c2"
    finally:
        first.close()
        second.close()


def test_an_unreachable_or_unreadable_url_is_one_line_without_its_password(tmp_path):
    url = f"postgresql://optout:s3cr%40t-pw@/nodb?host={tmp_path}/nowhere&connect_timeout=2"
    with pytest.raises(StoreError) as caught:
        PgStore(url)
    message = str(caught.value)
    assert message.startswith("cannot open the store (PostgreSQL): ") and "\n" not in message
    assert "s3cr" not in message and "t-pw" not in message
    with pytest.raises(StoreError) as caught:
        PgStore("postgresql://optout:s3cret@[bad")
    assert "s3cret" not in str(caught.value)


def test_the_store_names_its_database_but_never_the_url(pg_url):
    with PgStore(pg_url) as store:
        assert store.path.startswith("PostgreSQL database t_") and "postgresql://" not in store.path
        assert len(store.store_id()) == 32


def _same_scenario(store) -> dict:
    """One run of the core path; what the store holds after it, with its own clock's times numbered."""
    from state.models import ALREADY, APPLIED, TRANSIENT, ApplyResult, Rejected
    from state.store import PushOutcome

    store.ingest_page("a", Page(
        [OptOut("b@y.io", "news", "imported", "user", None, {}),
         OptOut("x@y.io", "*", "hard_bounce", "system", "2026-03-01T12:30:00+02:00", {"note": "ünï ✓", "n": 1}),
         OptOut("b@y.io", "news", "manual", "system", "2026-01-01T00:00:00Z", {"k": [1, "a"]}),
         OptOut("t@y.io", "*", "unsubscribed", "recipient", "2026-01-01t00:00:00z")],
        [Rejected("f row 2", "x", "no @")], cursor="c1",
        notices=[OptOut("n@y.io", "*", "unsubscribed", "recipient", None, {"message": "seen"})]))
    store.promote("a", legal_basis="consent", explanation="spring list")
    pending, highest = store.pending_events("b", 0, 100)
    store.mark_inflight("b", [p.seq for p in pending])
    results = [ApplyResult(pending[0].optout, APPLIED, fanned_out=("offers",)),
               ApplyResult(pending[1].optout, ALREADY),
               ApplyResult(pending[2].optout, TRANSIENT, "503")]
    store.record_push("b", [PushOutcome(p.seq, p.optout, r) for p, r in zip(pending, results)], pending[1].seq,
                      resent={pending[1].seq})
    store.ingest_page("b", Page([OptOut("b@y.io", "offers", "unsubscribed"), OptOut("x@y.io", "*", "spam_complaint"),
                                 OptOut("new@y.io")], cursor="b1"))
    store.promote("b")
    times: dict[str, int] = {}

    def numbered(row: dict) -> dict:
        return {k: (times.setdefault(v, len(times)) if k in {"recorded_at", "first_at", "last_at", "resolved_at",
                                                               "cursor_at"} and v else v)
                for k, v in row.items()}

    return {"events": [numbered(e) for e in store.events_after(0, 1000)],
            "suppressions": [tuple(r) for r in store.iter_suppressions()],
            "rows": [numbered(store.suppression(r[0], r[1])) for r in store.iter_suppressions()],
            "failures": [numbered(f) for f in store.failures(include_resolved=True)],
            "checkpoints": [store.checkpoint(a) for a in ("a", "b")]}


def test_both_backends_keep_the_same_rows_byte_for_byte(pg_url, tmp_path):
    """The same calls leave the same events, suppressions and failures on SQLite and PostgreSQL
    (times are each store's own clock: compared by their order)."""
    from dataclasses import replace as with_fields

    from state.store import Store

    with Store(tmp_path / "store.db") as sqlite_store, PgStore(pg_url) as pg_store:
        on_sqlite, on_pg = _same_scenario(sqlite_store), _same_scenario(pg_store)
    for held in (on_sqlite, on_pg):
        held["checkpoints"] = [with_fields(c, cursor_at=None) for c in held["checkpoints"]]
    assert len(on_sqlite["events"]) == 9
    for part in on_sqlite:
        assert on_pg[part] == on_sqlite[part], part
