"""Library-level checks of the store's identity, location, lock, WAL limit and backup verification."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace

import pytest
from click.testing import CliRunner

from connector import store_guard
from connector.backup import verify_store_file
from connector.daemon import Daemon
from connector.lock import StoreLock
from connector.server import StatusServer
from connector.settings import validate_settings
from connector.store_identity import StoreIdentity
from state.errors import ConfigError, InputError
from state.schema import SCHEMA_VERSION
from state.store import JOURNAL_SIZE_LIMIT, Store

from .conftest import write_settings


def test_every_store_connection_limits_the_wal_it_keeps(tmp_path):
    with Store(tmp_path / "store.db") as store:
        assert store.conn.execute("PRAGMA journal_size_limit").fetchone()[0] == JOURNAL_SIZE_LIMIT == 64 * 2**20


def test_a_store_is_not_created_when_create_is_false(tmp_path):
    with pytest.raises(Exception, match="cannot open the store"):
        Store(tmp_path / "store.db", create=False)
    assert list(tmp_path.iterdir()) == []


def test_identity_names_a_store_with_another_id_at_the_same_file(tmp_path):
    path = tmp_path / "store.db"
    with Store(path) as store:
        identity = StoreIdentity.of(path, store)
        assert identity.problem() is None
        # The inode of a deleted store can be reused by the next file: the id tells them apart.
        other = replace(identity, store_id="0" * 32)
        assert other.problem() == (f"the store {path} was replaced by another store (id {identity.store_id}, "
                                   f"not {'0' * 32}) while the daemon ran")


def test_a_lost_store_fails_readiness_and_health_with_the_reason(tmp_path):
    settings = validate_settings({"store": {"path": str(tmp_path / "store.db")},
                                  "adapters": [{"name": "a", "type": "memory", "interval": 1}]},
                                 tmp_path / "settings.toml")
    daemon = Daemon(settings)
    with Store(settings.store.path) as store:
        daemon.identity = StoreIdentity.of(settings.store.path, store)
        store.set_checkpoint("a", last_success_at="2999-01-01T00:00:00.000000+00:00")
    server = StatusServer(settings, daemon.metrics, daemon.problems, daemon.stop.is_set,
                          store_problem=lambda: daemon.store_problem)
    assert daemon.store_intact() and server.readiness()[0] == 200
    os.replace(settings.store.path, tmp_path / "moved.db")
    assert daemon.store_intact() is False and daemon.stop.is_set()
    code, _, body = server.readiness()
    assert code == 503 and json.loads(body)["reason"] == (
        f"the store {settings.store.path} was deleted or moved while the daemon ran")
    assert server.health()[0] == 503


def test_the_lock_is_the_same_through_a_symlink_and_a_dotdot_path(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    store = tmp_path / "data" / "store.db"
    (tmp_path / "other" / "link.db").symlink_to(store)
    paths = [store, tmp_path / "other" / "link.db", tmp_path / "other" / ".." / "data" / "store.db"]
    assert {StoreLock(p).path for p in paths} == {tmp_path / "data" / "store.db.lock"}
    with StoreLock(paths[1]):
        assert StoreLock(paths[2]).holder().pid == os.getpid()


def test_an_unwritable_store_folder_is_one_line_exit_2(tmp_path, monkeypatch):
    # Tests run as root, for whom every folder is writable; the access check is what decides.
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}],
                              store={"path": "data/store.db"})
    (tmp_path / "data").mkdir()
    real_access = os.access
    monkeypatch.setattr(store_guard.os, "access",
                        lambda path, mode: False if str(path) == str(tmp_path / "data") else real_access(path, mode))
    with pytest.raises(ConfigError, match="the store's folder .*/data is not writable by this user"):
        store_guard.prepare_store_folder(tmp_path / "data" / "store.db")
    from connector.cli import main

    result = CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert result.output.splitlines() == [
        f"error: the store's folder {tmp_path / 'data'} is not writable by this user; fix its permissions or "
        "check [store] path or OPTOUT_SYNC_STORE__PATH"]
    assert list((tmp_path / "data").iterdir()) == []


def test_only_an_optout_sync_store_passes_for_restore(tmp_path):
    good = tmp_path / "good.db"
    Store(good).close()
    assert verify_store_file(good).schema_version == SCHEMA_VERSION
    assert [p.name for p in tmp_path.iterdir()] == ["good.db"]  # read-only: no -wal or -shm beside it
    newer = tmp_path / "newer.db"
    Store(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 9")
    conn.close()
    with pytest.raises(InputError, match=f"schema version 9 is newer than this program's {SCHEMA_VERSION}"):
        verify_store_file(newer)
    bare = tmp_path / "bare.db"
    conn = sqlite3.connect(bare)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("PRAGMA user_version = 3")
    conn.close()
    with pytest.raises(InputError, match=r"bare.db is not an optout-sync store: it has no store identity"):
        verify_store_file(bare)


def test_truncating_the_wal_empties_it_and_a_reader_in_the_way_makes_it_give_up(tmp_path):
    import sqlite3

    from state.models import OptOut, Page

    path = tmp_path / "store.db"
    with Store(path) as store:
        store.ingest_page("crm", Page([OptOut(f"p{n}@example.com") for n in range(200)]))
        store.promote("crm")
        wal = tmp_path / "store.db-wal"
        assert wal.stat().st_size > 0
        timeout = store.conn.execute("PRAGMA busy_timeout").fetchone()[0]
        assert store.truncate_wal() is True and wal.stat().st_size == 0
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == timeout   # put back
        store.ingest_page("crm", Page([OptOut("late@example.com")]))
        reader = sqlite3.connect(path)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()      # holds a snapshot of the WAL
        try:
            assert store.truncate_wal(busy_ms=10) is False and wal.stat().st_size > 0
        finally:
            reader.rollback()
            reader.close()
        assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == timeout


def test_truncating_the_wal_inside_an_open_transaction_gives_up_without_an_error(tmp_path):
    from state.models import OptOut, Page

    with Store(tmp_path / "store.db") as store:
        store.ingest_page("crm", Page([OptOut("a@example.com")]))
        store.conn.execute("BEGIN")
        store.conn.execute("DELETE FROM staged")
        try:
            assert store.truncate_wal() is False
        finally:
            store.conn.execute("ROLLBACK")
