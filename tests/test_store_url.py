"""`[store] url` / `url_file`: the settings, the one place that picks the backend (open_store), the
SQLite-only commands' refusal, and the real daemon syncing a dropped list on a PostgreSQL store."""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.commands import open_store
from connector.configure import effective_settings, masked_url
from connector.settings import load_with_origins
from state.errors import ConfigError
from state.store import Store

from .conftest import write_settings
from .process import Daemon, run_cli, wait_for

PASSWORD = "s3cret-Pw"
URL = f"postgresql://optout:{PASSWORD}@db.example.org:5432/optouts?sslmode=require"
ADAPTERS = [{"name": "sink", "type": "csv_file", "path": "out.csv"}]


def settings_file(tmp_path: Path, store: dict) -> Path:
    return write_settings(tmp_path, ADAPTERS, store=store)


def load_error(path: Path, environ: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_with_origins(path, environ=environ or {})
    return str(caught.value)


# -- settings ------------------------------------------------------------------------------------------


def test_a_url_makes_the_store_postgresql_and_config_shows_it_with_the_password_masked(tmp_path):
    path = settings_file(tmp_path, {"url": URL})
    settings, load = load_with_origins(path, environ={})
    assert settings.store.postgresql is True and settings.store.url_text() == URL
    shown = {e.key: e for e in effective_settings(settings, load)}
    assert shown["store.url"].value == "postgresql://optout:***@db.example.org:5432/optouts?sslmode=require"
    assert shown["store.url"].origin.describe() == f"{path}, key store.url"

    result = CliRunner().invoke(main, ["--config", str(path), "config"])
    assert result.exit_code == 0, result.output
    assert 'store.url = "postgresql://optout:***@db.example.org:5432/optouts?sslmode=require"' in result.output
    assert PASSWORD not in result.output
    result = CliRunner().invoke(main, ["--config", str(path), "config", "--json"])
    assert PASSWORD not in result.output and "optout:***@db.example.org" in result.output


def test_a_sqlite_path_stays_the_default_and_sqlite(tmp_path):
    settings, _ = load_with_origins(write_settings(tmp_path, ADAPTERS, store={}), environ={})
    assert settings.store.postgresql is False and settings.store.path == tmp_path / "optout-sync.db"


def test_url_file_reads_the_url_from_a_secret_file_named_as_its_origin(tmp_path):
    secret = tmp_path / "secrets" / "store-url"
    secret.parent.mkdir()
    secret.write_text(f"  {URL}\n")
    path = settings_file(tmp_path, {"url_file": "secrets/store-url"})
    settings, load = load_with_origins(path, environ={})
    assert settings.store.url_text() == URL
    entry = {e.key: e for e in effective_settings(settings, load)}["store.url"]
    assert entry.value == masked_url(URL) and PASSWORD not in entry.line()
    assert entry.origin.describe() == f"secret file {secret} (named by {path}, key store.url_file)"


@pytest.mark.parametrize("store, expected", [
    ({"url": URL, "url_file": "u"}, "key 'store.url_file': give the store's URL once, as url or as url_file, not both"),
    ({"path": "x.db", "url": URL}, "key 'store.path': give either path (a SQLite store) or url/url_file "
                                   "(a PostgreSQL store), not both"),
    ({"path": "x.db", "url_file": "u"}, "key 'store.path': give either path"),
    ({"url": ""}, "key 'store.url': is empty; give a postgresql://user@host:port/dbname URL"),
    ({"url": f"mysql://root:{PASSWORD}@h/db"}, "key 'store.url': the URL must start with postgresql:// "
                                               "(or postgres://); it is not shown, as it may hold a password"),
    ({"url_file": "missing"}, "key 'store.url_file': cannot read {tmp}/missing: No such file or directory"),
    ({"url_file": "empty"}, "key 'store.url_file': {tmp}/empty is empty; put the store's postgresql:// URL in it"),
    ({"url_file": "wrong"}, "key 'store.url_file': the URL in {tmp}/wrong must start with postgresql://"),
])
def test_store_settings_errors_name_the_key_and_never_the_url(tmp_path, store, expected):
    (tmp_path / "u").write_text(URL)
    (tmp_path / "empty").write_text(" \n")
    (tmp_path / "wrong").write_text(f"http://x:{PASSWORD}@h/")
    path = settings_file(tmp_path, store)
    message = load_error(path)
    assert expected.format(tmp=tmp_path) in message
    assert message.startswith(f"{path}: invalid settings:") and PASSWORD not in message

    result = CliRunner().invoke(main, ["--config", str(path), "status"])
    assert result.exit_code == 2 and PASSWORD not in result.output
    assert "Traceback" not in result.output


def test_a_bad_url_from_the_environment_is_blamed_on_the_variable(tmp_path):
    message = load_error(settings_file(tmp_path, {}), {"OPTOUT_SYNC_STORE__URL": f"mysql://u:{PASSWORD}@h/d"})
    assert ("environment variable OPTOUT_SYNC_STORE__URL sets key 'store.url': the URL must start with "
            "postgresql://") in message
    assert PASSWORD not in message


# -- the backend's one chooser, and SQLite-only commands ----------------------------------------------


def test_open_store_opens_sqlite_for_a_path(tmp_path):
    settings, _ = load_with_origins(settings_file(tmp_path, {"path": "data/store.db"}), environ={})
    with open_store(settings, create=True) as store:
        assert type(store) is Store and Path(store.path) == tmp_path / "data" / "store.db"


@pytest.mark.postgresql
def test_open_store_opens_postgresql_for_a_url(tmp_path, pg_url):
    from state.pg_store import PgStore

    settings, _ = load_with_origins(settings_file(tmp_path, {"url": pg_url}), environ={})
    with open_store(settings) as store:
        assert type(store) is PgStore
        assert store.count_suppressions() == 0 and store.last_event_seq() == 0
    assert not (tmp_path / "optout-sync.db").exists()  # no SQLite file is made beside it


@pytest.mark.parametrize("args", [["backup", "copy.db"], ["restore", "copy.db"]])
def test_backup_and_restore_refuse_a_postgresql_store_pointing_to_pg_dump(tmp_path, args):
    path = settings_file(tmp_path, {"url": URL})
    (tmp_path / "copy.db").write_bytes(b"")
    result = CliRunner().invoke(main, ["--config", str(path), *args])
    assert result.exit_code == 3, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "the store is on PostgreSQL" in lines[0]
    assert ("pg_dump" in lines[0]) and PASSWORD not in result.output


@pytest.mark.postgresql
def test_a_failing_postgresql_store_is_one_line_without_the_password(tmp_path, pg_cluster):
    # The cluster trusts every user; a database that does not exist makes the connection fail.
    url = pg_cluster.url("no_such_db").replace("@/", f":{PASSWORD}@/")
    path = settings_file(tmp_path, {"url": url})
    for args in (["status"], ["failures"], ["check"]):
        result = run_cli("--config", str(path), *args)
        assert result.returncode in (1, 2), (args, result.stdout, result.stderr)
        assert PASSWORD not in result.stdout + result.stderr and "Traceback" not in result.stderr
        assert "no_such_db" in result.stdout + result.stderr


# -- the real daemon on PostgreSQL ----------------------------------------------------------------------


def folder_settings(tmp_path: Path, url: str, interval: float = 1.0) -> Path:
    return write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": interval, "settle_seconds": 0.2},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": interval},
    ], topics={"newsletter": "News"}, store={"url": url}, server={"listen": "127.0.0.1:0"})


def page(daemon: Daemon, path: str) -> tuple[int, str]:
    """GET a page of the daemon's status server (its address from the daemon's log)."""
    base = re.search(r"server_listening url=(\S+)", daemon.log()).group(1)
    try:
        with urllib.request.urlopen(base.rstrip("/") + path, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def drop(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.part"
    temp.write_text("email,scope,reason\n" + "\n".join(rows) + "\n", encoding="utf-8")
    temp.rename(folder / name)


def sink_addresses(tmp_path: Path) -> set[str]:
    path = tmp_path / "out" / "suppressions.csv"
    return {line.split(",")[0] for line in path.read_text().splitlines()[1:]} if path.exists() else set()


@pytest.mark.e2e
@pytest.mark.postgresql
def test_the_daemon_on_postgresql_brings_a_dropped_list_to_the_sink(tmp_path, pg_url):
    settings = folder_settings(tmp_path, pg_url)
    with Daemon(settings) as daemon:
        wait_for(lambda: "lease_taken" in daemon.log() and "adapter=sink" in daemon.log(), timeout=30)
        drop(tmp_path / "inbox", "list.csv", ["Ann@Example.com,,unsubscribed", "bob@example.com,newsletter,",
                                              "broken-address,,"])
        wait_for(lambda: sink_addresses(tmp_path) == {"ann@example.com", "bob@example.com"}, timeout=20)

        status = run_cli("--config", str(settings), "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["backend"] == "postgresql" and data["suppressions"] == 2 and data["daemon_running"] is True
        assert data["store"].startswith("PostgreSQL database t_")
        rows = {row["adapter"]: row for row in data["adapters"]}
        assert rows["inbox"]["failures"] == 1 and rows["sink"]["pending"] == 0
        assert rows["sink"]["holder"]["pid"] == daemon.proc.pid
        failures = run_cli("--config", str(settings), "failures")
        assert "list.csv row 4" in failures.stdout
        # A one-shot sync takes the adapters' leases too: it refuses the ones the daemon drives.
        once = run_cli("--config", str(settings), "sync", "--once", "--adapter", "sink")
        assert once.returncode == 1 and "another process is already syncing adapter 'sink'" in once.stderr
        assert f"/{daemon.proc.pid} on " in once.stderr and "Traceback" not in once.stderr
        code, html = page(daemon, "/")
        assert code == 200, html
        assert html.count(f"driven by {rows['sink']['holder']['daemon_id']} on ") == 2
        assert page(daemon, "/healthz")[0] == 200 and page(daemon, "/readyz")[0] == 200
        assert daemon.terminate(timeout=15) == 0
    log = daemon.log()
    assert "ann@example.com" not in log.lower() and "stopped" in log
    assert "worker_error" not in log, log
    assert not (tmp_path / "optout-sync.db").exists()
    # The leases ended with the process: nobody drives an adapter now.
    after = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
    assert after["daemon_running"] is False and all(row["holder"] is None for row in after["adapters"])
    # With no daemon, `sync --once` drives both adapters itself.
    drop(tmp_path / "inbox", "more.csv", ["carl@example.com,,"])
    time.sleep(0.3)  # settle_seconds
    once = run_cli("--config", str(settings), "sync", "--once")
    assert once.returncode == 0, once.stderr
    assert sink_addresses(tmp_path) == {"ann@example.com", "bob@example.com", "carl@example.com"}
