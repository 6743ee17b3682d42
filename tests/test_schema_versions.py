"""Each sqlite-utils migration makes exactly the schema the old SQL migrations had at that version.

A store made at version N by either path must take the later migrations the same way, so the two
schemas must agree statement by statement, names' letter case included (the comparison of whole stores
in test_schema_migrations.py sees only version 6, after later rebuilds have rewritten the early tables).
"""

from __future__ import annotations

import sqlite3

import pytest

from state import schema
from tests.test_schema_migrations import make_stores, old_store, schema_of


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
