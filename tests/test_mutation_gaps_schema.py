"""The store's file and schema edges the complete mutation run of 2026-11-28 found without a test.

A store newer than the program, a store in folders that do not exist yet, and sqlite-utils giving a
CREATE TABLE of a shape the WITHOUT ROWID clause cannot be added to: each is refused or handled, and
worded whole.
"""

from __future__ import annotations

import sqlite3

import pytest

from state.errors import StoreError
from state.schema import SCHEMA_VERSION, _create_without_rowid
from state.store import Store


def newer_store_refusal(folder) -> StoreError:
    """The error of opening a SQLite store in `folder` whose schema is one version newer than this program's."""
    path = folder / "store.db"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError) as caught:
        Store(path)
    return caught.value


def test_a_store_newer_than_this_program_is_refused_worded_whole(tmp_path):
    assert str(newer_store_refusal(tmp_path)) == (f"the store has schema version {SCHEMA_VERSION + 1}, newer than this program's "
                                 f"{SCHEMA_VERSION}; upgrade optout-sync")


def test_a_store_in_folders_that_do_not_exist_yet_makes_them(tmp_path):
    path = tmp_path / "a" / "b" / "store.db"
    store = Store(path)
    try:
        assert store.count_suppressions() == 0
    finally:
        store.close()
    assert path.is_file() and (path.stat().st_mode & 0o777) == 0o600


def test_a_create_table_of_an_unexpected_shape_is_refused_worded_whole():
    class Sketchy:
        def create_table_sql(self, name, columns, **options):
            return "CREATE TABLE t (a TEXT) STRICT;"

    with pytest.raises(StoreError) as caught:
        _create_without_rowid(Sketchy(), "t", {"a": str})
    assert str(caught.value) == "unexpected CREATE TABLE from sqlite-utils for t: 'CREATE TABLE t (a TEXT) STRICT;'"


def test_opening_without_create_reads_an_existing_store_and_never_makes_a_missing_one(tmp_path, monkeypatch):
    path = tmp_path / "store.db"
    Store(path).close()
    store = Store(path, create=False)
    try:
        assert store.count_suppressions() == 0
    finally:
        store.close()
    monkeypatch.chdir(tmp_path)  # a URI read as a plain name would be made relative to here
    for missing in (tmp_path / "missing.db", tmp_path / "gone" / "store.db"):
        with pytest.raises(StoreError, match="cannot open the store"):
            Store(missing, create=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]


def test_a_store_needing_a_migration_without_sqlite_utils_says_to_reinstall(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sqlite_utils", None)  # `import sqlite_utils` raises ImportError
    with pytest.raises(StoreError) as caught:
        Store(tmp_path / "store.db")
    assert str(caught.value).startswith(f"the store needs a migration to schema version {SCHEMA_VERSION} and "
                                        "sqlite-utils cannot be imported (")
    assert str(caught.value).endswith("); reinstall optout-sync with its dependencies")
