"""End-to-end: the real `optout-sync run` process on temp folders, as a user runs it."""

from __future__ import annotations

import csv
import json
import os
import random
import time
from pathlib import Path

import pytest

from .conftest import write_settings
from .process import Daemon, run_cli, wait_for

pytestmark = pytest.mark.e2e


def folder_settings(tmp_path: Path, interval: float = 1.0, batch_size: int = 50_000, store: dict | None = None,
                    **extra) -> Path:
    """A CSV folder feeding a CSV file sink; the store a SQLite file unless `store` (store_backend.store) says."""
    return write_settings(tmp_path, [
        {"name": "inbox", "type": "csv_folder", "path": "inbox", "interval": interval,
         "settle_seconds": 0.2, "max_new_per_cycle": 1_000_000, **extra},
        {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv", "interval": interval,
         "batch_size": batch_size},
    ], topics={"newsletter": "News"}, store=store or {"path": "data/store.db"})


def drop(folder: Path, name: str, rows: list[str], header: str = "email,scope,reason") -> None:
    """Write a CSV the way a careful user would: a temp name first, then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".{name}.part"
    temp.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    temp.rename(folder / name)


def sink_rows(tmp_path: Path) -> list[dict]:
    path = tmp_path / "out" / "suppressions.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def sink_addresses(tmp_path: Path) -> set[str]:
    return {row["email"] for row in sink_rows(tmp_path)}


def test_dropped_csv_reaches_the_sink_within_one_interval_and_sigterm_exits_0(tmp_path, store_backend):
    settings = folder_settings(tmp_path, interval=1.0, store=store_backend.store)
    with Daemon(settings) as daemon:
        wait_for(lambda: "started" in daemon.log())
        time.sleep(1.2)  # the first cycles have run on an empty folder
        # The sink file is there, header only, before any opt-out arrived (as the quick start shows).
        assert (tmp_path / "out" / "suppressions.csv").read_text() == "email,scope,reason,origin,occurred_at\n"
        drop(tmp_path / "inbox", "list.csv", ["Ann@Example.com,,unsubscribed", "bob@example.com,newsletter,",
                                              "broken-address,,"])
        dropped = time.monotonic()
        wait_for(lambda: sink_addresses(tmp_path) == {"ann@example.com", "bob@example.com"}, timeout=10)
        took = time.monotonic() - dropped
        assert took <= 1.0 + 0.5, f"took {took:.2f} s for a 1 s interval"

        status = run_cli("--config", str(settings), "status", "--json")
        assert status.returncode == 0, status.stderr
        data = json.loads(status.stdout)
        assert data["daemon_running"] is True and data["suppressions"] == 2
        inbox = next(a for a in data["adapters"] if a["adapter"] == "inbox")
        assert inbox["failures"] == 1

        failures = run_cli("--config", str(settings), "failures")
        assert "list.csv row 4" in failures.stdout and "no @ in address" in failures.stdout

        assert daemon.terminate(timeout=10) == 0
    log = daemon.log()
    assert "cycle adapter=inbox" in log and "pulled=2" in log and "rejected=1" in log and "stopped" in log
    assert "ann@example.com" not in log.lower()  # addresses are masked in logs
    rows = {r["email"]: r for r in sink_rows(tmp_path)}
    assert rows["ann@example.com"]["scope"] == "*" and rows["ann@example.com"]["reason"] == "unsubscribed"
    assert rows["bob@example.com"]["scope"] == "newsletter"
    with store_backend.open(settings) as store:
        assert {row[0] for row in store.iter_suppressions()} == {"ann@example.com", "bob@example.com"}
    if not store_backend.postgresql:  # the file's mode is SQLite's; PostgreSQL's grants are the operator's
        assert oct((tmp_path / "data" / "store.db").stat().st_mode & 0o777) == "0o600"
    else:
        assert not (tmp_path / "data").exists(), "a SQLite store was made beside the PostgreSQL one"


def test_appended_rows_and_new_files_follow_and_json_logs(tmp_path):
    settings = folder_settings(tmp_path)
    inbox = tmp_path / "inbox"
    drop(inbox, "a.csv", ["first@example.com,,"])
    with Daemon(settings, "--log-format", "json") as daemon:
        wait_for(lambda: sink_addresses(tmp_path) == {"first@example.com"})
        with (inbox / "a.csv").open("a") as handle:
            handle.write("second@example.com,,\n")
        drop(inbox, "b.csv", ["third@example.com,,"])
        wait_for(lambda: sink_addresses(tmp_path) == {"first@example.com", "second@example.com",
                                                      "third@example.com"})
        assert daemon.terminate() == 0
    events = [json.loads(line) for line in daemon.log().splitlines() if line.startswith("{")]
    cycles = [e for e in events if e["event"] == "cycle"]
    assert cycles and {"adapter", "pulled", "pushed", "failed", "duration_ms"} <= set(cycles[0])


def test_a_second_daemon_on_the_same_store_refuses_to_start(tmp_path):
    # SQLite only: the store file's lock; on PostgreSQL daemons share the store (test_daemons_share.py).
    settings = folder_settings(tmp_path)
    with Daemon(settings) as first:
        wait_for(lambda: "started" in first.log())
        second = run_cli("--config", str(settings), "run", timeout=20)
        assert second.returncode == 1
        assert "already syncing the store" in second.stderr
        assert first.proc.poll() is None
        assert first.terminate() == 0


def test_kill_9_mid_cycle_repeatedly_loses_nothing(tmp_path, store_backend):
    """SIGKILL the daemon at random moments while it reads and writes; then it converges."""
    rng = random.Random(20261123)
    settings = folder_settings(tmp_path, interval=1.0, batch_size=100, page_size=400, store=store_backend.store)
    inbox = tmp_path / "inbox"
    expected: set[str] = set()
    # Enough work that several kills land while it is under way, however fast a push is;
    # less on PostgreSQL, whose pull stages rows several times slower, so that kills land in pushes too.
    per_list = 4000 if store_backend.postgresql else 15000
    for n in range(3):
        rows = [f"user{n}-{i}@example.com,," for i in range(per_list)]
        expected |= {r.split(",")[0] for r in rows}
        drop(inbox, f"list{n}.csv", rows)
    kills, partial, pushing = 0, 0, 0
    # Twelve kills at least; more (up to 30) until three landed mid-work, one of them in a push: how
    # long the start and the work take depends on the machine's load, and a kill that lands before
    # or after the work tests nothing.
    while kills < 12 or ((partial < 3 or pushing < 1) and kills < 30):
        with Daemon(settings) as daemon:
            # From the start of its work, not of the process: on a busy machine the start alone can
            # take longer than the pause, and a kill before the work begins tests nothing.
            wait_for(lambda: "started" in daemon.log(), timeout=30, step=0.02)
            time.sleep(rng.uniform(0.05, 1.0))
            daemon.kill()
            kills += 1
        with store_backend.open(settings) as store:
            stored, staged = store.count_suppressions(), store.staged_count("inbox")
        pushing += 0 < len(sink_addresses(tmp_path)) < len(expected)
        if staged or 0 < stored < len(expected) or 0 < len(sink_addresses(tmp_path)) < len(expected):
            partial += 1  # killed while work was under way: a pull part staged, or a push part done
        # Between kills, rows are appended to a file that is being followed: each round has work.
        extra = [f"late{kills}-{i}@example.com" for i in range(1000)]
        with (inbox / "list0.csv").open("a") as handle:
            handle.write("".join(f"{address},,\n" for address in extra))
        expected |= set(extra)
    with Daemon(settings) as daemon:
        wait_for(lambda: sink_addresses(tmp_path) == expected, timeout=60)
        assert daemon.terminate() == 0
    rows = sink_rows(tmp_path)
    assert len(rows) == len(expected), "the sink holds an address twice"
    result = run_cli("--config", str(settings), "status", "--json")
    data = json.loads(result.stdout)
    assert data["suppressions"] == len(expected)
    with store_backend.open(settings) as store:  # each opt-out recorded once, however often it was read
        assert {row[0] for row in store.iter_suppressions()} == expected
        assert sum(e["kind"] == "suppressed" for e in store.events_after(0, 1_000_000)) == len(expected)
    assert partial >= 3 and pushing >= 1, f"only {partial} of {kills} kills landed mid-work ({pushing} in a push)"
