"""The throwaway PostgreSQL cluster the tests use (tests/pg_cluster.py, tests/pg_fixtures.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from . import pg_cluster as clusters

ROOT = Path(__file__).resolve().parent.parent


def _fake_bin(folder: Path, tools=("initdb", "pg_ctl", "postgres")) -> Path:
    folder.mkdir(parents=True)
    for tool in tools:
        (folder / tool).write_text("#!/bin/sh\n")
        (folder / tool).chmod(0o755)
    return folder


def test_the_tools_are_found_in_debians_folder_newest_version_first(tmp_path):
    _fake_bin(tmp_path / "lib/postgresql/9/bin")
    newest = _fake_bin(tmp_path / "lib/postgresql/16/bin")
    _fake_bin(tmp_path / "lib/postgresql/17/bin", tools=("initdb",))  # incomplete: not chosen
    empty_path = tmp_path / "empty"
    empty_path.mkdir()
    assert clusters.find_bin_dir(path=str(empty_path), debian_glob=f"{tmp_path}/lib/postgresql/*/bin") == newest


def test_the_tools_on_path_come_first(tmp_path):
    on_path = _fake_bin(tmp_path / "path")
    _fake_bin(tmp_path / "lib/postgresql/16/bin")
    assert clusters.find_bin_dir(path=str(on_path), debian_glob=f"{tmp_path}/lib/postgresql/*/bin") == on_path


def test_missing_tools_name_where_they_were_looked_for_and_how_to_install(tmp_path):
    with pytest.raises(clusters.ClusterError) as caught:
        clusters.find_bin_dir(path=str(tmp_path), debian_glob=f"{tmp_path}/none/*/bin")
    assert str(caught.value) == (f"PostgreSQL's initdb was found neither on PATH nor in {tmp_path}/none/*/bin; "
                                 "install Debian's 'postgresql' package (apt-get install postgresql), "
                                 "or run tests/run, which installs it when missing")


def test_the_cluster_serves_a_fresh_database_on_a_unix_socket_only(pg_cluster, pg_url):
    import psycopg

    print(f"\ncluster started in {pg_cluster.started_in:.2f} s")
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone()[0] == ""
        assert conn.execute("SHOW unix_socket_directories").fetchone()[0] == str(pg_cluster.socket_dir)
        assert conn.execute("SELECT current_user").fetchone()[0] == "optout"
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0
        conn.execute("CREATE TABLE t (x int)")
    # The server never runs as root (PostgreSQL refuses it): its data folder is another user's.
    owner = (pg_cluster.data_dir / "postmaster.pid").stat().st_uid
    assert owner != 0 and (os.geteuid() != 0 or pg_cluster.user in (clusters.RUN_AS, clusters.FALLBACK_RUN_AS))


PLUGIN = """
from tests import pg_cluster

_real = pg_cluster.find_bin_dir
pg_cluster.find_bin_dir = lambda: _real(path={empty!r}, debian_glob={glob!r})
"""


def test_a_cluster_that_cannot_start_fails_the_tests_that_need_it_with_one_clear_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "no_pg_plugin.py").write_text(PLUGIN.format(empty=str(tmp_path / "empty"),
                                                             glob=f"{tmp_path}/none/*/bin"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no_pg_plugin", "-p", "no:cacheprovider", "-q", "-rA",
         "tests/test_pg_cluster.py::test_the_cluster_serves_a_fresh_database_on_a_unix_socket_only"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "1 error" in out and "skipped" not in out.lower(), out
    assert ("the PostgreSQL test cluster cannot start: PostgreSQL's initdb was found neither on PATH nor in "
            f"{tmp_path}/none/*/bin; install Debian's 'postgresql' package") in out, out
    assert "Traceback" not in out, out


def _ends(pid: int, within: float = 10.0) -> bool:
    """True once `pid` is gone or a zombie (its exit may take a moment; a container's init may reap late)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_cluster_whose_test_process_died_is_stopped_and_removed_by_the_next_start(pg_cluster):
    import psycopg

    abandoned = clusters.start()
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()
        (abandoned.folder / clusters.OWNER_FILE).write_text(f"{dead.pid}\n")  # as if killed before its clean-up
        with psycopg.connect(abandoned.url(), autocommit=True) as conn:
            server_pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0] and \
                int((abandoned.data_dir / "postmaster.pid").read_text().split()[0])
        second = clusters.start()
        second.stop()
        assert not abandoned.folder.exists()
        assert _ends(server_pid), f"the abandoned server {server_pid} still runs"
        # The session's own cluster, whose owner is alive, was left running.
        with psycopg.connect(pg_cluster.url(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        abandoned.stop()
