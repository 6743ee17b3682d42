"""The test-only crash point (state/failpoint.py): SIGKILL at a chosen store commit, never a setting."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from connector.settings import apply_env_overrides
from state.errors import ConfigError
from state.failpoint import _parse
from tests.conftest import write_settings
from tests.process import run_cli

# Four top-level transactions of one row each; the second holds a savepoint, which is no commit.
FOUR_COMMITS = textwrap.dedent("""
    import sys
    from state.pg_store import PgStore
    from state.store import Store
    if sys.argv[1].startswith("postgresql://"):
        store = PgStore(sys.argv[1])
        store.conn.execute("CREATE TABLE IF NOT EXISTS t (rowid bigint GENERATED ALWAYS AS IDENTITY, n INTEGER)")
    else:
        store = Store(sys.argv[1])
        store.conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
    for n in range(1, 5):
        with store.transaction():
            store.conn.execute("INSERT INTO t (n) VALUES (?)", (n,))
            if n == 2:
                with store.transaction():
                    store.conn.execute("INSERT INTO t (n) VALUES (20)")
    print("done")
""")


def run_four(tmp_path, value: str | None, url: str | None = None) -> tuple[int, list[int]]:
    """Run FOUR_COMMITS on a SQLite store in tmp_path, or on the PostgreSQL database at `url`; (exit code, rows)."""
    db = url or str(tmp_path / "store.db")
    # The child imports the package the way this process does.
    env = {**{k: v for k, v in os.environ.items() if k != "OPTOUT_SYNC_FAILPOINT"},
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    if value is not None:
        env["OPTOUT_SYNC_FAILPOINT"] = value
    proc = subprocess.run([sys.executable, "-c", FOUR_COMMITS, db], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    if url is None:
        rows = [n for (n,) in sqlite3.connect(db).execute("SELECT n FROM t ORDER BY rowid")]
    else:
        import psycopg

        with psycopg.connect(url) as conn:
            rows = [n for (n,) in conn.execute("SELECT n FROM t ORDER BY rowid")]
    return proc.returncode, rows


@pytest.mark.parametrize(("value", "code", "rows"), [
    (None, 0, [1, 2, 20, 3, 4]),
    ("commit:2", -signal.SIGKILL, [1, 2, 20]),      # killed after the 2nd COMMIT: it is durable
    ("precommit:2", -signal.SIGKILL, [1]),          # killed before it: its rows are gone
    ("commit:4", -signal.SIGKILL, [1, 2, 20, 3, 4]),
    ("commit:5", 0, [1, 2, 20, 3, 4]),              # past the last commit: runs to the end
])
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_the_process_kills_itself_at_the_chosen_commit(tmp_path, request, backend, value, code, rows):
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    assert run_four(tmp_path, value, url) == (code, rows)


@pytest.mark.parametrize("value", ["commit", "commit:0", "commit:x", "after:3", "commit:-1"])
def test_a_malformed_value_is_one_clear_error_when_the_store_opens(value):
    when, _, error = _parse(value)
    assert when is None and error == (
        f"environment variable OPTOUT_SYNC_FAILPOINT={value!r} is not 'commit:N' or 'precommit:N' "
        "with N >= 1 (a test-only crash point; unset it)")


@pytest.mark.e2e
def test_a_malformed_value_stops_the_command_with_exit_2(tmp_path):
    settings = write_settings(tmp_path, [{"name": "inbox", "type": "csv_folder", "path": "inbox"}])
    (tmp_path / "inbox").mkdir()
    result = run_cli("--config", str(settings), "sync", "--once", env={"OPTOUT_SYNC_FAILPOINT": "commit:x"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "environment variable OPTOUT_SYNC_FAILPOINT='commit:x' is not 'commit:N' or 'precommit:N' with N >= 1 "
        "(a test-only crash point; unset it)")
    assert "Traceback" not in result.stderr


def test_the_variable_is_not_a_setting(tmp_path):
    raw: dict = {"adapters": []}
    apply_env_overrides(raw, {"OPTOUT_SYNC_FAILPOINT": "commit:3", "OPTOUT_SYNC_STORE__PATH": "x.db"},
                        tmp_path / "settings.toml")
    assert raw == {"adapters": [], "store": {"path": "x.db"}}


def test_the_store_refuses_to_open_under_a_malformed_value(tmp_path, monkeypatch):
    from state import failpoint, store

    monkeypatch.setattr(failpoint, "ERROR", "bad value")
    with pytest.raises(ConfigError, match="bad value"):
        store.Store(tmp_path / "store.db")


@pytest.mark.parametrize(("value", "parsed"), [
    (None, (None, 0, None)),
    ("", (None, 0, None)),
    ("commit:1", ("commit", 1, None)),              # the lowest N there is
    ("precommit:12", ("precommit", 12, None)),
    ("  commit:3\n", ("commit", 3, None)),          # as a shell or a unit file may leave it
])
def test_a_well_formed_value_names_its_point_and_number(value, parsed):
    assert _parse(value) == parsed


@pytest.mark.parametrize(("when", "at", "killed_before", "killed_after"), [
    ("commit", 2, [], [2]),
    ("precommit", 2, [2], []),
    (None, 0, [], []),
])
def test_the_armed_commit_and_only_it_sends_sigkill_to_this_process(monkeypatch, when, at, killed_before,
                                                                     killed_after):
    """In-process, with the kill recorded instead of sent: which numbered commit fires, before or after."""
    import itertools

    from state import failpoint

    kills: list[tuple[int, int, int]] = []
    phase = {"now": "before"}
    monkeypatch.setattr(failpoint, "WHEN_ARMED", when)
    monkeypatch.setattr(failpoint, "AT", at)
    monkeypatch.setattr(failpoint, "_commits", itertools.count(1))
    monkeypatch.setattr(failpoint.os, "kill", lambda pid, sig: kills.append((phase["now"], pid, sig)))
    numbers = []
    for _ in range(3):
        phase["now"] = "before"
        number = failpoint.before_commit()
        numbers.append(number)
        phase["now"] = "after"
        failpoint.after_commit(number)
    assert numbers == [1, 2, 3]
    me = os.getpid()
    assert kills == ([("before", me, signal.SIGKILL)] if killed_before else []) + (
        [("after", me, signal.SIGKILL)] if killed_after else [])
