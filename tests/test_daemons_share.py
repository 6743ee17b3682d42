"""Several daemons on one PostgreSQL store: each adapter driven by one daemon at a time, a dead or cut-off
holder's adapters taken over within two intervals, nothing lost, and the fence on every write."""

from __future__ import annotations

import json
import time
from pathlib import Path

import psycopg
import pytest

from connector.leases import LeaseLost, PgLeases
from state.errors import StoreError
from state.pg_store import PgStore

from .conftest import write_settings
from .process import Daemon, run_cli, wait_for

pytestmark = pytest.mark.postgresql
INTERVAL = 2.0
ADAPTERS = ("inbox", "sink")


def shared_settings(tmp_path: Path, url: str) -> Path:
    return write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": INTERVAL, "settle_seconds": 0.2},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": INTERVAL},
    ], store={"url": url}, logging={"level": "debug"})


def drop(folder: Path, name: str, addresses: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.part"
    temp.write_text("email,scope,reason\n" + "".join(f"{a},,\n" for a in addresses), encoding="utf-8")
    temp.rename(folder / name)


def sink_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "out" / "suppressions.csv"
    return [line.split(",")[0] for line in path.read_text().splitlines()[1:]] if path.exists() else []


def holders(url: str) -> dict[str, int | None]:
    """{adapter: pid of the daemon holding its lease}, as the database says."""
    leases = PgLeases(url)
    try:
        return {adapter: holder.pid for adapter, holder in leases.holders().items()}
    except StoreError:  # before the first daemon migrated the database
        return {}
    finally:
        leases.close()


def cycles_of(daemon: Daemon, adapter: str) -> int:
    return daemon.log().count(f"adapter={adapter} ") + daemon.log().count(f"adapter={adapter}\n")


@pytest.mark.e2e
def test_two_daemons_share_the_adapters_and_a_killed_holders_are_taken_over(tmp_path, pg_url):
    settings = shared_settings(tmp_path, pg_url)
    first = Daemon(settings)
    try:
        wait_for(lambda: set(holders(pg_url)) == set(ADAPTERS), timeout=30)
        second = Daemon(settings)
        with first, second:
            wait_for(lambda: "started" in second.log(), timeout=30)
            time.sleep(2 * INTERVAL)  # the second daemon's lease loop has tried every adapter, twice
            assert holders(pg_url) == {a: first.proc.pid for a in ADAPTERS}
            # The second daemon's workers do not even try: no write of theirs was refused by the fence.
            assert "lease_taken" not in second.log() and "cycle adapter=" not in second.log()
            assert "lease_lost" not in second.log(), second.log()
            assert "cycle adapter=inbox" in first.log() and "cycle adapter=sink" in first.log()

            early = [f"early{i}@example.com" for i in range(300)]
            drop(tmp_path / "inbox", "early.csv", early)
            wait_for(lambda: set(sink_lines(tmp_path)) == set(early), timeout=30)

            text = run_cli("--config", str(settings), "status")
            assert text.returncode == 0, text.stderr
            driver = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
            daemon_id = driver["adapters"][0]["holder"]["daemon_id"]
            assert daemon_id.endswith(f"/{first.proc.pid}")
            assert text.stdout.count(f"driven by {daemon_id} on ") == 2
            assert f"daemons driving adapters: {daemon_id}" in text.stdout

            first.kill()  # SIGKILL: no clean-up; its backend ends when the kernel closes its socket
            killed = time.monotonic()
            wait_for(lambda: holders(pg_url) == {a: second.proc.pid for a in ADAPTERS}, timeout=30, step=0.02)
            took = time.monotonic() - killed
            assert took <= 2 * INTERVAL, f"the takeover took {took:.2f} s for a {INTERVAL} s interval"

            late = [f"late{i}@example.com" for i in range(300)]
            drop(tmp_path / "inbox", "late.csv", late)
            wait_for(lambda: set(sink_lines(tmp_path)) == set(early) | set(late), timeout=30)
            status = json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
            assert status["suppressions"] == 600
            assert {row["adapter"]: row["holder"]["pid"] for row in status["adapters"]} == \
                {a: second.proc.pid for a in ADAPTERS}
            assert all(row["pending"] == 0 for row in status["adapters"] if row["adapter"] == "sink")
            assert second.terminate(timeout=15) == 0
    finally:
        if first.proc.poll() is None:
            first.kill()
    lines = sink_lines(tmp_path)
    assert len(lines) == len(set(lines)) == 600, "an opt-out lost, or written twice"
    assert "lease_taken adapter=inbox" in second.log() and "lease_taken adapter=sink" in second.log()
    assert "worker_error" not in second.log(), second.log()


@pytest.mark.e2e
def test_a_daemon_cut_off_from_its_lease_stops_driving_until_it_holds_it_again(tmp_path, pg_url):
    settings = shared_settings(tmp_path, pg_url)
    with Daemon(settings) as daemon:
        wait_for(lambda: set(holders(pg_url)) == set(ADAPTERS), timeout=30)
        thief = PgLeases(pg_url, daemon_id="thief")
        try:
            # Cut the daemon's lease connection (as a network failure would) and take the sink's lease first.
            with psycopg.connect(pg_url, autocommit=True) as conn:
                deadline = time.monotonic() + 20
                while not thief.try_acquire("sink"):
                    assert time.monotonic() < deadline, "the sink's lease was never free"
                    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                 " WHERE application_name = 'optout-sync-leases' AND pid <> %s",
                                 (thief.backend_pid or 0,))
                    time.sleep(0.01)
            wait_for(lambda: "lease_lost" in daemon.log() and holders(pg_url).get("inbox") == daemon.proc.pid,
                     timeout=3 * INTERVAL)
            drop(tmp_path / "inbox", "list.csv", ["held@example.com"])
            wait_for(lambda: json.loads(run_cli("--config", str(settings), "status", "--json").stdout)
                     ["suppressions"] == 1, timeout=30)
            time.sleep(2 * INTERVAL)
            assert sink_lines(tmp_path) == [], "a daemon without the sink's lease pushed to it"
        finally:
            thief.close()  # the daemon takes the sink back within two intervals, and pushes
        wait_for(lambda: sink_lines(tmp_path) == ["held@example.com"], timeout=2 * INTERVAL + 10)
        assert holders(pg_url) == {a: daemon.proc.pid for a in ADAPTERS}
        assert daemon.terminate(timeout=15) == 0


def test_a_store_whose_lease_was_taken_over_commits_no_push(pg_url):
    """The fence: record_push, mark_inflight and the checkpoint write of a daemon that lost its lease."""
    holder, successor = PgLeases(pg_url, daemon_id="old"), PgLeases(pg_url, daemon_id="new")
    store = PgStore(pg_url)
    try:
        assert holder.try_acquire("sink")
        store.fence = holder.fence(["sink"])
        store.record_push("sink", [], 5)
        assert store.checkpoint("sink").applied_seq == 5  # while held, it commits

        with psycopg.connect(pg_url, autocommit=True) as conn:  # the holder's connection drops
            conn.execute("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
        wait_for(lambda: successor.try_acquire("sink"), timeout=10)
        assert holder.backend_pid is not None  # the holder has not noticed yet

        for write in (lambda: store.record_push("sink", [], 9), lambda: store.mark_inflight("sink", [7]),
                      lambda: store.set_checkpoint("sink", read_cursor="x")):
            with pytest.raises(LeaseLost, match="no longer holds the lease of sink"):
                write()
        checkpoint = store.checkpoint("sink")
        assert checkpoint.applied_seq == 5 and checkpoint.read_cursor is None
        assert store.conn.execute("SELECT count(*) FROM inflight").fetchone()[0] == 0

        # The successor's own store commits; the old holder, after taking the lease again, would too.
        other = PgStore(pg_url)
        other.fence = successor.fence(["sink"])
        other.record_push("sink", [], 9)
        other.close()
        assert store.checkpoint("sink").applied_seq == 9
    finally:
        store.close()
        holder.close()
        successor.close()
