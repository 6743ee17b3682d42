"""`store copy`'s SQLite half, without a PostgreSQL server (issue 14, docs/testing.md).

The mutation run (pyproject.toml [tool.mutmut]) runs no PostgreSQL test, so state/store_copy.py's
code that needs no server is pinned here with plain tests: the table list against a fresh store,
the names allowed into SQL, the table specs read from a store's catalogue, reading and loading a
SQLite store's rows, the row counts, and the proof (fingerprint, differences, CopyMismatch).
tests/test_store_copy.py runs the copies themselves against a PostgreSQL server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import pytest

from state import store_copy
from state.errors import StoreError
from state.store import Store
from state.store_copy import (COPIED_TABLES, IDENTITY_TABLES, CopyMismatch, SqliteTables, TableFacts, TableSpec,
                              _name, _names, differences, digest, fingerprint, table_specs)

# The copied tables of a version-6 store as its catalogue defines them: columns in order, then the key.
SCHEMA_6 = {
    "store_meta": (("key", "value"), ("key",)),
    "suppressions": (("address", "scope", "reason", "origin", "source", "occurred_at", "recorded_at", "details",
                      "seq"), ("address", "scope")),
    "events": (("seq", "recorded_at", "kind", "address", "scope", "reason", "origin", "source", "target", "ref_seq",
                "occurred_at", "legal_basis", "explanation", "message", "details"), ("seq",)),
    "checkpoints": (("adapter", "read_cursor", "cursor_at", "applied_seq", "last_reconcile_at", "last_success_at",
                     "reconcile_requested", "paused", "paused_at"), ("adapter",)),
    "staged": (("adapter", "address", "scope", "reason", "origin", "occurred_at", "details", "staged_at"),
               ("adapter", "address", "scope")),
    "lifts": (("address", "scope", "lifted_at", "seq"), ("address", "scope")),
    "failures": (("id", "adapter", "kind", "address", "scope", "ref_seq", "location", "message", "first_at", "last_at",
                  "attempts", "resolved_at", "value", "dismissed_reason"), ("id",)),
    "runs": (("id", "adapter", "phase", "started_at", "finished_at", "duration_ms", "pulled", "staged", "pushed",
              "failed", "rejected", "paused", "error_class", "error"), ("id",)),
    "snapshots": (("name", "adapter", "reason", "since", "until", "categories", "state", "created_at", "finished_at",
                   "without_contact"), ("name",)),
    "snapshot_contacts": (("snapshot", "contact_id", "address", "occurred_at", "bounce_category", "outcome", "message",
                           "decided_at"), ("snapshot", "contact_id")),
    "inflight": (("adapter", "seq", "marked_at"), ("adapter", "seq")),
    "adapter_memory": (("adapter", "key", "value", "updated_at"), ("adapter", "key")),
    "releases": (("address", "scope", "adapter", "resubscribed_at", "released_at", "seq"),
                 ("address", "scope", "adapter")),
    "removals_due": (("adapter", "lift_seq", "due_at"), ("adapter", "lift_seq")),
    "webhook_receipts": (("adapter", "key", "received_at"), ("adapter", "key")),
}

# SQLite reads these in insertion order by their implicit rowid, which PostgreSQL keeps as row_order.
ROWID_TABLES = {"staged": "row_order", "snapshots": "row_order"}


def spec(name: str) -> TableSpec:
    columns, key = SCHEMA_6[name]
    return TableSpec(name, columns, key, ROWID_TABLES.get(name))


class FakeSource:
    """What SqliteTables.load reads from a PostgreSQL store: rows(spec) in spec.sqlite_columns() order."""

    def __init__(self, rows: dict[str, list[tuple]]):
        self.tables = rows
        self.asked: list[str] = []

    def rows(self, table: TableSpec) -> Iterator[tuple]:
        self.asked.append(table.name)
        yield from self.tables.get(table.name, [])


STAGED = [  # in insertion order (rowid 1, 2, 3), not in key order
    ("list", "zed@example.com", "*", "unsubscribed", "recipient", None, None, "2026-11-01T10:00:00+00:00", 1),
    ("crm", "bob@example.com", "news", "manual", "user", "2026-10-01T00:00:00+00:00", '{"n": 1}',
     "2026-11-01T10:00:01+00:00", 2),
    ("list", "amy@example.com", "*", "hard_bounce", "system", None, None, "2026-11-01T10:00:02+00:00", 3),
]

SOURCE = {
    "store_meta": [("created_at", "2026-01-01T00:00:00.000000+00:00"), ("store_id", "0123456789abcdef")],
    "events": [(seq, f"2026-11-01T10:00:0{seq}+00:00", "noted", f"user{seq}@example.com", "*", None, None, None,
                None, None, None, None, None, "é ✓" if seq == 2 else None, None) for seq in (1, 2, 5)],
    "staged": STAGED,
    "adapter_memory": [("crm", "batch_api", "v4", "2026-11-01T10:00:00+00:00")],
}


def fresh(tmp_path, name: str) -> Store:
    return Store(tmp_path / name)


def loaded(tmp_path, name: str, source: dict[str, list[tuple]] = SOURCE) -> Store:
    store = fresh(tmp_path, name)
    with store.transaction():
        SqliteTables(store.conn, str(store.path)).load(table_specs(store.conn), FakeSource(source))
    return store


# -- the tables and the names -------------------------------------------------------------------


def test_the_copied_tables_are_a_fresh_stores_tables_parents_first(tmp_path):
    with fresh(tmp_path, "s.db") as store:
        specs = table_specs(store.conn)
        tables = {row[0] for row in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert COPIED_TABLES == tuple(SCHEMA_6)
    assert tables == set(COPIED_TABLES) | {"sqlite_sequence"}  # SQLite's own table is not copied
    assert [s.name for s in specs] == list(COPIED_TABLES)
    assert COPIED_TABLES.index("snapshots") < COPIED_TABLES.index("snapshot_contacts")
    assert IDENTITY_TABLES == ("store_meta",)


def test_table_specs_read_each_tables_columns_key_and_rowid_column(tmp_path):
    with fresh(tmp_path, "s.db") as store:
        specs = table_specs(store.conn)
    assert specs == [spec(name) for name in COPIED_TABLES]


def test_a_key_is_read_in_its_declared_order_not_the_columns_order(tmp_path):
    conn = sqlite3.connect(tmp_path / "raw.db")
    for table in COPIED_TABLES:
        if table == "runs":
            conn.execute("CREATE TABLE runs (a TEXT, b TEXT, c TEXT, PRIMARY KEY (c, a))")
        else:
            conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, v TEXT)')
    specs = {s.name: s for s in table_specs(conn)}
    conn.close()
    assert specs["runs"] == TableSpec("runs", ("a", "b", "c"), ("c", "a"), None)
    assert specs["staged"] == TableSpec("staged", ("id", "v"), ("id",), "row_order")


def test_a_column_with_a_name_not_allowed_in_sql_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "raw.db")
    for table in COPIED_TABLES:
        column = '"Bad name"' if table == "lifts" else "v"
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, {column} TEXT)')
    with pytest.raises(StoreError) as caught:
        table_specs(conn)
    conn.close()
    assert str(caught.value) == "store copy met an unexpected name in the store's schema: 'Bad name'"


def test_a_store_with_an_unknown_or_a_missing_table_is_refused(tmp_path):
    steps = [  # (statements, then what the refusal names)
        (["CREATE TABLE extra (x TEXT)"], "unknown: extra"),
        (["CREATE TABLE more (x TEXT)"], "unknown: extra, more"),
        (["DROP TABLE more", "DROP TABLE webhook_receipts", "DROP TABLE removals_due"],
         "unknown: extra; missing: removals_due, webhook_receipts"),
        (["DROP TABLE extra"], "missing: removals_due, webhook_receipts"),
    ]
    with fresh(tmp_path, "s.db") as store:
        for statements, named in steps:
            for statement in statements:
                store.conn.execute(statement)
            with pytest.raises(StoreError) as caught:
                table_specs(store.conn)
            assert str(caught.value) == (f"store copy does not know this store's tables; {named}; is it a store "
                                         "of this version of optout-sync?")


@pytest.mark.parametrize("text", ["events", "snapshot_contacts", "_x", "a1_2", "row_order"])
def test_a_plain_lower_case_name_is_quoted(text):
    assert _name(text) == f'"{text}"'


@pytest.mark.parametrize("text", ["Events", "EVENTS", 'ev"ents', "a b", "1events", "", "a-b", "é", "a;b", "rowid()", "events\n"])
def test_any_other_name_is_refused_and_named(text):
    with pytest.raises(StoreError) as caught:
        _name(text)
    assert str(caught.value) == f"store copy met an unexpected name in the store's schema: {text!r}"


def test_names_are_quoted_and_joined_and_rowid_is_left_bare():
    assert _names(("address", "rowid", "scope")) == '"address", rowid, "scope"'
    assert _names(["seq"]) == '"seq"'
    assert _names(()) == ""
    with pytest.raises(StoreError, match="'Seq'"):
        _names(("seq", "Seq"))


def test_a_rowid_table_adds_its_rowid_column_on_each_side():
    staged, events = spec("staged"), spec("events")
    assert staged.pg_columns() == SCHEMA_6["staged"][0] + ("row_order",)
    assert staged.sqlite_columns() == SCHEMA_6["staged"][0] + ("rowid",)
    assert events.pg_columns() == events.sqlite_columns() == SCHEMA_6["events"][0]


def test_a_copy_mismatch_is_a_store_error_with_its_differences():
    found = ["events: 2 rows in the copy, 3 in the source", "runs: missing in the copy"]
    error = CopyMismatch("the copy x does not match its source y: " + "; ".join(found), found)
    assert isinstance(error, StoreError)
    assert str(error) == ("the copy x does not match its source y: events: 2 rows in the copy, 3 in the source; "
                          "runs: missing in the copy")
    assert error.differences == found


# -- reading and loading a SQLite store --------------------------------------------------------


def test_load_writes_every_row_and_replaces_the_identity(tmp_path):
    source = FakeSource(SOURCE)
    with fresh(tmp_path, "s.db") as store:
        with store.transaction():
            SqliteTables(store.conn, str(store.path)).load(table_specs(store.conn), source)
        assert source.asked == list(COPIED_TABLES)
        assert store.conn.execute("SELECT key, value FROM store_meta ORDER BY key").fetchall() == SOURCE["store_meta"]
        assert store.conn.execute("SELECT * FROM events ORDER BY seq").fetchall() == SOURCE["events"]
        assert store.conn.execute("SELECT *, rowid FROM staged ORDER BY rowid").fetchall() == STAGED
        assert store.conn.execute("SELECT * FROM adapter_memory").fetchall() == SOURCE["adapter_memory"]


def test_load_and_rows_go_through_batches(tmp_path, monkeypatch):
    monkeypatch.setattr(store_copy, "BATCH", 2)  # three staged rows: two batches each way
    with loaded(tmp_path, "s.db") as store:
        tables = SqliteTables(store.conn, str(store.path))
        assert list(tables.rows(spec("staged"))) == [STAGED[1], STAGED[2], STAGED[0]]
        assert list(tables.rows(spec("events"))) == SOURCE["events"]


def test_rows_come_in_key_order_with_every_column_and_the_rowid(tmp_path):
    with loaded(tmp_path, "s.db") as store:
        tables = SqliteTables(store.conn, str(store.path))
        assert tables.where == str(store.path)
        # Key order (adapter, address, scope), each row ending with the rowid it was inserted with.
        assert list(tables.rows(spec("staged"))) == [STAGED[1], STAGED[2], STAGED[0]]
        assert list(tables.rows(spec("events"))) == SOURCE["events"]
        assert list(tables.rows(spec("store_meta"))) == SOURCE["store_meta"]
        assert list(tables.rows(spec("runs"))) == []


def test_holdings_count_the_rows_of_every_table_but_the_identity(tmp_path):
    with fresh(tmp_path, "empty.db") as store:
        assert SqliteTables(store.conn, "empty").holdings(table_specs(store.conn)) == {}
    with loaded(tmp_path, "s.db") as store:
        holdings = SqliteTables(store.conn, "s").holdings(table_specs(store.conn))
    assert holdings == {"events": 3, "staged": 3, "adapter_memory": 1}


# -- the proof ------------------------------------------------------------------------------------


def test_equal_rows_give_equal_fingerprints_and_one_changed_value_differs(tmp_path):
    seen = []
    with loaded(tmp_path, "a.db") as a, loaded(tmp_path, "b.db") as b:
        specs = table_specs(a.conn)
        first = fingerprint(SqliteTables(a.conn, "a"), specs, progress=seen.append)
        second = fingerprint(SqliteTables(b.conn, "b"), specs)
        assert first == second
        assert seen == list(COPIED_TABLES)
        assert list(first) == list(COPIED_TABLES)
        assert first["staged"] == digest([STAGED[1], STAGED[2], STAGED[0]])
        assert first["events"] == digest(SOURCE["events"])
        assert first["runs"] == TableFacts(0, digest([]).sha256)
        assert differences(first, second) == []

        b.conn.execute("UPDATE staged SET reason = 'manual' WHERE address = 'zed@example.com'")
        changed = fingerprint(SqliteTables(b.conn, "b"), specs)
        assert {t for t in COPIED_TABLES if changed[t] != first[t]} == {"staged"}
        assert changed["staged"].rows == 3
        b.conn.execute("UPDATE staged SET reason = 'unsubscribed' WHERE address = 'zed@example.com'")
        assert fingerprint(SqliteTables(b.conn, "b"), specs) == first
        # The rowid is part of the proof: the same rows inserted in another order differ.
        b.conn.execute("UPDATE staged SET rowid = 9 WHERE address = 'zed@example.com'")
        assert fingerprint(SqliteTables(b.conn, "b"), specs)["staged"] != first["staged"]


def test_differences_name_each_table_and_how_it_differs():
    source = {"events": TableFacts(3, "a" * 64), "staged": TableFacts(2, "b" * 64),
              "runs": TableFacts(1, "0123456789abcdef" + "c" * 48), "lifts": TableFacts(0, "d" * 64)}
    copy = {"events": TableFacts(2, "a" * 64), "runs": TableFacts(1, "fedcba9876543210" + "e" * 48),
            "lifts": TableFacts(0, "d" * 64), "extra": TableFacts(5, "f" * 64)}
    assert differences(source, copy) == [
        "events: 2 rows in the copy, 3 in the source",
        "staged: missing in the copy",
        "runs: same row count (1) but the checksum differs (copy fedcba9876543210..., source 0123456789abcdef...)",
    ]
    assert differences(source, dict(source)) == []
    assert differences({}, copy) == []
    # A count that differs is reported as such even when the checksum differs too.
    assert differences({"events": TableFacts(3, "a" * 64)}, {"events": TableFacts(4, "b" * 64)}) == [
        "events: 4 rows in the copy, 3 in the source"]
