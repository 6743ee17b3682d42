"""`store copy`: a store moved SQLite -> PostgreSQL -> SQLite keeps every row and its meaning, is refused
while a daemon holds it or when the destination holds data, and a copy that differs is caught."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from connector import store_copy
from connector.lock import StoreLock
from state import lifts, receipts, snapshots
from state.errors import InputError, RefusedError, StoreError
from state.models import APPLIED, PERMANENT, ApplyResult, OptOut, Page, Resubscribe
from state.pg_errors import BAD_URL
from state.pg_schema import POSTGRESQL_ONLY_TABLES
from state.store import PushOutcome, Store
from state.store_copy import COPIED_TABLES, CopyMismatch

from .conftest import write_settings
from .process import run_cli

PASSWORD = "s3cret-Pa55"


def build_history(path: Path) -> None:
    """A store with several hundred events and a row in every table, made through the store's own API."""
    with Store(path) as store:
        for page in range(4):
            optouts = [OptOut(f"user{page * 100 + i}@example.com", "*" if i % 4 else "news",
                              ("unsubscribed", "manual", "hard_bounce", "spam_complaint")[i % 4],
                              ("recipient", "user", "system", "recipient")[i % 4],
                              f"2026-0{page + 1}-0{i % 9 + 1}T10:00:00+00:00" if i % 3 else None,
                              {"n": i, "note": "é ✓"} if i % 5 == 0 else None)
                       for i in range(60)]
            store.ingest_page("crm", Page(optouts, cursor=f"cursor-{page}"))
            store.promote("crm")
        # Applied to a sink, some failing (failures rows, applied and failed events), with in-flight marks.
        pending, last = store.pending_events("esp", 0, 1000)
        store.mark_inflight("esp", [p.seq for p in pending[:150]])
        outcomes = [PushOutcome(p.seq, p.optout, ApplyResult(p.optout, PERMANENT if p.seq % 7 == 0 else APPLIED,
                                                             "refused" if p.seq % 7 == 0 else ""))
                    for p in pending[:140]]
        store.record_push("esp", outcomes, last)
        # Lifts of user-made opt-outs.
        for address in ("user1@example.com", "user5@example.com", "user101@example.com"):
            lifts.lift(store, address, "*", "consent", "asked to mail again", by="ops")
        # Recipients' own re-subscribes: one released at the sink (local), one lifted everywhere, which
        # leaves a removal due at the sink that had applied it.
        store.ingest_page("esp", Page([], resubscribes=[
            Resubscribe("user8@example.com", "news", "recipient", "2026-11-01T10:00:00+00:00", {"id": "r1"})]))
        store.ingest_page("crm", Page([], resubscribes=[
            Resubscribe("user4@example.com", "news", "recipient", "2026-11-01T10:00:00+00:00", {"id": "r2"})]),
            resubscribe_policy="everywhere")
        # Staged opt-outs waiting (a rowid table) and a paused adapter.
        store.ingest_page("list", Page([OptOut(f"staged{i}@example.com") for i in range(5)], cursor="l1"))
        store.pause("list")
        for i in range(3):
            store.record_run("crm", "pull", f"2026-11-0{i + 1}T10:00:00+00:00", 12 + i, pulled=60, staged=60)
        store.record_run("esp", "push", "2026-11-04T10:00:00+00:00", 40, pushed=120, failed=20,
                         error=RuntimeError("vendor down"))
        store.save_adapter_memory("crm", {"batch_api": "v4", "limit": "100"})
        with store.transaction():
            receipts.remember(store, "esp", ["evt-1", "evt-2"], "2026-11-04T10:00:00+00:00")
        snapshots.create(store, "snap-1", "esp", "hard_bounce", since=None, until=None, categories=["hard"])
        snapshots.add_members(store, "snap-1", [("c1", "user2@example.com", None, "hard"),
                                                ("c2", "user6@example.com", "2026-01-01T00:00:00+00:00", None)])
        snapshots.finish(store, "snap-1", 1)
        store.set_checkpoint("esp", reconcile_requested=True)


def sqlite_tables(path: Path) -> dict[str, list[tuple]]:
    """Every copied table's rows (with the rowid where SQLite reads by it), in primary key order."""
    conn = sqlite3.connect(path)
    try:
        found = {}
        for table in COPIED_TABLES:
            rowid = ", rowid" if table in ("staged", "snapshots") else ""
            found[table] = sorted(conn.execute(f"SELECT *{rowid} FROM {table}").fetchall(), key=repr)
        found["sqlite_sequence"] = conn.execute("SELECT * FROM sqlite_sequence ORDER BY 1").fetchall()
        found["user_version"] = conn.execute("PRAGMA user_version").fetchall()
        return found
    finally:
        conn.close()


@pytest.fixture
def history(tmp_path) -> Path:
    path = tmp_path / "store.db"
    build_history(path)
    return path


def with_password(url: str) -> str:
    """The cluster's URL with a password (trust authentication ignores it), as an operator's would hold one."""
    return url.replace("postgresql://optout@", f"postgresql://optout:{PASSWORD}@")


def test_the_copied_tables_are_every_table_of_both_schemas(tmp_path):
    with Store(tmp_path / "s.db") as store:
        tables = {row[0] for row in store.conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'")}
    assert tables == set(COPIED_TABLES)
    assert len(COPIED_TABLES) == len(set(COPIED_TABLES))
    assert COPIED_TABLES.index("snapshots") < COPIED_TABLES.index("snapshot_contacts")


@pytest.mark.postgresql
def test_the_copied_tables_are_every_table_of_the_postgresql_schema_but_its_own(pg_url):
    import psycopg

    from state.pg_store import PgStore

    PgStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")}
    assert tables - set(POSTGRESQL_ONLY_TABLES) == set(COPIED_TABLES)


@pytest.mark.postgresql
def test_a_round_trip_keeps_every_row_and_the_event_log_checksum(history, pg_url, tmp_path):
    import psycopg

    before = sqlite_tables(history)
    assert len(before["events"]) > 300 and all(before[t] for t in COPIED_TABLES), \
        [t for t in COPIED_TABLES if not before[t]]
    there = store_copy.copy_store(history, with_password(pg_url))
    assert there.tables["events"].rows == len(before["events"])
    assert {t: f.rows for t, f in there.tables.items()} == {t: len(before[t]) for t in COPIED_TABLES}

    back = tmp_path / "back.db"
    again = store_copy.copy_store(with_password(pg_url), back)
    assert again.tables == there.tables
    assert again.events_sha256 == there.events_sha256
    assert sqlite_tables(back) == before  # seqs, ids, rowids, the identity and the schema version

    with psycopg.connect(pg_url) as conn:
        # The identity continues past the copied log: the next append takes max(seq) + 1.
        max_seq = max(row[0] for row in before["events"])
        assert conn.execute("SELECT max(seq) FROM events").fetchone()[0] == max_seq
        appended = conn.execute("INSERT INTO events (recorded_at, kind, address, scope) VALUES"
                                " ('2026-12-01T00:00:00.000000+00:00', 'noted', 'x@example.com', '*')"
                                " RETURNING seq").fetchone()[0]
        assert appended == max_seq + 1
        staged = conn.execute("INSERT INTO staged (adapter, address, scope, reason, origin, staged_at)"
                              " VALUES ('list', 'late@example.com', '*', 'unsubscribed', 'recipient', 'now')"
                              " RETURNING row_order").fetchone()[0]
        assert staged == max(row[-1] for row in before["staged"]) + 1
        assert conn.execute("SELECT max(version) FROM schema_version").fetchone()[0] == 6
    with Store(back) as store:  # appends continue on SQLite too
        with store.transaction():
            store.conn.execute("INSERT INTO events (recorded_at, kind, address, scope) VALUES ('t', 'noted', 'x', '*')")
        assert store.last_event_seq() == max_seq + 1


@pytest.mark.postgresql
def test_a_copy_is_refused_while_a_daemon_holds_the_sqlite_source(history, pg_url):
    import psycopg

    with StoreLock(history, command="run"):
        with pytest.raises(RefusedError) as caught:
            store_copy.copy_store(history, pg_url)
    assert str(caught.value).startswith(f"the store {history} is in use by optout-sync (pid ")
    assert "`run` since" in str(caught.value) and "stop it before copying" in str(caught.value)
    with psycopg.connect(pg_url) as conn:  # nothing was written to the destination
        assert conn.execute("SELECT count(*) FROM information_schema.tables"
                            " WHERE table_schema = 'public'").fetchone()[0] == 0


@pytest.mark.postgresql
def test_a_copy_is_refused_while_a_daemon_holds_a_lease_on_the_postgresql_source(history, pg_url, tmp_path):
    from connector.leases import PgLeases

    store_copy.copy_store(history, pg_url)
    leases = PgLeases(pg_url, daemon_id="host-a/42")
    try:
        assert leases.try_acquire("crm")
        with pytest.raises(RefusedError) as caught:
            store_copy.copy_store(pg_url, tmp_path / "back.db")
    finally:
        leases.close()
    assert "is in use: daemon host-a/42 holds adapter crm since " in str(caught.value)
    assert not (tmp_path / "back.db").exists()
    store_copy.copy_store(pg_url, tmp_path / "back.db")  # the lease gone, the copy goes ahead


@pytest.mark.postgresql
def test_a_destination_that_holds_data_is_refused_and_left_as_it_was(history, pg_url, tmp_path):
    import psycopg

    store_copy.copy_store(history, pg_url)
    with psycopg.connect(pg_url) as conn:
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    with pytest.raises(RefusedError) as caught:
        store_copy.copy_store(history, pg_url)
    assert "already holds a store with data (" in str(caught.value)
    assert f"{events} events" in str(caught.value) and "never merges" in str(caught.value)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == events
    # A database holding other tables is not a destination either.
    other = pg_url  # reuse: drop ours, make a foreign table
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(RefusedError, match=r"already holds tables \(invoices\) and no optout-sync store"):
        store_copy.copy_store(history, other)
    # A SQLite destination that exists is never overwritten.
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"keep me")
    with pytest.raises(RefusedError, match="already exists; store copy writes a new store file and never merges"):
        store_copy.copy_store(pg_url, existing)
    assert existing.read_bytes() == b"keep me"


@pytest.mark.postgresql
def test_a_freshly_migrated_empty_database_is_a_destination(history, pg_url):
    from state.pg_store import PgStore

    PgStore(pg_url).close()  # what a daemon's first start leaves: the schema and the store's identity
    report = store_copy.copy_store(history, pg_url)
    with Store(history) as store:
        source_id = store.store_id()
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchall() == [(source_id,)]
    assert report.tables["store_meta"].rows == 2


@pytest.mark.postgresql
def test_a_row_lost_between_load_and_verify_fails_and_leaves_no_copy(history, pg_url, tmp_path):
    import psycopg

    def lose_an_event(conn):
        conn.execute("DELETE FROM events WHERE seq = 7")

    with pytest.raises(CopyMismatch) as caught:
        store_copy.copy_store(history, pg_url, after_load=lose_an_event)
    events = len(sqlite_tables(history)["events"])
    assert f"events: {events - 1} rows in the copy, {events} in the source" in str(caught.value)
    assert "the copy was rolled back; the destination holds no data" in str(caught.value)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    store_copy.copy_store(history, pg_url)  # the rolled-back destination is accepted afterwards

    def change_a_message(conn):
        conn.execute("UPDATE events SET message = 'tampered' WHERE seq = 3")

    back = tmp_path / "back.db"
    with pytest.raises(CopyMismatch) as caught:
        store_copy.copy_store(pg_url, back, after_load=change_a_message)
    assert f"events: same row count ({events}) but the checksum differs" in str(caught.value)
    assert "the copy was removed; nothing was written at" in str(caught.value)
    assert list(tmp_path.glob("*back.db*")) == []


@pytest.mark.postgresql
def test_verify_finds_a_tampered_copy(history, pg_url):
    import psycopg

    store_copy.copy_store(history, pg_url)
    assert store_copy.verify_copy(history, pg_url).tables["events"].rows > 300
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE suppressions SET reason = 'manual' WHERE address = 'user2@example.com'")
    with pytest.raises(CopyMismatch) as caught:
        store_copy.verify_copy(history, pg_url)
    assert caught.value.differences[0].startswith("suppressions: same row count")
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE events SET ref_seq = NULL WHERE seq = (SELECT min(seq) FROM events WHERE ref_seq IS NOT NULL)")
    with pytest.raises(CopyMismatch) as caught:
        store_copy.verify_copy(history, pg_url)
    assert [d.split(":")[0] for d in caught.value.differences] == ["suppressions", "events"]


def test_the_checksum_tells_null_number_and_text_apart():
    from state.store_copy import digest

    assert len({digest([(None,)]).sha256, digest([(5,)]).sha256, digest([("5",)]).sha256,
                digest([("",)]).sha256}) == 4
    assert digest([("a", "b")]).sha256 != digest([("ab", None)]).sha256
    assert digest([(1,), (2,)]) != digest([(2,), (1,)])


@pytest.mark.postgresql
def test_a_bad_or_unreachable_url_never_shows_its_password(history, tmp_path, pg_cluster):
    for unparsable in (f"postgresql://optout:{PASSWORD}@[::1/db", f"postgresql://optout:{PASSWORD}@host:port/db",
                       f"postgresql://optout:{PASSWORD}@/db?nosuch=1"):
        with pytest.raises(InputError) as caught:
            store_copy.copy_store(history, unparsable)
        assert str(caught.value) == BAD_URL
        with pytest.raises(InputError) as caught:
            store_copy.copy_store(unparsable, history.with_name("back.db"))
        assert str(caught.value) == BAD_URL
    unreachable = f"postgresql://optout:{PASSWORD}@/nosuchdb?host={pg_cluster.socket_dir}"
    with pytest.raises(StoreError) as caught:
        store_copy.copy_store(history, unreachable)
    assert PASSWORD not in str(caught.value) and 'database "nosuchdb" does not exist' in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback


@pytest.mark.postgresql
def test_the_cli_copies_refuses_and_fails_with_its_exit_codes(history, pg_url, tmp_path):
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}],
                              store={"path": str(history)})
    url_file = tmp_path / "pg-url"
    url_file.write_text(with_password(pg_url) + "\n")
    url_file.chmod(0o600)

    done = run_cli("--config", str(settings), "store", "copy", "--to-file", str(url_file), timeout=300)
    assert done.returncode == 0, done.stderr
    events = len(sqlite_tables(history)["events"])
    assert f"  events               {events:>12,} rows" in done.stdout
    sha = store_copy.verify_copy(history, pg_url).events_sha256
    assert f"  event log sha256 {sha}" in done.stdout
    assert "verified: every table's row count and checksum are equal on both sides" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr

    again = run_cli("--config", str(settings), "store", "copy", "--to", with_password(pg_url), timeout=300)
    assert again.returncode == 3 and again.stderr.startswith("refused: ") and "already holds a store" in again.stderr
    assert PASSWORD not in again.stdout + again.stderr and "Traceback" not in again.stderr

    back = tmp_path / "back.db"
    home = run_cli("store", "copy", "--from-file", str(url_file), "--to", str(back), timeout=300)
    assert home.returncode == 0, home.stderr
    assert sqlite_tables(back) == sqlite_tables(history)

    with StoreLock(history, command="run"):
        held = run_cli("--config", str(settings), "store", "copy", "--to", str(tmp_path / "x.db"), timeout=120)
    assert held.returncode == 2 and "both the source and the destination" in held.stderr  # SQLite to SQLite
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    with StoreLock(history, command="run"):
        held = run_cli("--config", str(settings), "store", "copy", "--to", pg_url, timeout=120)
    assert held.returncode == 3 and held.stderr.startswith(f"refused: the store {history} is in use by optout-sync")
    assert len(held.stderr.strip().splitlines()) == 1

    bad = run_cli("store", "copy", "--from", str(history), "--to", f"postgresql://optout:{PASSWORD}@/db?nosuch=1",
                  timeout=120)
    assert bad.returncode == 2 and PASSWORD not in bad.stderr and "cannot be read" in bad.stderr


@pytest.mark.postgresql
def test_the_cli_exits_1_with_one_line_when_the_copy_differs(history, pg_url, monkeypatch):
    import functools

    import psycopg
    from click.testing import CliRunner

    from connector.cli import main

    def lose_an_event(conn):
        conn.execute("DELETE FROM events WHERE seq = 7")

    # The command as it runs, with a row lost between the load and the verification.
    monkeypatch.setattr(store_copy, "copy_store", functools.partial(store_copy.copy_store, after_load=lose_an_event))
    result = CliRunner().invoke(main, ["store", "copy", "--from", str(history), "--to", with_password(pg_url)])
    events = len(sqlite_tables(history)["events"])
    assert result.exit_code == 1
    assert result.stderr == (f"error: the copy does not match its source {history}: events: {events - 1} rows in "
                             f"the copy, {events} in the source; the copy was rolled back; the destination holds "
                             "no data\n")
    assert result.stdout == "" and PASSWORD not in result.output
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 0


@pytest.mark.postgresql
def test_a_writer_holding_the_postgresql_append_lock_makes_the_copy_wait_then_refuse(history, pg_url, tmp_path,
                                                                                    monkeypatch):
    import psycopg

    from state.pg_events import APPEND_LOCK_KEY

    store_copy.copy_store(history, pg_url)
    monkeypatch.setattr(store_copy, "APPEND_LOCK_WAIT", 0.5)
    with psycopg.connect(pg_url) as writer:  # an import's transaction, mid-way
        writer.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
        with pytest.raises(RefusedError, match=r"a writer \(import, lift or a webhook receiver\) kept writing"):
            store_copy.copy_store(pg_url, tmp_path / "back.db")
    assert not (tmp_path / "back.db").exists()
    # While the copy runs, a writer waits for it: its append cannot commit into the middle of the copy.
    monkeypatch.undo()
    blocked = []

    def try_to_write(_conn):
        with psycopg.connect(pg_url) as writer:
            writer.execute("SET lock_timeout = '300ms'")
            try:
                writer.execute("SELECT pg_advisory_xact_lock(%s)", (APPEND_LOCK_KEY,))
            except psycopg.errors.LockNotAvailable:
                blocked.append(True)

    store_copy.copy_store(pg_url, tmp_path / "back.db", after_load=try_to_write)
    assert blocked == [True]


@pytest.mark.postgresql
def test_a_sqlite_destination_made_by_someone_else_during_the_copy_is_left_alone(history, pg_url, tmp_path):
    store_copy.copy_store(history, pg_url)
    back = tmp_path / "back.db"

    def someone_writes_the_destination(_conn):
        back.write_bytes(b"theirs")

    with pytest.raises(RefusedError, match="was created by someone else during the copy; it was left as it is"):
        store_copy.copy_store(pg_url, back, after_load=someone_writes_the_destination)
    assert back.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.glob("*back.db*")] == ["back.db"]  # the temporary copy is gone
