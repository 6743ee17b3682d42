"""End-to-end: the store's identity, who may create it, its location, its lock, and the WAL.

Every test runs the real `optout-sync` process. SQLite only: each tests the store file (its lock, WAL,
backup and restore, the file deleted or replaced under the daemon), which PostgreSQL does not have.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from state.schema import SCHEMA_VERSION

from .process import Daemon, command, run_cli, wait_for
from .test_e2e_daemon import drop, folder_settings, sink_addresses

pytestmark = pytest.mark.e2e


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if " ERROR " in line or '"level": "error"' in line]


def store_count(path: Path) -> int:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM suppressions").fetchone()[0]
    finally:
        conn.close()


# -- identity -------------------------------------------------------------------------


def started(tmp_path: Path, daemon: Daemon) -> None:
    """Wait until every worker has cycled (and so opened the store) with one opt-out through."""
    drop(tmp_path / "inbox", "first.csv", ["first@example.com,,"])
    wait_for(lambda: sink_addresses(tmp_path) == {"first@example.com"})


def test_deleting_the_store_under_the_daemon_stops_it_with_one_error_and_creates_nothing(tmp_path):
    settings = folder_settings(tmp_path)
    store = tmp_path / "data" / "store.db"
    with Daemon(settings) as daemon:
        started(tmp_path, daemon)
        assert run_cli("--config", str(settings), "backup", str(tmp_path / "backup.db")).returncode == 0
        for suffix in ("", "-wal", "-shm"):
            store.with_name(store.name + suffix).unlink(missing_ok=True)
        drop(tmp_path / "inbox", "second.csv", ["second@example.com,,"])
        assert daemon.proc.wait(10) == 1
    errors = error_lines(daemon.log())
    assert len(errors) == 1, daemon.log()
    assert "store_lost" in errors[0] and str(store) in errors[0] and "deleted or moved" in errors[0]
    assert not store.exists(), "a new store was created at the path"
    assert "second@example.com" not in sink_addresses(tmp_path)
    # A restart (systemd's Restart=on-failure) must not start over with an empty store.
    again = run_cli("--config", str(settings), "run", timeout=20)
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1
    assert f"the store {store} was deleted or replaced while a daemon ran (see {store}.lost)" in again.stderr
    assert not store.exists()
    assert run_cli("--config", str(settings), "restore", str(tmp_path / "backup.db")).returncode == 0
    with Daemon(settings) as daemon:
        wait_for(lambda: sink_addresses(tmp_path) == {"first@example.com", "second@example.com"})
        assert daemon.terminate() == 0


def test_replacing_the_store_under_the_daemon_stops_it_and_leaves_the_other_store_unfilled(tmp_path):
    settings = folder_settings(tmp_path)
    store = tmp_path / "data" / "store.db"
    other = tmp_path / "other"
    other.mkdir()
    other_settings = folder_settings(other)
    assert run_cli("--config", str(other_settings), "sync", "--once").returncode == 0  # an empty store
    with Daemon(settings) as daemon:
        started(tmp_path, daemon)
        os.replace(other / "data" / "store.db", store)
        drop(tmp_path / "inbox", "second.csv", ["second@example.com,,"])
        assert daemon.proc.wait(10) == 1
    errors = error_lines(daemon.log())
    assert len(errors) == 1, daemon.log()
    assert "store_lost" in errors[0] and str(store) in errors[0] and "replaced" in errors[0]
    assert store_count(store) == 0, "the daemon re-read its sources into the replacement store"
    again = run_cli("--config", str(settings), "run", timeout=20)
    assert again.returncode == 2 and f"(see {store}.lost)" in again.stderr
    assert store_count(store) == 0


# -- who may create a store ---------------------------------------------------------


NON_CREATING = [
    ["status"], ["status", "--json"], ["history", "ann@example.com"], ["export"],
    ["export", "-o", "{tmp}/out.csv"], ["failures"],
    ["lift", "ann@example.com", "--scope", "*", "--legal-basis", "consent", "--explanation", "x"],
    ["approve", "inbox", "--count", "1"], ["reconcile", "inbox"], ["reconcile", "inbox", "--dry-run"],
    ["cleanup", "hub", "--reason", "hard_bounce"], ["backup", "{tmp}/backup.db"],
]


@pytest.mark.parametrize("args", NON_CREATING, ids=lambda a: " ".join(a[:2]))
def test_commands_that_read_the_store_name_a_missing_one_exit_2_and_create_nothing(tmp_path, args):
    settings = folder_settings(tmp_path)
    settings.write_text(settings.read_text() + '[[adapters]]\nname = "hub"\ntype = "hubspot"\n'
                        'token = "pat-na1-00000000-0000-0000-0000-000000000000"\n')
    settings.chmod(0o600)  # it holds a (dummy) secret
    before = files_under(tmp_path)
    result = run_cli("--config", str(settings), *[a.format(tmp=tmp_path) for a in args])
    store = tmp_path / "data" / "store.db"
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"error: no store at {store}; check [store] path or OPTOUT_SYNC_STORE__PATH (only run, sync, import "
        "and restore create a store)"]
    assert files_under(tmp_path) == before


def test_check_before_the_first_run_reports_the_missing_store_runs_every_adapter_check_and_creates_nothing(tmp_path):
    settings = folder_settings(tmp_path)
    before = files_under(tmp_path)
    result = run_cli("--config", str(settings), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no store yet at {tmp_path / 'data' / 'store.db'}; `run` will create it" in result.stdout
    assert "  inbox: ok" in result.stdout and "  sink: ok" in result.stdout
    assert files_under(tmp_path) == before


def test_run_creates_the_store_folder_0700_and_says_it_created_the_store(tmp_path):
    settings = folder_settings(tmp_path)
    with Daemon(settings) as daemon:
        wait_for(lambda: "started" in daemon.log())
        assert daemon.terminate() == 0
    assert oct((tmp_path / "data").stat().st_mode & 0o777) == "0o700"
    assert f"store_created path={tmp_path / 'data' / 'store.db'}" in daemon.log()


# -- the store's location -------------------------------------------------------------


@pytest.mark.parametrize("command", [["run"], ["sync", "--once"]])
@pytest.mark.parametrize("case", ["deeper_missing", "folder_is_a_file", "lock_cannot_be_made"])
def test_an_unusable_store_location_is_one_line_exit_2(tmp_path, command, case):
    settings = folder_settings(tmp_path)
    env = {}
    if case == "deeper_missing":
        env["OPTOUT_SYNC_STORE__PATH"] = str(tmp_path / "typo" / "data" / "store.db")
        named, problem = tmp_path / "typo" / "data", "does not exist, nor does its parent"
    elif case == "folder_is_a_file":
        (tmp_path / "data").write_text("not a folder")
        named, problem = tmp_path / "data", "is not a folder"
    else:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "store.db.lock").mkdir()  # the lock file cannot be opened
        named, problem = tmp_path / "data" / "store.db.lock", "cannot create the store's lock file"
    before = files_under(tmp_path)
    result = run_cli("--config", str(settings), *command, env=env, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(named) in lines[0] and problem in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert files_under(tmp_path) == before


# -- the lock on the real path ---------------------------------------------------------


@pytest.mark.parametrize("spelling", ["symlink", "dotdot"])
def test_a_second_daemon_reaching_the_store_another_way_refuses(tmp_path, spelling):
    settings = folder_settings(tmp_path)
    store = tmp_path / "data" / "store.db"
    with Daemon(settings) as first:
        wait_for(lambda: "started" in first.log())
        second_folder = tmp_path / "second"
        second_folder.mkdir()
        if spelling == "symlink":
            (second_folder / "link.db").symlink_to(store)
            other_path = second_folder / "link.db"
        else:
            other_path = second_folder / ".." / "data" / "store.db"
        second = run_cli("--config", str(settings), "run", env={"OPTOUT_SYNC_STORE__PATH": str(other_path)},
                         timeout=20)
        assert second.returncode == 1, second.stdout + second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1 and "already syncing the store" in lines[0] and f"pid {first.proc.pid}" in lines[0]
        assert first.proc.poll() is None
        status = run_cli("--config", str(settings), "status", "--json",
                         env={"OPTOUT_SYNC_STORE__PATH": str(other_path)})
        assert json.loads(status.stdout)["daemon"]["pid"] == first.proc.pid
        assert first.terminate() == 0


# -- status ---------------------------------------------------------------------------


def test_status_shows_the_daemons_pid_start_time_and_each_adapters_last_reconcile(tmp_path):
    settings = folder_settings(tmp_path)
    with Daemon(settings) as daemon:
        started(tmp_path, daemon)
        before = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
        # No reconcile has run yet, so none is shown (the schedule's start is not a reconcile).
        assert all(row["last_reconcile_at"] is None for row in before["adapters"]), before
        assert "last reconcile never" in run_cli("--config", str(settings), "status").stdout
        for row in before["adapters"]:
            run_cli("--config", str(settings), "reconcile", row["adapter"])   # asks the daemon
        wait_for(lambda: all(row["last_reconcile_at"] for row in json.loads(
            run_cli("--config", str(settings), "status", "--json").stdout)["adapters"]), timeout=30)
        data = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
        human = run_cli("--config", str(settings), "status").stdout
        assert daemon.terminate() == 0
    holder = data["daemon"]
    assert data["daemon_running"] is True and holder["pid"] == daemon.proc.pid and holder["command"] == "run"
    since = holder["started_at"]
    assert time.time() - 60 < time.mktime(time.strptime(since[:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    assert f"daemon running (pid {daemon.proc.pid}, since {since})" in human.splitlines()[0]
    for row in data["adapters"]:
        assert row["last_reconcile_at"], row
        assert f"last reconcile {row['last_reconcile_at']}" in human
    after = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
    assert after["daemon_running"] is False and after["daemon"] is None
    assert "daemon not running" in run_cli("--config", str(settings), "status").stdout


# -- check ----------------------------------------------------------------------------


def test_check_reports_the_store_and_the_daemon_and_changes_nothing(tmp_path):
    settings = folder_settings(tmp_path)
    assert run_cli("--config", str(settings), "sync", "--once").returncode == 0
    before = files_under(tmp_path)
    result = run_cli("--config", str(settings), "check")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "store: ok" in result.stdout and f"schema version {SCHEMA_VERSION}" in result.stdout and "can be taken" in result.stdout
    assert files_under(tmp_path) == before, "check created a file (a -wal or -shm?)"
    with Daemon(settings) as daemon:
        wait_for(lambda: "started" in daemon.log())
        result = run_cli("--config", str(settings), "check")
        assert result.returncode == 0
        assert f"a process holds the store's lock (daemon, pid {daemon.proc.pid}" in result.stdout
        assert daemon.terminate() == 0


def test_check_calls_a_store_from_a_newer_version_an_error_and_still_checks_every_adapter(tmp_path):
    settings = folder_settings(tmp_path)
    assert run_cli("--config", str(settings), "sync", "--once").returncode == 0
    conn = sqlite3.connect(tmp_path / "data" / "store.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    result = run_cli("--config", str(settings), "check")
    assert result.returncode == 1
    assert f"schema version 99, newer than this program's {SCHEMA_VERSION}; upgrade optout-sync" in result.stdout
    assert "  inbox: ok" in result.stdout and "  sink: ok" in result.stdout


# -- WAL hygiene ----------------------------------------------------------------------


def test_an_idle_daemon_truncates_the_wal_a_large_import_left(tmp_path):
    settings = folder_settings(tmp_path)
    wal = tmp_path / "data" / "store.db-wal"
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "".join(f"bulk{i}@example.com\n" for i in range(60_000)))
    with Daemon(settings) as daemon:
        started(tmp_path, daemon)
        sizes: list[int] = []
        done = threading.Event()

        def watch() -> None:  # the WAL's high-water mark while the import writes
            while not done.is_set():
                sizes.append(wal.stat().st_size if wal.exists() else 0)
                time.sleep(0.01)

        watcher = threading.Thread(target=watch)
        watcher.start()
        result = run_cli("--config", str(settings), "import", str(big), "--confirm", "60000", timeout=120)
        done.set()
        watcher.join()
        assert result.returncode == 0, result.stderr
        assert max(sizes) > 8 * 1024 * 1024, f"the WAL grew to {max(sizes)} bytes only; the test proves nothing"
        wait_for(lambda: len(sink_addresses(tmp_path)) == 60_001, timeout=60)
        wait_for(lambda: wal.stat().st_size < 1024 * 1024, timeout=30)
        assert daemon.terminate() == 0


# -- backup and restore ---------------------------------------------------------------


def addresses_in(path: Path) -> set[str]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT address FROM suppressions")}
    finally:
        conn.close()


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def test_backup_during_an_import_and_a_running_daemon_restores_every_optout(tmp_path):
    settings = folder_settings(tmp_path)
    store = tmp_path / "data" / "store.db"
    imported = {f"imp{i}@example.com" for i in range(150_000)}
    big = tmp_path / "big.csv"
    big.write_text("email\n" + "\n".join(sorted(imported)) + "\n")
    followed = {f"inbox{i}@example.com" for i in range(3000)}
    with Daemon(settings) as daemon:
        started(tmp_path, daemon)
        drop(tmp_path / "inbox", "a.csv", [f"{a},," for a in sorted(followed)])
        importing = subprocess.Popen([*command(), "--config", str(settings), "import", str(big),
                                      "--confirm", str(len(imported))], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        time.sleep(0.3)
        assert importing.poll() is None, "the import ended before the backup started"
        during = run_cli("--config", str(settings), "backup", str(tmp_path / "during.db"), timeout=120)
        assert during.returncode == 0, during.stderr
        out, err = importing.communicate(timeout=120)
        assert importing.returncode == 0, err
        wait_for(lambda: sink_addresses(tmp_path) >= followed | {"first@example.com"}, timeout=60)

        after = run_cli("--config", str(settings), "backup", str(tmp_path / "after.db"), timeout=120)
        assert after.returncode == 0 and "integrity ok, mode 0600" in after.stdout, after.stderr
        live = addresses_in(store)

        refused = run_cli("--config", str(settings), "restore", str(tmp_path / "after.db"))
        assert refused.returncode == 3
        assert refused.stderr.splitlines() == [
            f"refused: the daemon (pid {daemon.proc.pid}) holds the store {store}; stop it before restoring; "
            "nothing was changed"]
        again = run_cli("--config", str(settings), "backup", str(tmp_path / "after.db"))
        assert again.returncode == 3 and "already exists" in again.stderr and "--force" in again.stderr
        assert daemon.terminate() == 0
    for name in ("during.db", "after.db"):
        assert oct((tmp_path / name).stat().st_mode & 0o777) == "0o600"
        assert not (tmp_path / f"{name}-wal").exists()
    # The backup taken during the import holds all of it or none of it (one transaction).
    during_set = addresses_in(tmp_path / "during.db")
    assert imported <= during_set or not (imported & during_set)
    assert during_set <= live

    for name, expected in (("after.db", live), ("during.db", during_set)):
        fresh = tmp_path / f"fresh-{name}"
        fresh.mkdir()
        fresh_settings = folder_settings(fresh)
        restored = run_cli("--config", str(fresh_settings), "restore", str(tmp_path / name))
        assert restored.returncode == 0, restored.stderr
        restored_store = fresh / "data" / "store.db"
        assert integrity(restored_store) == "ok"
        assert addresses_in(restored_store) == expected
        status = json.loads(run_cli("--config", str(fresh_settings), "status", "--json").stdout)
        assert status["suppressions"] == len(expected)
    assert len(live) == len(imported) + len(followed) + 1 and live >= imported | followed


def test_restore_checks_the_file_and_keeps_the_store_it_replaces(tmp_path):
    settings = folder_settings(tmp_path)
    store = tmp_path / "data" / "store.db"
    drop(tmp_path / "inbox", "a.csv", ["ann@example.com,,"])
    assert run_cli("--config", str(settings), "sync", "--once").returncode == 0
    assert run_cli("--config", str(settings), "backup", str(tmp_path / "one.db")).returncode == 0
    drop(tmp_path / "inbox", "b.csv", ["bob@example.com,,"])
    assert run_cli("--config", str(settings), "sync", "--once").returncode == 0
    assert addresses_in(store) == {"ann@example.com", "bob@example.com"}

    (tmp_path / "junk.db").write_text("not a database at all, just text long enough to be read")
    for bad, message in ((tmp_path / "junk.db", "is not an optout-sync store"),
                         (tmp_path / "missing.db", "no such file")):
        result = run_cli("--config", str(settings), "restore", str(bad))
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and message in result.stderr
    assert addresses_in(store) == {"ann@example.com", "bob@example.com"}

    result = run_cli("--config", str(settings), "restore", str(tmp_path / "one.db"))
    assert result.returncode == 0, result.stderr
    assert addresses_in(store) == {"ann@example.com"}
    kept = [p for p in (tmp_path / "data").iterdir() if ".before-restore-" in p.name]
    assert len(kept) == 1 and addresses_in(kept[0]) == {"ann@example.com", "bob@example.com"}
    assert f"the replaced store was kept as {kept[0]}" in result.stdout
    assert oct(store.stat().st_mode & 0o777) == "0o600"
