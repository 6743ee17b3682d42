"""`optout-sync events`: the event log as a feed, resumable by seq, followed live, masked, flat in memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connector import feed
from connector.lock import StoreLock
from connector.settings import load_settings
from state.errors import ConfigError
from state.store import Store

from .conftest import write_settings
from .process import Daemon, command, run_cli, wait_for
from .test_e2e_daemon import drop, folder_settings, sink_addresses

ADAPTERS = [{"name": "inbox", "type": "csv_folder", "path": "inbox"},
            {"name": "sink", "type": "csv_file", "path": "out/suppressions.csv"}]
COLUMNS = ["seq", "recorded_at", "kind", "address", "scope", "reason", "origin", "source", "target", "ref_seq",
           "occurred_at", "legal_basis", "explanation", "message", "details"]


def add_events(store: Store, count: int, first: int = 0) -> None:
    """`count` suppressed events of user<i>@example.com, each naming its address in its message too."""
    with store.transaction():
        store.conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            " INSERT INTO events (recorded_at, kind, address, scope, reason, origin, source, message, details)"
            " SELECT '2026-01-01T00:00:00+00:00', 'suppressed', 'user' || i || '@example.com', '*', 'unsubscribed',"
            " 'recipient', 'inbox', 'seen for user' || i || '@example.com', json_object('file', 'a.csv row ' || i)"
            " FROM n", (first, first + count - 1))


@pytest.fixture
def world(tmp_path):
    settings_path = write_settings(tmp_path, ADAPTERS)
    settings = load_settings(str(settings_path))
    return settings_path, settings, Store(settings.store.path)


def test_chunks_hold_every_event_after_since_oldest_first(world):
    _, settings, store = world
    add_events(store, 25)
    chunks = list(feed.event_chunks(settings, 0, chunk=10))
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [e["seq"] for c in chunks for e in c] == list(range(1, 26))
    assert list(chunks[0][0]) == COLUMNS
    rest = [e["seq"] for c in feed.event_chunks(settings, 20, chunk=10) for e in c]
    assert rest == [21, 22, 23, 24, 25]  # strictly after --since
    assert list(feed.event_chunks(settings, 25)) == []
    assert feed.last_seq(settings) == 25


def test_json_has_every_column_details_as_an_object_and_addresses_masked_everywhere(world):
    _, settings, store = world
    with store.transaction():
        store.conn.execute(
            "INSERT INTO events (recorded_at, kind, address, scope, legal_basis, explanation, message, details)"
            " VALUES ('2026-01-01T00:00:00+00:00', 'lifted', 'anna@example.com', '*', 'consent',"
            " 'asked by anna@example.com\nby phone', 'told bob@example.org', ?)",
            (json.dumps({"by": "ops", "seen": ["carl@example.net"], "nested": {"to": "dora@example.com"}}),))
    (event,) = next(feed.event_chunks(settings))
    line = feed.event_json(event)
    assert "\n" not in line
    data = json.loads(line)
    assert list(data) == COLUMNS
    assert data["address"] == "a***@example.com"
    assert data["explanation"] == "asked by a***@example.com\nby phone"
    assert data["message"] == "told ***@example.org"
    assert data["details"] == {"by": "ops", "seen": ["c***@example.net"], "nested": {"to": "d***@example.com"}}
    for raw in ("anna@", "bob@", "carl@", "dora@"):
        assert raw not in line
    shown = json.loads(feed.event_json(event, show_addresses=True))
    assert shown["address"] == "anna@example.com" and shown["message"] == "told bob@example.org"
    assert shown["details"]["seen"] == ["carl@example.net"]


def test_a_human_line_is_one_line_per_event_and_masked(world):
    _, settings, store = world
    with store.transaction():
        store.conn.execute(
            "INSERT INTO events (recorded_at, kind, address, scope, target, message)"
            " VALUES ('2026-01-01T00:00:00+00:00', 'failed', 'anna@example.com', '*', 'sink',"
            " 'refused:\r\nanna@example.com is blocked')")
    (event,) = next(feed.event_chunks(settings))
    assert feed.event_line(event) == ("1 2026-01-01T00:00:00+00:00 failed a***@example.com failed at sink "
                                      "(all email): refused:  a***@example.com is blocked")
    assert "anna@example.com failed at sink" in feed.event_line(event, show_addresses=True)


def test_follow_yields_new_events_as_they_are_written_and_stops_when_told(world):
    _, settings, store = world
    add_events(store, 3)
    stop = threading.Event()
    seen: list[int] = []
    follower = threading.Thread(target=lambda: seen.extend(
        e["seq"] for c in feed.event_chunks(settings, 1, follow=True, stop=stop, poll=0.05) for e in c))
    follower.start()
    wait_for(lambda: seen == [2, 3], timeout=5)
    add_events(store, 2, first=100)
    wait_for(lambda: seen == [2, 3, 4, 5], timeout=5)
    stop.set()
    follower.join(5)
    assert not follower.is_alive()


def test_a_missing_store_is_an_error_and_nothing_is_created(tmp_path):
    settings = load_settings(str(write_settings(tmp_path, ADAPTERS, store={"path": "data/store.db"})))
    with pytest.raises(ConfigError, match="no store at"):
        list(feed.event_chunks(settings))
    assert not (tmp_path / "data").exists()
    result = run_cli("--config", str(tmp_path / "settings.toml"), "events", "--follow")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: no store at {tmp_path / 'data' / 'store.db'}; check [store] path or OPTOUT_SYNC_STORE__PATH "
        "(only run, sync, import and restore create a store)"]
    assert not (tmp_path / "data").exists()


def test_it_reads_while_another_process_holds_the_stores_lock(world):
    settings_path, settings, store = world
    add_events(store, 2)
    lock = StoreLock(settings.store.path, command="run").acquire()
    try:
        result = run_cli("--config", str(settings_path), "events")
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["1", "2"]
    # A saved seq past the log (a store restored from an older backup) is said, not silently waited on.
    ahead = run_cli("--config", str(settings_path), "events", "--since", "5")
    assert (ahead.returncode, ahead.stdout) == (0, "")
    assert ahead.stderr == "note: --since 5 is past the last event (2); nothing to show\n"


class Follower:
    """`events --follow --json` as its own process, its stdout read line by line on a thread."""

    def __init__(self, settings: Path, *args: str, show_addresses: bool = False):
        shown = ["--show-addresses"] if show_addresses else []
        self.proc = subprocess.Popen([*command(), "--config", str(settings), *shown, "events", "--follow", "--json",
                                      *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")))
        self._reader.start()

    def kinds_of(self, address: str) -> list[str]:
        return [e["kind"] for e in self.events() if e["address"] == address]

    def events(self) -> list[dict]:
        return [json.loads(line) for line in list(self.lines)]

    def __enter__(self) -> "Follower":
        return self

    def __exit__(self, *exc_info) -> None:
        if self.proc.poll() is None:  # a failed test: leave no process behind
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, how: int) -> tuple[int, str]:
        self.proc.send_signal(how)
        code = self.proc.wait(10)
        self._reader.join(5)
        return code, self.proc.stderr.read()


def test_a_follower_beside_the_daemon_sees_events_live_and_resumes_without_gaps_or_repeats(tmp_path):
    settings = folder_settings(tmp_path, interval=1.0)
    inbox = tmp_path / "inbox"
    with Daemon(settings) as daemon:
        wait_for(lambda: "started" in daemon.log())
        with Follower(settings) as first:
            time.sleep(1.0)
            assert first.lines == [] and first.proc.poll() is None  # an empty log: waiting, not ended
            drop(inbox, "a.csv", ["Anna@Example.com,,unsubscribed", "bertha@example.com,,"])
            # Live: each address's suppression, then its application at the sink, while the daemon runs.
            wait_for(lambda: first.kinds_of("a***@example.com") == ["suppressed", "applied"]
                     and first.kinds_of("b***@example.com") == ["suppressed", "applied"], timeout=15)
            code, stderr = first.stop(signal.SIGTERM)
            assert code == 0 and stderr == ""
            seen = first.events()
            seqs = [e["seq"] for e in seen]
            assert seqs == sorted(set(seqs)) and len(seqs) == 4
            assert all(list(e) == COLUMNS for e in seen)
            assert not any("anna@" in line or "bertha@" in line for line in first.lines)

        # Events written while nobody follows, then a new follower from the last seq shipped.
        drop(inbox, "b.csv", ["carla@example.com,,", "dora@example.com,,hard_bounce"])
        wait_for(lambda: {"carla@example.com", "dora@example.com"} <= sink_addresses(tmp_path), timeout=15)
        with Follower(settings, "--since", str(seqs[-1]), show_addresses=True) as second:
            wait_for(lambda: len(second.lines) >= 4, timeout=10)
            drop(inbox, "c.csv", ["emma@example.com,,"])
            wait_for(lambda: second.kinds_of("emma@example.com") == ["suppressed", "applied"], timeout=15)
            code, stderr = second.stop(signal.SIGINT)
            assert code == 0 and stderr == ""
        assert daemon.terminate() == 0

    # The whole log, read once after the fact, is exactly the first follower's part and then the rest.
    everything = run_cli("--config", str(settings), "--show-addresses", "events", "--json")
    assert everything.returncode == 0, everything.stderr
    whole = [json.loads(line) for line in everything.stdout.splitlines()]
    resumed = second.events()
    assert [e["seq"] for e in whole] == seqs + [e["seq"] for e in resumed]
    assert resumed == whole[4:] == events_since(settings, seqs[-1])
    # --show-addresses: the addresses as stored.
    assert {e["address"] for e in resumed} == {"carla@example.com", "dora@example.com", "emma@example.com"}


def events_since(settings: Path, seq: int) -> list[dict]:
    result = run_cli("--config", str(settings), "--show-addresses", "events", "--json", "--since", str(seq))
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


# A forked child's ru_maxrss starts from its parent's (the memory it shared until exec), and this test
# process has grown by building the stores: a small fresh Python starts the measured process instead.
_MEASURE = ("import os, subprocess, sys; proc = subprocess.Popen(sys.argv[1:]); _, status, usage = os.wait4(proc.pid, 0);"
            " print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)")


def peak_rss_kib(settings: Path, out: Path) -> int:
    """Run `events --json > out` to the end; the process's peak resident set (ru_maxrss, KiB)."""
    with out.open("w") as handle:
        result = subprocess.run([sys.executable, "-c", _MEASURE, *command(), "--config", str(settings), "events",
                                 "--json"], stdout=handle, stderr=subprocess.PIPE, text=True, timeout=300)
    code, peak = result.stderr.split()[-2:]
    assert code == "0", result.stderr
    return int(peak)


def test_memory_stays_flat_from_30k_to_300k_events(tmp_path, capsys):
    peaks = {}
    for count in (30_000, 300_000):
        folder = tmp_path / str(count)
        folder.mkdir()
        settings = write_settings(folder, ADAPTERS)
        with Store(folder / "store.db") as store:
            add_events(store, count)
        out = folder / "events.jsonl"
        peaks[count] = peak_rss_kib(settings, out)
        with out.open() as handle:
            lines = sum(1 for _ in handle)
            handle.seek(0)
            last = json.loads(handle.readlines()[-1])
        assert lines == count and last["seq"] == count and last["address"] == "u***@example.com"
    with capsys.disabled():
        print(f"\nevents --json peak RSS: 30,000 events {peaks[30_000]:,} KiB, 300,000 events {peaks[300_000]:,} KiB")
    # Ten times the log, the same memory: within 4 MiB (a whole-log read would add hundreds of MiB).
    assert peaks[300_000] <= peaks[30_000] + 4 * 1024, peaks


# Once: more than a pipe holds, so that a write meets the closed pipe. Following: all of it fits the pipe,
# so the follower is idle, waiting for new events, when the reader goes, and must notice that by itself.
@pytest.mark.parametrize("follow, count", [(False, 5_000), (True, 3)], ids=["once", "follow"])
def test_a_reader_that_stops_after_one_line_ends_events_quietly_with_0(world, follow, count):
    settings_path, _, store = world
    add_events(store, count)
    ours = subprocess.Popen([*command(), "--config", str(settings_path), "events", *(["--follow"] if follow else [])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        head = subprocess.run(["head", "-1"], stdin=ours.stdout, capture_output=True, text=True, timeout=30)
        ours.stdout.close()
        started = time.monotonic()
        _, stderr = ours.communicate(timeout=10)
    finally:
        if ours.poll() is None:
            ours.kill()
    assert head.stdout.startswith("1 2026-01-01T00:00:00+00:00 suppressed ")
    assert ours.returncode == 0 and stderr.decode() == ""
    assert time.monotonic() - started < 5  # --follow notices the closed pipe while idle, not only on a write
