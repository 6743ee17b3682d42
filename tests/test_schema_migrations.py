"""The migrations (state/schema.py, built with sqlite-utils): the schema they make, the fixture stores of
every earlier version migrating with every row kept, and a failed migration changing nothing."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from state import schema
from state.errors import StoreError
from state.lifts import lift
from state.models import OptOut, Page
from state.store import Store

ROOT = Path(__file__).resolve().parent.parent
STORES = Path(__file__).resolve().parent / "data" / "stores"
_spec = importlib.util.spec_from_file_location("make_stores", STORES / "make_stores.py")
make_stores = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_stores)


def _normalised(sql: str | None) -> str | None:
    # sqlite-utils quotes names ("x" or [x]) and lays statements out its own way; neither changes the schema.
    if sql is None:
        return None
    sql = re.sub(r'["\[\]]', "", sql)
    sql = re.sub(r"\s+", " ", sql)
    return re.sub(r"\s*([(),])\s*", r"\1", sql).strip().rstrip(";")


def schema_of(conn: sqlite3.Connection) -> dict:
    """Everything that makes up a schema: sqlite_master's statements and SQLite's own reading of them."""
    master = sorted((t, n, tbl, _normalised(sql)) for t, n, tbl, sql in conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master"))
    tables = {}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        listed = conn.execute("SELECT type, ncol, wr, strict FROM pragma_table_list(?)", (name,)).fetchone()
        indexes = {}
        for _seq, index, unique, origin, partial in conn.execute(f"PRAGMA index_list('{name}')"):
            indexes[index] = (unique, origin, partial,
                              conn.execute(f"PRAGMA index_xinfo('{index}')").fetchall())
        tables[name] = {
            "list": listed,
            "columns": conn.execute(f"PRAGMA table_xinfo('{name}')").fetchall(),
            "foreign_keys": conn.execute(f"PRAGMA foreign_key_list('{name}')").fetchall(),
            "indexes": indexes,
        }
    return {"master": master, "tables": tables, "user_version": conn.execute("PRAGMA user_version").fetchone()[0]}


def old_store(path: Path, version: int = schema.SCHEMA_VERSION) -> sqlite3.Connection:
    """A store made by the SQL migrations this program ran before sqlite-utils."""
    conn = sqlite3.connect(path, isolation_level=None)
    make_stores.apply_old_migrations(conn, version)
    return conn


def contents(conn: sqlite3.Connection) -> dict[str, list[tuple]]:
    """Every row of every table (sqlite_sequence included), in a stable order."""
    names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    return {n: sorted(conn.execute(f"SELECT * FROM {n}").fetchall(), key=repr) for n in names}


def columns_of(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info('{table}')")]


def fixture_copy(tmp_path: Path, version: int, name: str = "store.db") -> Path:
    target = tmp_path / name
    shutil.copyfile(STORES / f"store_v{version}.db", target)
    return target


def test_a_new_store_has_exactly_the_schema_the_old_sql_migrations_made(tmp_path):
    with Store(tmp_path / "new.db") as store:
        new = schema_of(store.conn)
    # The old SQL went up to version 4; what came later is built by the migrations themselves.
    old_conn = old_store(tmp_path / "old.db", 4)
    schema.migrate(old_conn)
    old = schema_of(old_conn)
    assert new == old
    # What the comparison must see, spelt out: the clauses sqlite-utils cannot write itself.
    tables = new["tables"]
    assert {n for n, t in tables.items() if t["list"][2]} == {
        "suppressions", "lifts", "snapshot_contacts", "store_meta", "inflight", "adapter_memory", "releases",
        "removals_due", "webhook_receipts"}
    assert "AUTOINCREMENT" in next(sql for _t, n, _tb, sql in new["master"] if n == "events")
    partial = {i for t in tables.values() for i, (_u, _o, is_partial, _c) in t["indexes"].items() if is_partial}
    assert partial == {"events_suppressed", "events_by_ref", "failures_by_event"}
    assert "suppressions_by_occurred" not in tables["suppressions"]["indexes"]
    assert tables["checkpoints"]["columns"][3][1:5] == ("applied_seq", "INTEGER", 1, "0")


def test_the_fixture_stores_are_what_make_stores_builds(tmp_path):
    make_stores.main(tmp_path)
    for version in make_stores.VERSIONS:
        committed = sqlite3.connect(f"file:{STORES / f'store_v{version}.db'}?mode=ro", uri=True)
        built = sqlite3.connect(tmp_path / f"store_v{version}.db")
        assert list(committed.iterdump()) == list(built.iterdump())
        assert schema_of(committed) == schema_of(built)
        assert committed.execute("PRAGMA user_version").fetchone()[0] == version
        # Every table of that version holds rows.
        assert all(rows for name, rows in contents(committed).items()), version
        assert (STORES / f"store_v{version}.db").stat().st_size < 32 * 1024
        committed.close()
        built.close()


@pytest.mark.parametrize("version", make_stores.VERSIONS)
def test_an_earlier_store_migrates_with_every_row_kept(tmp_path, version):
    path = fixture_copy(tmp_path, version)
    before_conn = sqlite3.connect(path)
    before = contents(before_conn)
    before_columns = {table: columns_of(before_conn, table) for table in before}
    before_conn.close()

    with Store(path) as store:
        conn = store.conn
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        after = contents(conn)
        for table, rows in before.items():
            assert rows, table
            kept = sorted(conn.execute(f"SELECT {', '.join(before_columns[table])} FROM {table}").fetchall(),
                          key=repr)
            assert kept == rows, table
        # Columns added later are empty on old rows; tables added later are empty, but for the identity.
        assert conn.execute("SELECT count(*) FROM failures WHERE value IS NOT NULL"
                            " OR dismissed_reason IS NOT NULL").fetchone()[0] == 0
        new_tables = set(after) - set(before)
        assert {t for t in new_tables if after[t]} == ({"store_meta"} if version < 4 else set())
        # Migrations 5 (re-subscribe releases) and 6 (webhook receipts) ran on every fixture.
        assert {"releases", "removals_due", "webhook_receipts"} <= new_tables
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 6
        assert re.fullmatch(r"[0-9a-f]{32}", store.store_id())
        with Store(tmp_path / "fresh.db") as fresh:
            assert schema_of(conn) == schema_of(fresh.conn)


def test_a_migrated_store_ingests_pushes_and_lifts(tmp_path, memory_world):
    fixture_copy(tmp_path, 1)  # the oldest: through every migration; memory_world opens tmp_path/store.db
    settings, store, engine, vendors = memory_world([{"name": "hubspot"}, {"name": "csv"}, {"name": "sendgrid"}])
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION

    store.ingest_page("hubspot", Page([OptOut("gus@example.com")], cursor="c-2"))
    store.promote("hubspot")  # eve, staged before the upgrade, and gus
    seqs = {r["address"]: r["seq"] for r in map(store.suppression, ["eve@example.com", "gus@example.com"])}
    assert sorted(seqs.values()) == [10, 11]  # AUTOINCREMENT carried on past the old events
    assert store.checkpoint("hubspot").read_cursor == "c-2"

    reports = engine.sync_once(["sendgrid"])
    assert [r.error for r in reports] == [None]
    # Only what sendgrid had not been sent: not ann (applied before), cat (its own), bob (failed, still open).
    sent = sorted((o.address, o.scope) for call in vendors["sendgrid"].apply_calls for o in call)
    assert sent == [("eve@example.com", "*"), ("gus@example.com", "*")]
    assert store.checkpoint("sendgrid").applied_seq == 11

    lift(store, "bob@example.com", "*", "consent", "asked to hear from us again", "ops")
    assert store.suppression("bob@example.com") is None
    assert [e["kind"] for e in store.events_for("bob@example.com")] == ["suppressed", "failed", "lifted"]
    assert store.conn.execute("SELECT count(*) FROM lifts").fetchone()[0] == 2
    assert store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def _failing_after(step, error=sqlite3.OperationalError("disk I/O error (injected)")):
    def migration(db):
        step(db)
        raise error
    return migration


def _widen_snapshots(db):
    # A change ALTER TABLE cannot make (a column's type), on a table another table's foreign key names.
    db["snapshots"].transform(types={"without_contact": str}, not_null={"since"})


@pytest.mark.parametrize("failing", ["real migration 4", "transform in a later migration"])
def test_a_failing_migration_leaves_the_store_as_it_was(tmp_path, monkeypatch, failing):
    version = 3
    path = fixture_copy(tmp_path, version)
    conn = sqlite3.connect(path)
    before_schema, before_rows = schema_of(conn), contents(conn)
    conn.close()
    with Store(tmp_path / "v4.db") as v4:
        current_schema = schema_of(v4.conn)
    if failing == "real migration 4":
        migrations = [*schema.MIGRATIONS[:3], _failing_after(schema.MIGRATIONS[3])]
    else:  # 4 and every real one after it succeed and stay; one more transforms a table, then fails
        migrations = [*schema.MIGRATIONS, _failing_after(_widen_snapshots)]
        before_schema = before_rows = None
    monkeypatch.setattr(schema, "MIGRATIONS", migrations)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(migrations))

    with pytest.raises(StoreError, match="disk I/O error \\(injected\\)"):
        Store(path)

    conn = sqlite3.connect(path)
    if failing == "real migration 4":
        assert schema_of(conn) == before_schema
        assert contents(conn) == before_rows
    else:
        # The real migrations committed each on its own; nothing of the failing one is there.
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(migrations) - 1
        assert schema_of(conn) == current_schema
        assert conn.execute("SELECT without_contact, typeof(without_contact) FROM snapshots").fetchall() == [
            (1, "integer")]
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_a_transform_migration_rebuilds_a_referenced_table_keeping_rows_and_keys(tmp_path, monkeypatch):
    path = fixture_copy(tmp_path, 2)
    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, _widen_snapshots])
    monkeypatch.setattr(schema, "SCHEMA_VERSION", len(schema.MIGRATIONS))
    with Store(path) as store:
        conn = store.conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
        columns = {r[1]: (r[2], r[3]) for r in conn.execute("PRAGMA table_info('snapshots')")}
        assert columns["without_contact"] == ("TEXT", 1) and columns["since"] == ("TEXT", 1)
        assert conn.execute("SELECT name, without_contact FROM snapshots").fetchall() == [("bounced-2024-03", "1")]
        assert conn.execute("SELECT count(*) FROM snapshot_contacts").fetchone()[0] == 2
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        # The foreign key still binds, to the rebuilt table.
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO snapshot_contacts (snapshot, contact_id, address) VALUES ('nope', '1', 'a@b.c')")


def test_a_migration_that_breaks_a_foreign_key_is_undone(tmp_path, monkeypatch):
    path = fixture_copy(tmp_path, 3)
    conn = sqlite3.connect(path)
    before = contents(conn)
    conn.close()

    def orphan(db):
        db.execute("DELETE FROM snapshots")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS[:3], orphan])
    with pytest.raises(StoreError, match="migration 4 would break a foreign key; the store is unchanged"):
        Store(path)
    conn = sqlite3.connect(path)
    assert contents(conn) == before and conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_a_store_another_process_migrated_meanwhile_is_not_migrated_twice(tmp_path, monkeypatch):
    path = fixture_copy(tmp_path, 3)
    real_database = schema._database

    def racing(conn):
        # Between this process reading version 3 and taking the write lock, another one migrates.
        monkeypatch.setattr(schema, "_database", real_database)
        Store(path).close()
        return real_database(conn)

    monkeypatch.setattr(schema, "_database", racing)
    conn = sqlite3.connect(path, isolation_level=None)
    assert schema.migrate(conn) == schema.SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM store_meta").fetchone()[0] == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


def _loads_sqlite_utils(path: Path) -> bool:
    code = (f"from state.store import Store\nStore({str(path)!r}).close()\n"
            "import sys\nprint('sqlite_utils' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    return result.stdout.strip() == "True"


def test_sqlite_utils_is_imported_only_when_a_migration_is_due(tmp_path):
    old = fixture_copy(tmp_path, 3)
    assert _loads_sqlite_utils(old) is True
    assert _loads_sqlite_utils(old) is False  # now at the current version


def test_a_with_block_of_sqlite_utils_is_a_savepoint_inside_the_migrations_transaction(tmp_path):
    conn = sqlite3.connect(tmp_path / "t.db", isolation_level=None)
    conn.execute("CREATE TABLE t (n INTEGER)")
    nested = schema._NestedConnection(conn)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(ZeroDivisionError):
        with nested:
            conn.execute("INSERT INTO t VALUES (2)")
            1 / 0
    assert conn.in_transaction                      # the failed block undid only its own rows
    assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,)]
    with nested:
        conn.execute("INSERT INTO t VALUES (3)")
    assert conn.in_transaction                      # and a good block commits nothing
    assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (3,)]
    nested.commit()
    assert conn.in_transaction
    conn.execute("ROLLBACK")
    assert conn.execute("SELECT n FROM t").fetchall() == []
    conn.execute("BEGIN")
    conn.execute("INSERT INTO t VALUES (4)")
    with nested:
        conn.execute("INSERT INTO t VALUES (5)")
    conn.execute("COMMIT")
    assert conn.execute("SELECT n FROM t ORDER BY n").fetchall() == [(4,), (5,)]
