"""The store misbehaving: locked, read-only, disk full. Clear errors, exit 1, no partial state, retries."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from connector.daemon import Daemon
from connector.settings import validate_settings
from state.errors import StoreError
from state.store import Store

from . import memory_adapter
from .conftest import write_settings
from .process import run_cli, wait_for


def folder_world(tmp_path, **store):
    (tmp_path / "inbox").mkdir()
    (tmp_path / "inbox" / "a.csv").write_text("email\none@example.com\ntwo@example.com\n")
    return write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "settle_seconds": 0},
        {"name": "sink", "type": "csv_file", "path": "out.csv"},
    ], store={"path": "store.db", **store})


def counts(path):
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT (SELECT count(*) FROM suppressions), (SELECT count(*) FROM events),"
                            " (SELECT count(*) FROM staged), (SELECT read_cursor IS NOT NULL FROM checkpoints"
                            " WHERE adapter = 'inbox')").fetchone()
    finally:
        conn.close()


def test_a_store_locked_by_another_process_fails_the_one_shot_sync_cleanly(tmp_path):
    settings = folder_world(tmp_path, busy_timeout="300ms")
    assert run_cli("--config", str(settings), "check").returncode == 0
    Store(tmp_path / "store.db").close()
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = run_cli("--config", str(settings), "sync", "--once")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1
    assert "database is locked" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert counts(tmp_path / "store.db")[:3] == (0, 0, 0)

    again = run_cli("--config", str(settings), "sync", "--once")
    assert again.returncode == 0, again.stderr
    assert counts(tmp_path / "store.db")[0] == 2


def test_a_read_only_store_fails_the_one_shot_sync_cleanly(tmp_path, monkeypatch):
    settings = folder_world(tmp_path)
    assert run_cli("--config", str(settings), "sync", "--once").returncode == 0
    (tmp_path / "inbox" / "b.csv").write_text("email\nthree@example.com\n")
    before = counts(tmp_path / "store.db")
    if os.geteuid() != 0:
        os.chmod(tmp_path / "store.db", 0o444)
        try:
            result = run_cli("--config", str(settings), "sync", "--once")
        finally:
            os.chmod(tmp_path / "store.db", 0o600)
        output, code = result.stdout + result.stderr, result.returncode
    else:
        # root ignores file modes; SQLite's own read-only switch stands in for the read-only file.
        from click.testing import CliRunner
        from connector import commands
        from connector.cli import main

        real_open = commands.open_store

        def read_only_store(settings, **kwargs):
            store = real_open(settings, **kwargs)
            store.conn.execute("PRAGMA query_only = ON")
            return store

        monkeypatch.setattr(commands, "open_store", read_only_store)
        result = CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"])
        output, code = result.output, result.exit_code
    assert code == 1, output
    assert "cannot write to the store" in output and "Traceback" not in output
    assert counts(tmp_path / "store.db") == before


def test_disk_full_keeps_nothing_partial_and_the_daemon_retries_until_it_clears(tmp_path, monkeypatch):
    raw = {"store": {"path": str(tmp_path / "store.db")},
           "adapters": [{"name": "a", "type": "memory"}, {"name": "b", "type": "memory"}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    for adapter in settings.adapters:
        adapter.interval = 0.1  # below the settings' 1 s floor on purpose: in-process, to keep the test quick
    full = threading.Event()
    full.set()
    real_write = Store._write

    def write(self, sql, params=()):
        if full.is_set() and sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            raise StoreError(f"cannot write to the store {self.path}: database or disk is full")
        return real_write(self, sql, params)

    monkeypatch.setattr(Store, "_write", write)
    daemon = Daemon(settings, grace=1.0)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    thread.start()
    try:
        wait_for(lambda: "a" in memory_adapter.VENDORS and "b" in memory_adapter.VENDORS)
        from state.models import OptOut
        memory_adapter.VENDORS["a"].opt_out(OptOut("x@example.com"))
        import time
        time.sleep(1.0)                                         # several failing cycles
        assert counts(tmp_path / "store.db")[:3] == (0, 0, 0)   # nothing half-written
        full.clear()                                            # space is freed
        wait_for(lambda: ("x@example.com", "*") in memory_adapter.VENDORS["b"].held, timeout=10)
    finally:
        daemon.request_stop()
        thread.join(5)
    assert codes == [0]


def test_a_really_full_disk_fails_the_one_shot_sync_with_exit_1_and_nothing_partial(tmp_path, monkeypatch):
    """SQLite's own SQLITE_FULL (max_page_count caps the file), not a simulated error."""
    from click.testing import CliRunner

    from connector import commands
    from connector.cli import main

    settings = folder_world(tmp_path)
    (tmp_path / "inbox" / "a.csv").write_text("email\n" + "".join(f"p{i}@example.com\n" for i in range(3000)))
    Store(tmp_path / "store.db").close()
    real_open = commands.open_store

    def nearly_full(settings, **kwargs):
        store = real_open(settings, **kwargs)
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        return store

    monkeypatch.setattr(commands, "open_store", nearly_full)
    result = CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "cannot write to the store" in result.output and "database or disk is full" in result.output
    assert "Traceback" not in result.output
    assert counts(tmp_path / "store.db") == (0, 0, 0, 0)   # no opt-out, event, staged row or cursor
    monkeypatch.setattr(commands, "open_store", real_open)  # space is freed
    assert CliRunner().invoke(main, ["--config", str(settings), "sync", "--once"]).exit_code == 0
    assert counts(tmp_path / "store.db")[0] == 3000


def test_the_daemon_keeps_retrying_a_store_locked_by_another_process_and_catches_up(tmp_path):
    import time

    from state.models import OptOut

    raw = {"store": {"path": str(tmp_path / "store.db"), "busy_timeout": "100ms"},
           "adapters": [{"name": "a", "type": "memory"}, {"name": "b", "type": "memory"}]}
    settings = validate_settings(raw, tmp_path / "settings.toml")
    for adapter in settings.adapters:
        adapter.interval = 0.1  # below the settings' 1 s floor on purpose: in-process, to keep the test quick
    Store(tmp_path / "store.db").close()
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    daemon = Daemon(settings, grace=1.0)
    codes = []
    thread = threading.Thread(target=lambda: codes.append(daemon.run()), daemon=True)
    try:
        thread.start()
        wait_for(lambda: "a" in memory_adapter.VENDORS and "b" in memory_adapter.VENDORS)
        memory_adapter.VENDORS["a"].opt_out(OptOut("x@example.com"))
        time.sleep(1.0)                                          # cycles fail on the lock meanwhile
        assert thread.is_alive() and ("x@example.com", "*") not in memory_adapter.VENDORS["b"].held
        holder.execute("ROLLBACK")                               # the other process lets go
        wait_for(lambda: ("x@example.com", "*") in memory_adapter.VENDORS["b"].held, timeout=15)
    finally:
        holder.close()
        daemon.request_stop()
        thread.join(5)
    assert codes == [0]
