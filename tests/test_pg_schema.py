"""The PostgreSQL schema (state/pg_schema.py): its migrations, and that it means what SQLite's means."""

from __future__ import annotations

import re
import shutil
import sqlite3
import threading
import uuid
from pathlib import Path

import pytest

from state import pg_schema, schema
from state.errors import StoreError
from state.store import Store

from .test_mutation_gaps_schema import newer_store_refusal


def connect(url: str, **options):
    import psycopg

    return psycopg.connect(url, autocommit=True, **options)


def test_a_fresh_database_is_migrated_to_the_sqlite_schema_version_with_an_identity(pg_url):
    with connect(pg_url) as conn:
        assert pg_schema.current_version(conn) == 0
        assert pg_schema.migrate(conn) == schema.SCHEMA_VERSION == pg_schema.SCHEMA_VERSION
        assert pg_schema.current_version(conn) == schema.SCHEMA_VERSION
        meta = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
    assert re.fullmatch(r"[0-9a-f]{32}", meta["store_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.000000\+00:00", meta["created_at"])


def test_migrating_twice_changes_nothing(pg_url):
    with connect(pg_url) as conn:
        pg_schema.migrate(conn)
        before = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
        assert pg_schema.migrate(conn) == pg_schema.SCHEMA_VERSION
        assert conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone() == before
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(pg_schema.SCHEMA_VERSION,)]


def test_a_connection_that_is_not_autocommit_is_migrated_and_left_idle(pg_url):
    import psycopg

    with psycopg.connect(pg_url) as conn:
        assert pg_schema.migrate(conn) == pg_schema.SCHEMA_VERSION
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    with connect(pg_url) as conn:
        assert pg_schema.current_version(conn) == pg_schema.SCHEMA_VERSION


def test_a_newer_database_is_refused_with_the_message_sqlite_gives(pg_url, tmp_path):
    newer = schema.SCHEMA_VERSION + 1
    from_sqlite = newer_store_refusal(tmp_path)

    with connect(pg_url) as conn:
        pg_schema.migrate(conn)
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (newer,))
        with pytest.raises(StoreError) as from_pg:
            pg_schema.migrate(conn)
    assert str(from_pg.value) == str(from_sqlite) == (
        f"the store has schema version {newer}, newer than this program's {schema.SCHEMA_VERSION}; "
        "upgrade optout-sync")


def test_a_migration_that_fails_half_way_leaves_the_database_as_it_was(pg_url, monkeypatch):
    def baseline_then_fail(conn):
        pg_schema.m6_baseline(conn)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pg_schema, "MIGRATIONS", [(6, baseline_then_fail)])
    with connect(pg_url) as conn:
        with pytest.raises(RuntimeError):
            pg_schema.migrate(conn)
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_daemons_starting_together_migrate_once(pg_url):
    results, errors = [], []

    def start():
        try:
            with connect(pg_url) as conn:
                results.append(pg_schema.migrate(conn))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [pg_schema.SCHEMA_VERSION] * 4
    with connect(pg_url) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(pg_schema.SCHEMA_VERSION,)]
        assert conn.execute("SELECT count(*) FROM store_meta").fetchone()[0] == 2


# -- the two schemas, compared from the databases themselves ---------------------------------

SQLITE_TYPES = {"TEXT": "text", "INTEGER": "bigint"}


def _predicate(text: str | None) -> str | None:
    """A partial index's WHERE as both databases print it, made comparable."""
    if text is None:
        return None
    return " ".join(text.replace("::text", "").replace("(", " ").replace(")", " ").split())


def sqlite_schema(path) -> dict:
    conn = sqlite3.connect(path)
    tables = {}
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                        " AND name NOT LIKE 'sqlite_%'")]
    for table in names:
        info = conn.execute(f"PRAGMA table_info({table})").fetchall()
        columns = {name: (SQLITE_TYPES[type_], not (notnull or pk), default)
                   for _cid, name, type_, notnull, default, pk in info}
        pk = [name for *_, name, _t, _n, _d, pk in sorted(info, key=lambda r: r[5]) if pk]
        indexes = {}
        for _seq, name, unique, origin, partial in conn.execute(f"PRAGMA index_list({table})"):
            if origin != "c":
                continue  # the primary key's own index
            cols = [r[2] for r in conn.execute(f"PRAGMA index_info({name})")]
            sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
            where = sql.split(" WHERE ", 1)[1] if partial else None
            indexes[name] = (bool(unique), cols, _predicate(where))
        fks = sorted((r[2], r[3], r[4]) for r in conn.execute(f"PRAGMA foreign_key_list({table})"))
        tables[table] = {"columns": columns, "pk": pk, "indexes": indexes, "fks": fks}
    conn.close()
    return tables


def pg_schema_of(conn) -> tuple[dict, dict]:
    """The same description of a PostgreSQL database, and each text column's collation."""
    tables, collations = {}, {}
    names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE"
                                        " table_schema = current_schema() AND table_type = 'BASE TABLE'")]
    for table in names:
        if table in pg_schema.POSTGRESQL_ONLY_TABLES:
            continue
        columns = {}
        for name, type_, nullable, default, identity, collation in conn.execute(
                "SELECT column_name, data_type, is_nullable, column_default, is_identity, collation_name"
                " FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
                (table,)):
            if name == pg_schema.IMPLICIT_ROWID_COLUMNS.get(table):
                assert identity == "YES" and nullable == "NO", (table, name)
                continue
            columns[name] = (type_, nullable == "YES", default)
            if type_ == "text":
                collations[(table, name)] = collation
        pk = [r[0] for r in conn.execute(
            "SELECT a.attname FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, n) ON true"
            " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
            " WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY k.n", (table,))]
        indexes = {}
        for name, unique, cols, where in conn.execute(
                "SELECT c.relname, i.indisunique,"
                " ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(attnum, n)"
                "       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.n),"
                " pg_get_expr(i.indpred, i.indrelid)"
                " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                " WHERE i.indrelid = %s::regclass AND NOT i.indisprimary", (table,)):
            indexes[name] = (unique, list(cols), _predicate(where))
        fks = sorted(conn.execute(
            "SELECT confrelid::regclass::text, a.attname, fa.attname FROM pg_constraint c"
            " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]"
            " JOIN pg_attribute fa ON fa.attrelid = c.confrelid AND fa.attnum = c.confkey[1]"
            " WHERE c.conrelid = %s::regclass AND c.contype = 'f'", (table,)).fetchall())
        tables[table] = {"columns": columns, "pk": pk, "indexes": indexes, "fks": [tuple(f) for f in fks]}
    return tables, collations


def test_every_sqlite_table_exists_on_postgresql_with_the_same_columns_keys_and_indexes(pg_url, tmp_path):
    Store(tmp_path / "store.db").close()
    expected = sqlite_schema(tmp_path / "store.db")
    with connect(pg_url) as conn:
        pg_schema.migrate(conn)
        actual, collations = pg_schema_of(conn)
    assert sorted(actual) == sorted(expected)
    assert set(pg_schema.POSTGRESQL_ONLY_TABLES) == {"schema_version", "leases"}
    for table in expected:
        assert actual[table] == expected[table], table
    # Text compares and sorts by code point on both (SQLite's BINARY): the merge diff relies on it.
    assert collations and set(collations.values()) == {"C"}, collations
    with connect(pg_url) as conn:
        # AUTOINCREMENT's promise: no INSERT picks a seq of its own.
        assert conn.execute("SELECT is_identity, identity_generation FROM information_schema.columns"
                            " WHERE table_name = 'events' AND column_name = 'seq'").fetchone() == ("YES", "ALWAYS")


# -- rows: a SQLite store's rows copied in read back the same, in the same order ---------------

STORES = Path(__file__).resolve().parent / "data" / "stores"
# Copied parents first (snapshot_contacts references snapshots).
COPY_ORDER = ["snapshots"]


@pytest.fixture
def pg_icu_url(pg_cluster):
    """A database whose default collation is ICU's en-US, where 'a' < 'B' < '_' would not be code point order."""
    import psycopg

    name = "t_icu_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _fill_every_table(path: Path) -> None:
    """The v4 fixture store's story, plus rows in the tables it lacks and addresses that sort apart."""
    conn = sqlite3.connect(path)
    with conn:
        when = "2026-03-01T10:00:00.000000+00:00"
        for address in ("Zed@example.com", "_under@example.com", "zoë@example.com", "ann+x@example.com"):
            seq = conn.execute("INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source,"
                               " details) VALUES (?, 'suppressed', ?, '*', 'unsubscribed', 'recipient', 'crm',"
                               " '{\"a\":[1,2]}')", (when, address)).lastrowid
            conn.execute("INSERT INTO suppressions (address, scope, reason, origin, source, recorded_at, details, seq)"
                         " VALUES (?, '*', 'unsubscribed', 'recipient', 'crm', ?, '{\"a\":[1,2]}', ?)",
                         (address, when, seq))
        conn.execute("INSERT INTO releases VALUES ('ann@example.com', '*', 'sendgrid', ?, ?, 1)", (when, when))
        conn.execute("INSERT INTO removals_due VALUES ('sendgrid', 1, ?)", (when,))
        conn.execute("INSERT INTO webhook_receipts VALUES ('sendgrid', 'e:abc', ?), ('sendgrid', 'n:Xyz', ?)",
                     (when, when))
    conn.close()


def _primary_key(conn: sqlite3.Connection, table: str) -> list[str]:
    info = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]


def test_a_sqlite_stores_rows_copied_in_read_back_identical_and_in_the_same_order(pg_icu_url, tmp_path):
    from state import pg_events

    path = tmp_path / "store.db"
    shutil.copy(STORES / "store_v4.db", path)
    Store(path).close()  # migrated to the current version
    _fill_every_table(path)
    lite = sqlite3.connect(path)
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                         " AND name NOT LIKE 'sqlite_%'")]
    tables.sort(key=lambda t: (t not in COPY_ORDER, t))
    with connect(pg_icu_url) as conn:
        pg_schema.migrate(conn)
        conn.execute("DELETE FROM store_meta")  # the copy brings the store's own identity
        for table in tables:
            columns = [r[1] for r in lite.execute(f"PRAGMA table_info({table})")]
            selected = list(columns)
            if table in pg_schema.IMPLICIT_ROWID_COLUMNS:  # the insertion order the store reads them in
                columns.append(pg_schema.IMPLICIT_ROWID_COLUMNS[table])
                selected.append("rowid")
            with conn.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in lite.execute(f"SELECT {', '.join(selected)} FROM {table}"):
                    copy.write_row(row)
        pg_schema.reset_identities(conn)

        for table in tables:
            columns = ", ".join(r[1] for r in lite.execute(f"PRAGMA table_info({table})"))
            order = ", ".join(_primary_key(lite, table))
            expected = lite.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall()
            assert expected, f"{table} has no rows to compare"
            assert conn.execute(f"SELECT {columns} FROM {table} ORDER BY {order}").fetchall() == expected, table

        # The identities go on after the copied ids, not from 1.
        last_seq = lite.execute("SELECT max(seq) FROM events").fetchone()[0]
        with conn.transaction():
            assert pg_events.append(conn, [{"recorded_at": "x", "kind": "observed", "address": "a", "scope": "*"}]) \
                == [last_seq + 1]
        last_failure = lite.execute("SELECT max(id) FROM failures").fetchone()[0]
        assert conn.execute("INSERT INTO failures (adapter, kind, message, first_at, last_at)"
                            " VALUES ('x', 'permanent', 'm', 't', 't') RETURNING id").fetchone()[0] == last_failure + 1
        last_staged = lite.execute("SELECT max(rowid) FROM staged").fetchone()[0]
        assert conn.execute("SELECT max(row_order) FROM staged").fetchone()[0] == last_staged
        assert conn.execute("INSERT INTO staged (adapter, address, scope, reason, origin, staged_at)"
                            " VALUES ('x', 'a', '*', 'unsubscribed', 'user', 't') RETURNING row_order").fetchone()[0] \
            == last_staged + 1
    lite.close()
