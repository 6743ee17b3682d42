"""The store: schema and migrations, file mode, WAL, atomic pages, normalisation rules."""

from __future__ import annotations

import json
import os
import sqlite3
import stat

import pytest
from hypothesis import given, strategies as st

from state.addresses import InvalidAddress, normalise_address
from state.errors import StoreError
from state.models import OptOut, Page, Rejected
from state.schema import SCHEMA_VERSION
from state.store import Store


def test_a_new_store_is_private_in_wal_mode_and_fully_migrated(tmp_path):
    path = tmp_path / "deep" / "store.db"
    with Store(path) as store:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"suppressions", "events", "checkpoints", "staged", "lifts", "failures", "runs"} <= tables
        store.ingest_page("a", Page([OptOut("x@y.io")]))
    for name in os.listdir(path.parent):
        assert stat.S_IMODE(os.stat(path.parent / name).st_mode) == 0o600, name


def test_a_new_store_gets_large_pages_and_an_existing_store_keeps_its_own(tmp_path):
    with Store(tmp_path / "new.db") as store:
        assert store.conn.execute("PRAGMA page_size").fetchone()[0] == 16384
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE before_us (x)")
    conn.close()
    with Store(old) as store:
        assert store.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
        store.ingest_page("a", Page([OptOut("x@y.io")]))
        store.promote("a")
        assert store.suppression("x@y.io")["reason"] == "unsubscribed"


def test_migrations_run_once_and_a_newer_store_is_refused(tmp_path):
    path = tmp_path / "store.db"
    Store(path).close()
    Store(path).close()  # re-opening does not re-run migration 1 (it would fail on existing tables)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer than this program"):
        Store(path)


def test_a_page_and_its_cursor_are_saved_together_or_not_at_all(tmp_path, monkeypatch):
    store = Store(tmp_path / "store.db")
    store.ingest_page("a", Page([OptOut("one@y.io")], cursor="c1"))

    real_write = store._write

    def failing_write(sql, params=()):
        if sql.startswith("UPDATE checkpoints SET read_cursor"):
            raise StoreError("disk full")
        return real_write(sql, params)

    monkeypatch.setattr(store, "_write", failing_write)
    with pytest.raises(StoreError):
        store.ingest_page("a", Page([OptOut("two@y.io")], [Rejected("f row 2", "x", "bad")], cursor="c2"))
    assert store.checkpoint("a").read_cursor == "c1"
    assert store.staged_count("a") == 1            # only the first page's opt-out
    assert list(store.failures("a")) == []         # the rejection went with its page


def test_a_read_only_store_gives_a_clear_error(tmp_path):
    path = tmp_path / "store.db"
    Store(path).close()
    for name in os.listdir(tmp_path):
        os.chmod(tmp_path / name, 0o400)
    os.chmod(tmp_path, 0o500)
    try:
        if os.geteuid() == 0:
            # root ignores file modes; SQLite's own read-only flag stands in for the read-only file.
            store = Store(path)
            store.conn.execute("PRAGMA query_only = ON")
        else:
            store = Store(path)
        with pytest.raises(StoreError, match="cannot write to the store"):
            store.ingest_page("a", Page([OptOut("x@y.io")], cursor="1"))
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_locked_store_is_a_clear_error_not_a_hang(tmp_path):
    path = tmp_path / "store.db"
    Store(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    store = Store.__new__(Store)
    try:
        store = Store(path)
        store.conn.execute("PRAGMA busy_timeout = 200")
        with pytest.raises(StoreError, match="locked"):
            store.ingest_page("a", Page([OptOut("x@y.io")]))
    except StoreError as exc:  # opening may already meet the lock
        assert "locked" in str(exc)
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_events_are_append_only_with_strictly_increasing_seq(tmp_path):
    with Store(tmp_path / "store.db") as store:
        for n in range(3):
            store.ingest_page("a", Page([OptOut(f"u{n}@y.io")]))
            store.promote("a")
        seqs = [r[0] for r in store.conn.execute("SELECT seq FROM events ORDER BY rowid")]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # A deleted last event's number is never handed out again (AUTOINCREMENT).
        store.conn.execute("DELETE FROM events WHERE seq = ?", (seqs[-1],))
        store.ingest_page("a", Page([OptOut("u9@y.io")]))
        store.promote("a")
        assert store.conn.execute("SELECT max(seq) FROM events").fetchone()[0] > seqs[-1]


@pytest.mark.parametrize("raw, expected", [
    ("  Ann@Example.COM ", "ann@example.com"),
    ("first.last+tag@sub.example.co.uk", "first.last+tag@sub.example.co.uk"),  # no dot or plus folding
    ("o'neil@example.ie", "o'neil@example.ie"),
    ("ÿ@bücher.de", "ÿ@bücher.de"),
])
def test_normalisation_trims_and_lower_cases_only(raw, expected):
    assert normalise_address(raw) == expected


@pytest.mark.parametrize("raw, reason", [
    ("", "empty address"),
    ("   ", "empty address"),
    ("plainaddress", "no @ in address"),
    ("a@@example.com", "more than one @ in address"),
    ("@example.com", "nothing before the @"),
    ("ann@", "no domain after the @"),
    ("ann@localhost", "domain 'localhost' has no dot"),
    ("ann..b@example.com", "misplaced dot before the @"),
    (".ann@example.com", "misplaced dot before the @"),
    ("ann.@example.com", "misplaced dot before the @"),
    ("ann b@example.com", "address contains white space"),
    ("ann\tb@example.com", "address contains white space"),
    ("ann@-example.com", "invalid domain '-example.com'"),
    ("a" * 65 + "@example.com", "part before the @ longer than 64 characters"),
    ("ann(x)@example.com", "invalid character before the @"),
    ("a" * 64 + "@" + "e" * 63 + "." + "f" * 63 + "." + "g" * 58 + ".com", "address longer than 254 characters"),
    ("a" * 64 + "@localhost", "domain 'localhost' has no dot"),  # a 64-character local part is not the fault
])
def test_invalid_addresses_say_why(raw, reason):
    with pytest.raises(InvalidAddress) as caught:
        normalise_address(raw)
    assert str(caught.value) == reason


@pytest.mark.parametrize("raw", ["a" * 64 + "@example.com",
                                 "a" * 64 + "@" + "e" * 63 + "." + "f" * 63 + "." + "g" * 57 + ".com",  # 254
                                 "ann@" + ".".join(["d" * 63] * 3) + "." + "e" * 55,  # a 247-character domain
                                 "Ann.B@Example.COM"])
def test_addresses_at_the_length_limits_are_accepted(raw):
    assert normalise_address(raw) == raw.strip().lower()


@given(st.emails())
def test_every_generated_valid_address_is_accepted_and_idempotent(address):
    try:
        normalised = normalise_address(address)
    except InvalidAddress:
        # Hypothesis also generates quoted or IP-literal local parts we deliberately refuse.
        assert '"' in address or "[" in address or len(address) > 254 or "-." in address or ".-" in address \
            or address.split("@")[1].split(".")[-1][:1].isdigit() or len(address.split("@")[0]) > 64 \
            or any(len(label) > 63 for label in address.split("@")[1].split("."))
        return
    assert normalise_address(normalised) == normalised
    assert normalised == address.strip().lower()


@pytest.mark.parametrize("note", ["plain", "with a NUL \x00 inside", "ünïcödé ✓"])
def test_a_page_keeps_every_field_exactly_whichever_way_it_is_loaded(tmp_path, note):
    """A page goes in as one JSON array, or row by row when a text holds a NUL; both keep every field."""
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("a", Page([
            OptOut("x@y.io", "*", "hard_bounce", "system", "2026-01-02T03:04:05Z", {"note": note, "n": 1}),
            OptOut("x@y.io", "*", "unsubscribed", "recipient", None, {"weaker": True}),  # same page: stronger wins
            OptOut("z@y.io", "*", "imported", "user", None, None),
        ]))
        store.promote("a")
        first, second = store.suppression("x@y.io"), store.suppression("z@y.io")
    assert (first["reason"], first["origin"], first["occurred_at"]) == (
        "hard_bounce", "system", "2026-01-02T03:04:05.000000+00:00")
    assert json.loads(first["details"]) == {"note": note, "n": 1}
    assert (second["reason"], second["origin"], second["occurred_at"], second["details"]) == (
        "imported", "user", None, None)


@pytest.mark.parametrize("text, stored", [
    ("2026-03-01T12:30:00+02:00", "2026-03-01T10:30:00.000000+00:00"),      # an offset
    ("2026-03-01T05:30:00-05:00", "2026-03-01T10:30:00.000000+00:00"),
    ("2026-03-01T10:30:00Z", "2026-03-01T10:30:00.000000+00:00"),
    ("2026-03-01t10:30:00z", "2026-03-01T10:30:00.000000+00:00"),          # RFC 3339 allows lower case
    ("2026-03-01T10:30:00", "2026-03-01T10:30:00.000000+00:00"),           # naive: taken as UTC
    ("2026-03-01T10:30:00.5+00:00", "2026-03-01T10:30:00.500000+00:00"),
    ("yesterday", None), ("", None), (None, None),
])
def test_times_in_every_zone_form_are_stored_in_the_one_utc_form(text, stored):
    from state.store import canonical_time

    assert canonical_time(text) == stored


def test_the_utc_form_does_not_depend_on_the_machines_time_zone(monkeypatch):
    """Naive times are UTC, and aware ones are turned into UTC, even where local time is not UTC."""
    import time
    from datetime import datetime, timedelta, timezone

    from state.models import to_utc_iso

    monkeypatch.setenv("TZ", "EST+5")   # a POSIX zone: five hours behind UTC, no zone files needed
    time.tzset()
    try:
        assert to_utc_iso(datetime(2026, 3, 1, 10, 30)) == "2026-03-01T10:30:00.000000+00:00"
        assert to_utc_iso(datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))) == (
            "2026-03-01T10:30:00.000000+00:00")
        assert to_utc_iso(datetime(2026, 3, 1, 10, 30, tzinfo=timezone.utc)) == "2026-03-01T10:30:00.000000+00:00"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_a_nul_in_an_address_is_a_rejected_row_never_a_cut_address_and_the_rest_of_the_page_is_kept(tmp_path):
    """SQLite's ->> would cut the text at a NUL, and PostgreSQL cannot hold one: the row is rejected whole."""
    with Store(tmp_path / "store.db") as store:
        store.ingest_page("a", Page([OptOut("a\x00b@y.io", "*", "unsubscribed", "recipient", None),
                                     OptOut("c@y.io")]))
        store.ingest_page("a", Page([OptOut("d@y.io", "*", "hard_bounce", "system", "2026-01-02T03:04:05Z")]))
        store.promote("a")
        rows = store.conn.execute("SELECT address, reason, origin, occurred_at FROM suppressions ORDER BY address")
        assert rows.fetchall() == [
            ("c@y.io", "unsubscribed", "recipient", None),
            ("d@y.io", "hard_bounce", "system", "2026-01-02T03:04:05.000000+00:00")]
        assert [f["value"] for f in store.failures("a")] == ["a\\x00b@y.io *"]


def test_promote_strengthens_a_suppression_another_source_made_meanwhile_and_logs_it(tmp_path):
    """b staged a spam complaint; a suppressed the address as unsubscribed first; b's promote raises it."""
    with Store(tmp_path / "store.db") as store:
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
        # Another adapter's staged row is not b's to promote: cat stays as a imported it.
        assert store.suppression("cat@y.io")["reason"] == "imported"
        assert [e["kind"] for e in store.events_for("cat@y.io")] == ["suppressed"]
        assert store.staged_count("b") == 0 and store.staged_count("c") == 1


def test_a_full_read_ends_a_release_it_overrides_and_stages_what_the_store_lacks(tmp_path):
    from state import resubscribes
    from state.models import Resubscribe

    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page([OptOut("ann@y.io", "*", "unsubscribed", "recipient", "2026-01-01T00:00:00Z")]))
        store.promote("crm")
        store.ingest_page("esp", Page(resubscribes=[
            Resubscribe("ann@y.io", "*", "recipient", "2026-01-02T00:00:00Z", {"id": "r1"})]))
        assert resubscribes.releases_of(store, "ann@y.io", "*") == ["esp"]
        store.begin_source_set()
        store.add_to_source_set([OptOut("ann@y.io", "*", "unsubscribed", "recipient", "2026-01-03T00:00:00Z"),
                                 OptOut("bob@y.io", "*", "unsubscribed", "recipient", None)])
        counts = store.stage_from_source_set("hub")   # an adapter never seen before
        assert (counts.staged, counts.changed) == (1, 0)
        assert resubscribes.releases_of(store, "ann@y.io", "*") == []
        [ended] = [e for e in store.events_for("ann@y.io") if e["kind"] == "release_ended"]
        staged_at = store.conn.execute("SELECT staged_at FROM staged WHERE address = 'bob@y.io'").fetchone()[0]
        assert (ended["source"], ended["target"], ended["occurred_at"], ended["recorded_at"], ended["message"]) == (
            "hub", "esp", "2026-01-03T00:00:00.000000+00:00", staged_at,
            "a newer opt-out seen at hub ends the release at esp; it is re-applied there")
        assert store.checkpoint("esp").reconcile_requested
        assert store.conn.execute("SELECT adapter FROM checkpoints ORDER BY adapter").fetchall() == [
            ("crm",), ("esp",), ("hub",)]


def test_the_first_page_of_a_store_object_rolled_back_leaves_it_able_to_take_the_next(tmp_path):
    """The temp tables made in a transaction that rolls back go with it; the next page makes them again.

    Before, every later ingest on the same Store failed with 'no such table: incoming'.
    """
    store = Store(tmp_path / "s.db")
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
    store.close()
