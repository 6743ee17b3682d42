"""Each sqlite-utils migration makes exactly the schema the old SQL migrations had at that version.

A store made at version N by either path must take the later migrations the same way, so the two
schemas must agree statement by statement, names' letter case included (the comparison of whole stores
in test_schema_migrations.py sees only version 6, after later rebuilds have rewritten the early tables).
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest

from state import schema
from state.store import Store
from tests.test_schema_migrations import _normalised, make_stores, old_store, schema_of


def _migrated_to(conn: sqlite3.Connection, version: int) -> None:
    db = schema._database(conn)
    for number in range(1, version + 1):
        conn.execute("BEGIN IMMEDIATE")
        schema.MIGRATIONS[number - 1](db)
        conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")


@pytest.mark.parametrize("version", make_stores.VERSIONS)
def test_the_migrations_up_to_a_version_make_the_old_sql_schema_of_that_version(tmp_path, version):
    new = sqlite3.connect(tmp_path / "new.db", isolation_level=None)
    _migrated_to(new, version)
    old = old_store(tmp_path / "old.db", version)
    assert schema_of(new) == schema_of(old)
    # The names as the old SQL spelt them (schema_of keeps the letter case, which SQLite ignores).
    master = {name: sql for _t, name, _tb, sql in schema_of(new)["master"]}
    assert "PRIMARY KEY(address,scope)" in master["suppressions"]
    assert "PRIMARY KEY(adapter,address,scope)" in master["staged"]
    assert "applied_seq INTEGER NOT NULL DEFAULT 0" in master["checkpoints"]


GOLDEN = Path(__file__).resolve().parent / "data" / "schema_v6.sql"


def _schema_text(conn: sqlite3.Connection) -> str:
    # _normalised: sqlite-utils versions quote and lay out names their own way; the letter case is kept.
    return "".join(f"{_normalised(sql)};\n" for (sql,) in conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY type, name"))


def test_a_new_store_has_exactly_the_reviewed_schema_text(tmp_path):
    """Schema drift, names' letter case included, shows here first. A new migration rewrites the golden file
    on purpose: `python -c 'from tests.test_schema_versions import write_golden; write_golden()'`."""
    assert schema.SCHEMA_VERSION == 6, "a new schema version: review it and rewrite tests/data/schema_v6.sql"
    with Store(tmp_path / "store.db") as store:
        assert _schema_text(store.conn) == GOLDEN.read_text()


def write_golden() -> None:
    """Rewrite the golden schema from a fresh store (after reviewing a new migration)."""
    with tempfile.TemporaryDirectory() as folder, Store(Path(folder) / "store.db") as store:
        GOLDEN.write_text(_schema_text(store.conn))
